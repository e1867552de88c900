/*
 * llmsafespace-controller: common types and the interfaces between its
 * parts (configuration, stores, driver, reconcilers).
 */

#ifndef LSC_H
#define LSC_H

#include <stdint.h>
#include <stddef.h>
#include <jansson.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>


#define LSC_ID_LEN        64
#define LSC_NAME_LEN      64
#define LSC_OWNER_LEN     128
#define LSC_PATH_LEN      512
/* the runner's socket path under it must fit sun_path (108 bytes) */
#define LSC_STATE_LEN     64
#define LSC_MAX_SANDBOXES 4096
#define LSC_EGRESS_ALLOW_MAX 16      /* --egress-allow ranges */
#define LSC_MAX_POOLS     64
#define LSC_MAX_SCRIPTS   16

/* a sandbox id as stored and as used in paths and keys */
#define LSC_ID_PREFIX     "sb-"

/* a sandbox's resources: defaults, and the bounds a request is clamped to
 * and a warm pool must keep within */
#define LSC_DEF_CPU       1.0
#define LSC_MIN_CPU       0.1
#define LSC_MAX_CPU       2.0
#define LSC_DEF_MEMORY    (512LL << 20)
#define LSC_MIN_MEMORY    (64LL << 20)
#define LSC_MAX_MEMORY    (8LL << 30)


typedef struct {
    char        id[LSC_ID_LEN];
    char        owner[LSC_OWNER_LEN];
    char        runtime[LSC_NAME_LEN];
    char        level[16];
    char        pool[LSC_NAME_LEN];
    char        phase[16];
    char        final_phase[16];
    char        reason[64];
    int         slot;
    int         attempts;
    int         delete_requested;
    int64_t     created_ms;
    int64_t     started_ms;
    int64_t     expires_ms;          /* 0: none */
    int64_t     memory;              /* bytes */
    double      cpus;
    int         pids;

    /* filled by the driver's list, per tick */
    int         cstate;
    char        why[160];            /* last start failure, for message */
} lsc_sandbox_t;


/* container states as the driver reports them */
#define LSC_C_ABSENT   0
#define LSC_C_RUNNING  1
#define LSC_C_STOPPED  2
#define LSC_C_OTHER    3


typedef struct {
    char        name[LSC_NAME_LEN];
    char        content_path[LSC_PATH_LEN];
} lsc_script_t;


typedef struct {
    char        name[LSC_NAME_LEN];
    char        runtime[LSC_NAME_LEN];
    char        level[16];
    int         min_size;
    int         max_size;
    int         autoscale;
    int         target_util;         /* percent, 1..100 */
    int         scale_down_delay;    /* seconds */
    char        packages[400];       /* comma separated, validated */
    json_t     *scripts;             /* [{name, content}], validated */
    double      cpus;                /* what each warm sandbox gets */
    int64_t     memory;              /* bytes */
    char        resources[192];      /* the same as JSON, its record's */
    int64_t     ttl;                 /* seconds unclaimed; 0: no limit */

    /* reconcile state */
    int64_t     last_scale_ms;
    int         desired;
    char        status_text[1024];   /* last status written */
    int         ready;               /* condition Ready */
    int64_t     transition_ms;
    int         seen;
} lsc_pool_t;


typedef struct {
    char        id[LSC_ID_LEN + 8];  /* container id: lss-<sandbox id> */
    int         state;
    int         high;
} lsc_container_t;


struct lsc_ctx_s;

/*
 * The driver interface: what the reconcilers need from a place that runs
 * sandboxes.  The local driver (runc / runsc) is the one implementation
 * here; a kubernetes driver would implement the same four calls.
 */
