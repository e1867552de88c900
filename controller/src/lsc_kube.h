/*
 * The controller's Kubernetes client: configuration (in-cluster service
 * account or a kubeconfig), requests over one curl multi handle (its
 * connection pool is every request's; QPS/burst limited), Status errors,
 * and list+watch informers with a local cache.  See docs/controller.md,
 * "Kubernetes client".
 *
 * Threading: none.  Everything runs from the caller's loop through
 * lsc_kube_run(); informer handlers are called from there and from the
 * synchronous verbs (which drive the same multi handle while they wait),
 * so a handler only records what changed (a key to reconcile) and never
 * issues a request itself.
 */

#ifndef LSC_KUBE_H
#define LSC_KUBE_H

#include <stdint.h>
#include <stddef.h>
#include <poll.h>
#include <jansson.h>


/* what a call returns: the class of its answer, so callers can switch */
typedef enum {
    LSC_KUBE_OK = 0,
    LSC_KUBE_ETRANSPORT,      /* no HTTP answer: down, TLS, timeout */
    LSC_KUBE_ENOTFOUND,       /* 404 */
    LSC_KUBE_ECONFLICT,       /* 409: re-read, then retry the write */
    LSC_KUBE_EGONE,           /* 410: resourceVersion too old, relist */
    LSC_KUBE_EINVALID,        /* 422: see the causes */
    LSC_KUBE_ETHROTTLED,      /* 429 after our own retries */
    LSC_KUBE_ESERVER,         /* 5xx */
    LSC_KUBE_EREFUSED,        /* other 4xx: 400, 401, 403, 415, ... */
    LSC_KUBE_EBADANSWER,      /* 2xx whose body is not what was asked */
    LSC_KUBE_EARG             /* refused before sending: bad argument */
} lsc_kube_rc_e;


#define LSC_KUBE_MAX_CAUSES  8

typedef struct {
    char            reason[64];
    char            field[256];
    char            message[512];
} lsc_kube_cause_t;

/* a metav1.Status, or what could be made of an answer that was not one */
typedef struct {
    long            code;            /* HTTP status; 0: no answer */
    char            reason[64];      /* NotFound, Conflict, Invalid, ... */
    char            message[1024];
    char            kind[64];        /* details.kind */
    char            name[256];       /* details.name */
    int             retry_after;     /* seconds: details or header; 0 */
    size_t          ncauses;
    lsc_kube_cause_t  causes[LSC_KUBE_MAX_CAUSES];
} lsc_kube_status_t;


/* where the API server is and who we are to it */
typedef struct {
    char           *server;          /* https://host:port, no slash */
    char           *namespace;       /* default namespace */
    char           *ca;              /* PEM, or NULL: system store */
    size_t          ca_len;
    char           *cert;            /* client certificate PEM, or NULL */
    size_t          cert_len;
    char           *key;             /* its key PEM */
    size_t          key_len;
    char           *token;           /* bearer token, or NULL */
    char           *token_file;      /* re-read each minute, or NULL */
    int64_t         token_read_ms;
    int             insecure;        /* insecure-skip-tls-verify */
} lsc_kube_config_t;


/* a resource kind's address: group "" is the core group */
typedef struct {
    const char     *group;
    const char     *version;
    const char     *plural;
    const char     *kind;            /* checked on watched objects */
    int             namespaced;
} lsc_kube_gvr_t;

extern const lsc_kube_gvr_t  lsc_kube_configmaps;
extern const lsc_kube_gvr_t  lsc_kube_events;


typedef struct lsc_kube_s           lsc_kube_t;
typedef struct lsc_kube_informer_s  lsc_kube_informer_t;

typedef struct {
    double          qps;             /* sustained requests per second */
    int             burst;           /* bucket size */
    int             timeout_ms;      /* a whole request, not a watch */
    int             connect_timeout_ms;
    const char     *user_agent;
    const char     *instance;        /* Events' reportingInstance */
} lsc_kube_opts_t;


/* lsc_kube_config.c */
int lsc_kube_config_in_cluster(lsc_kube_config_t *cf, const char *dir);
int lsc_kube_config_kubeconfig(lsc_kube_config_t *cf, const char *path,
    const char *context);
int lsc_kube_config_load(lsc_kube_config_t *cf, const char *kubeconfig);
const char *lsc_kube_config_token(lsc_kube_config_t *cf, int64_t now_ms);
void lsc_kube_config_free(lsc_kube_config_t *cf);
int lsc_kube_base64_decode(const char *in, char **out, size_t *len);

/* lsc_kube_status.c */
lsc_kube_rc_e lsc_kube_status_decode(long code, const char *body,
    size_t len, lsc_kube_status_t *st);
lsc_kube_rc_e lsc_kube_rc(long code);
const char *lsc_kube_strerror(lsc_kube_rc_e rc);

/* lsc_kube_limit.c: a token bucket, on a clock the caller gives */
typedef struct {
    double          tokens;
    double          qps;
    double          burst;
    int64_t         last_ms;
} lsc_kube_bucket_t;

void lsc_kube_bucket_init(lsc_kube_bucket_t *b, double qps, int burst,
    int64_t now_ms);
int64_t lsc_kube_bucket_take(lsc_kube_bucket_t *b, int64_t now_ms);
int64_t lsc_kube_backoff(int attempt, int64_t base_ms, int64_t cap_ms);

/* lsc_kube_split.c: newline-delimited JSON, never trusting sizes */
typedef int (*lsc_kube_line_pt)(void *data, const char *line, size_t len);

typedef struct {
    char           *buf;
    size_t          len;
    size_t          cap;
    size_t          max;             /* longest line kept */
    int             skipping;        /* inside a line that was too long */
    uint64_t        dropped;         /* lines dropped for their length */
} lsc_kube_split_t;

void lsc_kube_split_init(lsc_kube_split_t *sp, size_t max);
int lsc_kube_split_feed(lsc_kube_split_t *sp, const char *data, size_t n,
    lsc_kube_line_pt handler, void *hdata);
void lsc_kube_split_reset(lsc_kube_split_t *sp);
void lsc_kube_split_free(lsc_kube_split_t *sp);

/* lsc_kube_client.c */
lsc_kube_t *lsc_kube_new(lsc_kube_config_t *cf, const lsc_kube_opts_t *o);
void lsc_kube_free(lsc_kube_t *kc);
/* one turn of the loop; at most 16 extra descriptors, revents set */
int lsc_kube_run(lsc_kube_t *kc, struct pollfd *extra, unsigned nextra,
    int timeout_ms);
int lsc_kube_path(char *buf, size_t len, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, const char *sub);
int lsc_kube_valid_name(const char *s, size_t max);

lsc_kube_rc_e lsc_kube_get(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, json_t **out, lsc_kube_status_t *st);
lsc_kube_rc_e lsc_kube_list(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *selector, int limit, const char *cont,
    json_t **out, lsc_kube_status_t *st);
lsc_kube_rc_e lsc_kube_create(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, json_t *obj, json_t **out, lsc_kube_status_t *st);
lsc_kube_rc_e lsc_kube_update(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, const char *sub, json_t *obj,
    json_t **out, lsc_kube_status_t *st);
lsc_kube_rc_e lsc_kube_merge_patch(lsc_kube_t *kc,
    const lsc_kube_gvr_t *gvr, const char *ns, const char *name,
    const char *sub, json_t *patch, json_t **out, lsc_kube_status_t *st);

/* propagation: NULL, "Foreground", "Background" or "Orphan" */
typedef struct {
    const char     *uid;             /* preconditions.uid, or NULL */
    const char     *resource_version;  /* preconditions, or NULL */
    const char     *propagation;
} lsc_kube_delete_opts_t;

lsc_kube_rc_e lsc_kube_delete(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, const lsc_kube_delete_opts_t *o,
    lsc_kube_status_t *st);

/* lsc_kube_event.c: an events.k8s.io/v1 Event about an object */
lsc_kube_rc_e lsc_kube_event(lsc_kube_t *kc, json_t *regarding,
    const char *type, const char *reason, const char *action,
    const char *note, lsc_kube_status_t *st);