typedef struct {
    const char  *name;
    /* start the sandbox's container; returns 0 once it runs */
    int        (*create)(struct lsc_ctx_s *ctx, lsc_sandbox_t *sb,
                         lsc_pool_t *pool);
    /* remove the container and every artifact of the id; idempotent */
    int        (*destroy)(struct lsc_ctx_s *ctx, const char *id);
    /* every container and artifact this controller owns */
    int        (*list)(struct lsc_ctx_s *ctx, lsc_container_t **out,
                       size_t *n);
    /* 1: the runner answers /readyz, 0: not yet, -1: cannot ask */
    int        (*inspect)(struct lsc_ctx_s *ctx, const lsc_sandbox_t *sb);
    /* the last line the container wrote (why it did not start) */
    void       (*diagnose)(struct lsc_ctx_s *ctx, const char *id, char *buf,
                           size_t len);
    /* artifact ids (bundles, run dirs) with or without a container */
    int        (*artifacts)(struct lsc_ctx_s *ctx, char ***ids, size_t *n);
    /* bound what a running sandbox accumulates on the host (its log) */
    void       (*tidy)(struct lsc_ctx_s *ctx, const char *id);
    /* CPU time the sandbox used so far, in ns (NULL: not known here) */
    int        (*cpu_usage)(struct lsc_ctx_s *ctx, const lsc_sandbox_t *sb,
                            uint64_t *ns);
    /* its weight against other sandboxes when the CPU is contended */
    int        (*cpu_weight)(struct lsc_ctx_s *ctx, const lsc_sandbox_t *sb,
                             int shares);
} lsc_driver_t;


typedef struct lsc_ctx_s {
    /* configuration */
    char             state_dir[LSC_STATE_LEN];
    char             rootfs_dir[LSC_PATH_LEN];
    char             runtimes_file[LSC_PATH_LEN];
    char             mkbundle[LSC_PATH_LEN];
    char             seccomp_dir[LSC_PATH_LEN];
    char             pools_dir[LSC_PATH_LEN];
    char             contract_dir[LSC_PATH_LEN];
    char             schema_file[LSC_PATH_LEN];
    char             redis_addr[LSC_PATH_LEN];
    char             pg_conninfo[LSC_PATH_LEN];
    int              tick_ms;
    int              ready_timeout_ms;
    int              max_creates_per_tick;
    int              max_attempts;
    int64_t          log_max;        /* --log-max: container.log bytes */
    int64_t          uid_base;
    int64_t          socket_gid;     /* -1: runner sockets as made */
    int              terminate_all;
    uint32_t         egress_net;     /* --egress-subnet, host order */
    int              egress_prefix;  /* 0: not set, the default */
    char             hosts_file[LSC_PATH_LEN];   /* --hosts, or "" */
    int              fair_share;     /* --fair-share: CPU per user */
    uint32_t         egress_allow[LSC_EGRESS_ALLOW_MAX];  /* --egress-allow */
    int              egress_allow_prefix[LSC_EGRESS_ALLOW_MAX];
    int              egress_nallow;

    /* state */
    redisContext    *redis;
    PGconn          *pg;
    json_t          *runtimes;
    char            *claim_lua;
    char            *publish_lua;
    char            *retire_lua;
    const lsc_driver_t  *driver;
    int              lock_fd;

    lsc_sandbox_t   *sb;
    size_t           nsb;
    lsc_pool_t       pools[LSC_MAX_POOLS];
    size_t           npools;
    int64_t          pools_loaded_ms;
    int              busy;           /* work in flight: tick faster */
} lsc_ctx_t;


/* lsc_util.c */
int64_t lsc_now_ms(void);
int lsc_random_id(char *buf, size_t len);
int lsc_valid_id(const char *id);
int lsc_valid_name(const char *s, size_t max);
int lsc_valid_owner(const char *s);
int64_t lsc_parse_memory(json_t *v, int64_t def, int64_t lo, int64_t hi);
double lsc_parse_cpu(json_t *v, double def, double lo, double hi);
char *lsc_read_file(const char *path, size_t max);
int lsc_rmtree(const char *path);
int lsc_spawn(char *const argv[], char **out, size_t max,
    const char *errlog);