json_t *lsc_kube_event_build(json_t *regarding, const char *type,
    const char *reason, const char *action, const char *note,
    const char *controller, const char *instance, int64_t now_ms);

/* lsc_kube_watch.c: list, then watch; a cache keyed by namespace/name */
#define LSC_KUBE_ADDED     1
#define LSC_KUBE_MODIFIED  2
#define LSC_KUBE_DELETED   3

/*
 * obj is the object as now cached (DELETED: its final state as the event
 * gave it, or our last copy when a relist found it gone); old the
 * previous copy for MODIFIED and DELETED.  Both are borrowed for the
 * call.
 */
typedef void (*lsc_kube_handler_pt)(void *data, int type, json_t *obj,
    json_t *old);

lsc_kube_informer_t *lsc_kube_informer_new(lsc_kube_t *kc,
    const lsc_kube_gvr_t *gvr, const char *ns, const char *selector,
    lsc_kube_handler_pt handler, void *data);
void lsc_kube_informer_free(lsc_kube_informer_t *inf);
int lsc_kube_informer_start_at(lsc_kube_informer_t *inf, const char *rv);
int lsc_kube_informer_synced(lsc_kube_informer_t *inf);
json_t *lsc_kube_informer_get(lsc_kube_informer_t *inf, const char *ns,
    const char *name);
json_t *lsc_kube_informer_cache(lsc_kube_informer_t *inf);

/* statistics, for logs and tests */
typedef struct {
    uint64_t        lists;           /* complete lists */
    uint64_t        list_failures;
    uint64_t        watches;         /* watch requests started */
    uint64_t        relists_gone;    /* 410: HTTP or ERROR event */
    uint64_t        events;          /* applied watch events */
    uint64_t        bookmarks;
    uint64_t        skipped;         /* nonsense lines and objects */
    char            resource_version[64];
} lsc_kube_informer_stats_t;

void lsc_kube_informer_stats(lsc_kube_informer_t *inf,
    lsc_kube_informer_stats_t *s);

/* the informer's parts that need no network, for the unit tests */
lsc_kube_informer_t *lsc_kube_informer_detached(const lsc_kube_gvr_t *gvr,
    lsc_kube_handler_pt handler, void *data);
int lsc_kube_informer_line(void *inf, const char *line, size_t len);
int lsc_kube_informer_replace(lsc_kube_informer_t *inf, json_t *items,
    const char *rv, int keep_missing);
int lsc_kube_informer_gone(lsc_kube_informer_t *inf);

/* lsc_kube_client.c, for lsc_kube_watch.c: the request machinery */
typedef struct lsc_kube_req_s  lsc_kube_req_t;

typedef void (*lsc_kube_done_pt)(void *data, lsc_kube_rc_e rc, long code,
    json_t *body, lsc_kube_status_t *st);
typedef int (*lsc_kube_stream_pt)(void *data, const char *p, size_t n);

lsc_kube_req_t *lsc_kube_submit(lsc_kube_t *kc, const char *method,
    const char *path, const char *ctype, json_t *body, int timeout_ms,
    lsc_kube_stream_pt stream, lsc_kube_done_pt done, void *data);
lsc_kube_rc_e lsc_kube_call(lsc_kube_t *kc, const char *method,
    const char *path, const char *ctype, json_t *body, json_t **out,
    lsc_kube_status_t *st);
const lsc_kube_opts_t *lsc_kube_options(lsc_kube_t *kc);
const char *lsc_kube_namespace(lsc_kube_t *kc);
void lsc_kube_cancel(lsc_kube_t *kc, lsc_kube_req_t *req);
void lsc_kube_add_informer(lsc_kube_t *kc, lsc_kube_informer_t *inf);
void lsc_kube_remove_informer(lsc_kube_t *kc, lsc_kube_informer_t *inf);
int64_t lsc_kube_informer_step(lsc_kube_informer_t *inf, int64_t now_ms);

#endif /* LSC_KUBE_H */