void lsc_log(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* lsc_fairshare.c */
void lsc_fairshare(lsc_ctx_t *ctx);

/* lsc_runtime.c */
int lsc_runtimes_load(lsc_ctx_t *ctx);
json_t *lsc_runtime_find(lsc_ctx_t *ctx, const char *name);

/* lsc_pg.c */
int lsc_pg_connect(lsc_ctx_t *ctx);
int lsc_pg_apply_schema(lsc_ctx_t *ctx);
int lsc_pg_load_sandboxes(lsc_ctx_t *ctx);
int lsc_pg_set_phase(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *phase,
    const char *final_phase, const char *reason, const char *message);
int lsc_pg_set_slot(lsc_ctx_t *ctx, lsc_sandbox_t *sb);
int lsc_pg_insert_pool_pod(lsc_ctx_t *ctx, lsc_pool_t *pool);
int lsc_pg_insert_request(lsc_ctx_t *ctx, json_t *req);
int lsc_pg_request_delete(lsc_ctx_t *ctx, const char *id);
int lsc_pg_fresh(lsc_ctx_t *ctx, lsc_sandbox_t *sb);
int lsc_pg_record_claim(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *owner,
    int64_t expires_ms);
int lsc_pg_event(lsc_ctx_t *ctx, const char *id, const char *phase,
    const char *reason, const char *message);
PGresult *lsc_pg_query(lsc_ctx_t *ctx, const char *sql, int n,
    const char *const *params);

/* lsc_redis.c */
int lsc_redis_connect(lsc_ctx_t *ctx);
int lsc_redis_read_requests(lsc_ctx_t *ctx, int block_ms);
int lsc_redis_publish(lsc_ctx_t *ctx, lsc_sandbox_t *sb, int announce);
int lsc_redis_unpublish(lsc_ctx_t *ctx, lsc_sandbox_t *sb);
int lsc_redis_retire(lsc_ctx_t *ctx, lsc_sandbox_t *sb);
int lsc_redis_routes(lsc_ctx_t *ctx, lsc_sandbox_t **sbs, size_t n,
    char (*owners)[LSC_OWNER_LEN], int64_t *expires, int *exists);
int lsc_redis_event(lsc_ctx_t *ctx, const char *type, const char *id,
    const char *pool, const char *reason);
int lsc_redis_pool_status(lsc_ctx_t *ctx, const char *pool,
    const char *json);
void lsc_redis_socket_path(lsc_ctx_t *ctx, const char *id, char *buf,
    size_t len);

/* lsc_pool.c */
int lsc_pools_load(lsc_ctx_t *ctx);
lsc_pool_t *lsc_pool_find(lsc_ctx_t *ctx, const char *name);
int lsc_pools_reconcile(lsc_ctx_t *ctx);

/* lsc_manifest.c */
json_t *lsc_yaml_load(const char *path);

/* lsc_reconcile.c */
int lsc_reconcile(lsc_ctx_t *ctx);
int lsc_ready_pass(lsc_ctx_t *ctx);
int lsc_terminate(lsc_ctx_t *ctx, lsc_sandbox_t *sb, const char *final,
    const char *reason, const char *message);
int lsc_terminate_all(lsc_ctx_t *ctx);

/* lsc_bundle.c */

/* the strings mkbundle's argv points into (lsc_mkbundle_argv) */
typedef struct {
    char        uid[32];
    char        mem[32];
    char        pids[16];
    char        cpus[32];
    char        rargs[24][LSC_PATH_LEN];
} lsc_mkbundle_buf_t;

int lsc_mkbundle_argv(lsc_ctx_t *ctx, const lsc_sandbox_t *sb, json_t *rt,
    int high, int64_t uid, const char *cid, const char *rootfs,
    const char *bundle, const char *run, const char *token,
    lsc_mkbundle_buf_t *buf, char **argv);
int lsc_bundle_write(lsc_ctx_t *ctx, lsc_sandbox_t *sb, json_t *rt,
    const char *fs, int high, const char *bundle, const char *run,
    const char *token, char **extra, int nextra);

/* lsc_local.c */
extern const lsc_driver_t lsc_local_driver;
int lsc_local_prepare(lsc_ctx_t *ctx);

/* lsc_net.c */
int lsc_net_config(lsc_ctx_t *ctx, const char *cidr);
int lsc_net_allow(lsc_ctx_t *ctx, const char *cidr);
int lsc_net_setup(lsc_ctx_t *ctx, lsc_sandbox_t *sb, lsc_pool_t *pool,
    const char *bundle, const char *run);
int lsc_net_teardown(lsc_ctx_t *ctx, const char *id);
const char *lsc_net_runsc_exec(lsc_ctx_t *ctx);

#endif /* LSC_H */
