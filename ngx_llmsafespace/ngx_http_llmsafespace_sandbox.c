
/*
 * Copyright (C) LLMSafeSpace
 *
 * Sandboxes: create (a claim from a warm pool, else a cold create the
 * caller may wait for), list, get, status, delete.  Records live in
 * PostgreSQL (sql/controller.sql); claims, routes and requests to the
 * controller go through Redis as docs/architecture.md ("The Redis
 * contract") lays down.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <arpa/inet.h>
#include <openssl/rand.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"
#include "egress_ranges.h"


#define NGX_HTTP_LLMSAFESPACE_TS(col)                                         \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/*
 * A record as the API shows it: a deletion in progress is "Terminating";
 * a cold sandbox expires "timeout" after its creation, as the controller
 * counts it.
 */
#define NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS                                 \
    "id, CASE WHEN delete_requested_at IS NOT NULL "                          \
    "AND phase NOT IN ('Terminated', 'Failed') THEN 'Terminating' "           \
    "ELSE phase END, reason, message, runtime, security_level, timeout_s, "   \
    "resources::text, network_access::text, labels::text, pool, owner, "      \
    NGX_HTTP_LLMSAFESPACE_TS("created_at") ", "                               \
    NGX_HTTP_LLMSAFESPACE_TS("ready_at") ", "                                 \
    NGX_HTTP_LLMSAFESPACE_TS("coalesce(expires_at, CASE WHEN pool IS NULL " \
        "THEN created_at + make_interval(secs => timeout_s) END)") ", "       \
    NGX_HTTP_LLMSAFESPACE_TS("terminated_at") ", "                            \
    NGX_HTTP_LLMSAFESPACE_TS("updated_at")

#define NGX_HTTP_LLMSAFESPACE_COL_PHASE        1
#define NGX_HTTP_LLMSAFESPACE_COL_TIMEOUT      6
#define NGX_HTTP_LLMSAFESPACE_COL_UPDATED      16
#define NGX_HTTP_LLMSAFESPACE_COL_N            17

#define NGX_HTTP_LLMSAFESPACE_DEFAULT_TIMEOUT  1800
#define NGX_HTTP_LLMSAFESPACE_MAX_TIMEOUT      86400
#define NGX_HTTP_LLMSAFESPACE_MAX_WAIT         120
#define NGX_HTTP_LLMSAFESPACE_WAIT_POLL        50     /* ms */
#define NGX_HTTP_LLMSAFESPACE_MAX_LABELS       32
#define NGX_HTTP_LLMSAFESPACE_MAX_EGRESS       32


typedef struct {
    u_char                          id[3 + 20 + 1];
    const char                     *owner;
    const char                     *admin;       /* "t" or "f" */
    const char                     *runtime;     /* canonical name */
    const char                     *aliases;     /* text[] literal */
    const char                     *level;
    const char                     *timeout;
    const char                     *resources;   /* JSON texts */
    const char                     *network;
    const char                     *labels;
    const char                     *pool;
    const char                     *cpu;         /* what a cold create */
    const char                     *memory;      /* would get: plan */
    ngx_uint_t                      timeout_s;
    ngx_uint_t                      warm;
    ngx_msec_t                      wait;        /* 0: answer at once */
    ngx_msec_t                      started;
    json_t                         *answer;      /* held for DELETE */
} ngx_http_llmsafespace_sandbox_t;


static ngx_int_t ngx_http_llmsafespace_sandbox_init(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, ngx_int_t *answered);
static ngx_int_t ngx_http_llmsafespace_sandbox_query(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, const char *sql,
    ngx_http_llmsafespace_query_done_pt done);
static ngx_int_t ngx_http_llmsafespace_create_validate(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx,
    ngx_http_llmsafespace_sandbox_t *sb);
static double ngx_http_llmsafespace_quantity_unit(const char *s, size_t len);
static ngx_int_t ngx_http_llmsafespace_check_network(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v);
static int ngx_http_llmsafespace_prefix(uint32_t mask);
static ngx_int_t ngx_http_llmsafespace_check_address(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *domain);
static ngx_int_t ngx_http_llmsafespace_check_labels(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v);
static const char *ngx_http_llmsafespace_json_text(ngx_http_request_t *r,
    json_t *json);
static ngx_int_t ngx_http_llmsafespace_create_planned(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_create_claimed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, redisReply *reply);
static const char *ngx_http_llmsafespace_quota_value(ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_quota_exceeded(ngx_http_request_t *r,
    ngx_int_t live);
static ngx_int_t ngx_http_llmsafespace_create_bound(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_create_cold(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);
static ngx_int_t ngx_http_llmsafespace_create_recorded(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_create_polled(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_create_answer(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static void ngx_http_llmsafespace_wait_handler(ngx_event_t *ev);
static void ngx_http_llmsafespace_request_controller(ngx_http_request_t *r,
    ngx_http_llmsafespace_sandbox_t *sb, const char *type);
static void ngx_http_llmsafespace_ignore_reply(void *data,
    redisReply *reply, ngx_int_t rc);
static ngx_int_t ngx_http_llmsafespace_sandboxes_listed(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_sandboxes_got(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_sandboxes_status_got(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_sandboxes_marked(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_sandboxes_unrouted(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx,
    redisReply *reply);
static json_t *ngx_http_llmsafespace_sandbox_json(PGresult *res, int row);
static json_t *ngx_http_llmsafespace_parsed(PGresult *res, int row,
    int col);
static void ngx_http_llmsafespace_json_cleanup(void *data);
static ngx_int_t ngx_http_llmsafespace_not_found(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_uint_t ngx_http_llmsafespace_is_phase(u_char *p, size_t len);


static const char  *ngx_http_llmsafespace_phases[] = {
    "Pending", "Creating", "Running", "Terminating", "Terminated", "Failed",
    NULL
};


/*
 * The caller's live sandboxes (for the quota) and a warm pool that serves
 * the runtime at the security level with at least the cpu ($5) and the
 * memory ($6) a cold create would get: of those with a sandbox ready, the
 * smallest, so that a big pool is kept for the creates only it fits, then
 * the fullest.  A pool's resources are numbers (sql/controller.sql); a
 * key it does not have is the controller's default.
 */
static const char  ngx_http_llmsafespace_plan_sql[] =
    "SELECT (SELECT count(*) FROM sandboxes WHERE owner = $1 "
    "AND phase NOT IN ('Terminated', 'Failed') "
    "AND delete_requested_at IS NULL), "
    "(SELECT name FROM warm_pools, LATERAL (SELECT "
    "coalesce((resources->>'cpu')::numeric, "
    ngx_value(NGX_HTTP_LLMSAFESPACE_CPU_DEFAULT) ") AS cpu, "
    "coalesce((resources->>'memory')::numeric, "
    ngx_value(NGX_HTTP_LLMSAFESPACE_MEMORY_DEFAULT) ") AS memory, "
    "coalesce((status->>'availablePods')::int, 0) AS ready) p "
    "WHERE $4 = 't' AND runtime = ANY ($2::text[]) AND security_level = $3 "
    "AND p.cpu >= $5::numeric AND p.memory >= $6::numeric "
    "ORDER BY p.ready > 0 DESC, p.memory, p.cpu, p.ready DESC, name "
    "LIMIT 1)";

/*
 * The owner's live sandboxes but the one being added ($1), counted under
 * the owner's lock (lss_live_sandboxes() in sql/schema.sql): the quota
 * ($q, 0: none) is checked in the very statement that adds the sandbox,
 * so concurrent creates cannot all pass it.  The plan's count only spares
 * a claim that would be refused anyway.
 */
#define NGX_HTTP_LLMSAFESPACE_QUOTA_CTE(q)                                    \
    "WITH q AS MATERIALIZED (SELECT CASE WHEN " q "::int = 0 THEN 0 "         \
    "ELSE lss_live_sandboxes($2, $1) END AS live) "

#define NGX_HTTP_LLMSAFESPACE_WITHIN(q)                                       \
    "(" q "::int = 0 OR q.live < " q "::int)"

/*
 * Binds a claimed warm sandbox's record to its owner.  The controller
 * records the same claim from the route within a tick; whichever comes
 * first writes the event, the other finds the owner already set.  Over
 * the quota, the claimed sandbox is bound and marked for deletion at once
 * (the controller destroys it): a warm sandbox is never handed to another.
 * One row, the sandbox's columns NULL when refused, and the live count.
 */
static const char  ngx_http_llmsafespace_bind_sql[] =
    NGX_HTTP_LLMSAFESPACE_QUOTA_CTE("$6") ", "
    "old AS (SELECT id, owner AS was FROM sandboxes WHERE id = $1 "
    "FOR UPDATE), "
    "u AS (UPDATE sandboxes s SET owner = $2, labels = $3::jsonb, "
    "timeout_s = $4::int, claimed_at = coalesce(s.claimed_at, now()), "
    "expires_at = to_timestamp($5::bigint / 1000.0), reason = 'Claimed', "
    "updated_at = now() FROM old, q WHERE s.id = old.id "
    "AND (old.was IS NULL OR old.was = $2) "
    "AND " NGX_HTTP_LLMSAFESPACE_WITHIN("$6") " RETURNING s.*, old.was), "
    "x AS (UPDATE sandboxes s SET owner = $2, "
    "delete_requested_at = coalesce(s.delete_requested_at, now()), "
    "updated_at = now() FROM old, q WHERE s.id = old.id "
    "AND (old.was IS NULL OR old.was = $2) "
    "AND NOT " NGX_HTTP_LLMSAFESPACE_WITHIN("$6") " RETURNING s.id), "
    "e AS (INSERT INTO sandbox_events (sandbox_id, phase, reason, message) "
    "SELECT id, 'Running', 'Claimed', $2 FROM u WHERE was IS NULL) "
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS ", q.live, "
    "(SELECT count(*) FROM x) FROM q LEFT JOIN u ON true";

/* a cold create's record, within the quota ($9): as the bind */
static const char  ngx_http_llmsafespace_insert_sql[] =
    NGX_HTTP_LLMSAFESPACE_QUOTA_CTE("$9") ", "
    "i AS (INSERT INTO sandboxes (id, owner, runtime, security_level, "
    "timeout_s, resources, network_access, labels, phase) "
    "SELECT $1, $2, $3, $4, $5::int, $6::jsonb, $7::jsonb, $8::jsonb, "
    "'Pending' FROM q WHERE " NGX_HTTP_LLMSAFESPACE_WITHIN("$9") " "
    "RETURNING *) "
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS ", q.live "
    "FROM q LEFT JOIN i ON true";

static const char  ngx_http_llmsafespace_poll_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS " FROM sandboxes "
    "WHERE id = $1";

/* another user's sandbox and an unclaimed warm one do not exist */
static const char  ngx_http_llmsafespace_get_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS " FROM sandboxes "
    "WHERE id = $1 AND owner IS NOT NULL AND (owner = $2 OR $3 = 't')";

static const char  ngx_http_llmsafespace_list_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS ", count(*) OVER () "
    "FROM sandboxes WHERE owner IS NOT NULL "
    "AND ($1::text IS NULL OR owner = $1) "
    "AND ($2::text[] IS NULL OR CASE WHEN delete_requested_at IS NOT NULL "
    "AND phase NOT IN ('Terminated', 'Failed') THEN 'Terminating' "
    "ELSE phase END = ANY ($2::text[])) "
    "AND labels @> $3::jsonb "
    "ORDER BY created_at DESC, id LIMIT $4 OFFSET $5";

/* the controller destroys what is marked; a terminal record stays as is */
static const char  ngx_http_llmsafespace_mark_sql[] =
    "WITH s AS (SELECT id, phase FROM sandboxes WHERE id = $1 "
    "AND owner IS NOT NULL AND (owner = $2 OR $3 = 't') FOR UPDATE), "
    "u AS (UPDATE sandboxes SET delete_requested_at = "
    "coalesce(delete_requested_at, now()), updated_at = now() "
    "WHERE id IN (SELECT id FROM s "
    "WHERE phase NOT IN ('Terminated', 'Failed')) "
    "RETURNING " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS ") "
    "SELECT *, true FROM u UNION ALL "
    "SELECT " NGX_HTTP_LLMSAFESPACE_SANDBOX_COLUMNS ", false FROM sandboxes "
    "WHERE id IN (SELECT id FROM s) AND NOT EXISTS (SELECT 1 FROM u)";


/*
 * llmsafespace_sandboxes contract=DIR [quota=N];
 * DIR holds the controller's contract scripts; claim.lua is loaded here
 * so that gateway and controller run the very same script.
 */

char *
ngx_http_llmsafespace_sandboxes_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    u_char           *p;
    size_t            size;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, path;
    ngx_int_t         quota;
    ngx_uint_t        i;
    ngx_file_info_t   fi;

    if (lmcf->claim_script.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    ngx_str_null(&path);
    quota = 10;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "contract=", 9) == 0) {
            path.len = value[i].len - 9 + sizeof("/claim.lua") - 1;
            path.data = ngx_pnalloc(cf->pool, path.len + 1);
            if (path.data == NULL) {
                return NGX_CONF_ERROR;
            }

            p = ngx_cpymem(path.data, value[i].data + 9, value[i].len - 9);
            p = ngx_cpymem(p, "/claim.lua", sizeof("/claim.lua") - 1);
            *p = '\0';
            continue;
        }

        if (ngx_strncmp(value[i].data, "quota=", 6) == 0) {
            quota = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (quota == NGX_ERROR || quota > 100000) {
                return "has an invalid \"quota\" (0 to 100000; 0: none)";
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (path.len == 0) {
        return "needs \"contract=DIR\" (the controller's contract scripts)";
    }

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", path.data);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) == 0 || ngx_file_size(&fi) > 65536)
    {
        ngx_close_file(fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" is empty, too large or unreadable",
                           path.data);
        return NGX_CONF_ERROR;
    }

    size = ngx_file_size(&fi);

    lmcf->claim_script.data = ngx_pnalloc(cf->pool, size);
    if (lmcf->claim_script.data == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, lmcf->claim_script.data, size);
    ngx_close_file(fd);

    if (n != (ssize_t) size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "reading \"%s\" failed", path.data);
        return NGX_CONF_ERROR;
    }

    lmcf->claim_script.len = size;
    lmcf->sandbox_quota = quota;

    return NGX_CONF_OK;
}


/*
 * llmsafespace_egress_allow CIDR ...;
 * private and special ranges (egress_ranges.h) a create may name, as the
 * controller's --egress-allow lets its grants reach them.
 */

char *
ngx_http_llmsafespace_egress_allow(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    ngx_int_t    rc;
    ngx_str_t   *value;
    ngx_uint_t   i;
    ngx_cidr_t   cidr;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        rc = ngx_ptocidr(&value[i], &cidr);

        if (rc == NGX_ERROR || cidr.family != AF_INET
            || ngx_strlchr(value[i].data, value[i].data + value[i].len, '/')
               == NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"llmsafespace_egress_allow\": invalid "
                               "range \"%V\", expected an IPv4 network "
                               "such as 10.20.0.0/16", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_DONE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"llmsafespace_egress_allow\": range "
                               "\"%V\" has host bits set", &value[i]);
            return NGX_CONF_ERROR;
        }

        if (lmcf->egress_nallow == NGX_HTTP_LLMSAFESPACE_EGRESS_ALLOW) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"llmsafespace_egress_allow\": at most "
                               "%d ranges",
                               NGX_HTTP_LLMSAFESPACE_EGRESS_ALLOW);
            return NGX_CONF_ERROR;
        }

        lmcf->egress_allow[lmcf->egress_nallow] =
                                             ntohl(cidr.u.in.addr);
        lmcf->egress_allow_prefix[lmcf->egress_nallow] =
                          ngx_http_llmsafespace_prefix(ntohl(cidr.u.in.mask));
        lmcf->egress_nallow++;
    }

    return NGX_CONF_OK;
}


/*
 * What every route here needs: PostgreSQL, the caller's id, the id.
 * NGX_OK, or NGX_DONE when the request was answered ("answered" holds
 * the answer's rc).
 */

static ngx_int_t
ngx_http_llmsafespace_sandbox_init(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, ngx_int_t *answered)
{
    ngx_http_llmsafespace_sandbox_t    *sb;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->pg.conninfo.len == 0 || lmcf->claim_script.len == 0) {
        *answered = ngx_http_llmsafespace_send_error(r,
                      NGX_HTTP_NOT_IMPLEMENTED, "not_implemented",
                      "sandboxes need \"llmsafespace_postgres\" and "
                      "\"llmsafespace_sandboxes\" on this gateway");
        return NGX_DONE;
    }

    *answered = NGX_HTTP_INTERNAL_SERVER_ERROR;

    sb = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_sandbox_t));
    if (sb == NULL) {
        return NGX_DONE;
    }

    sb->owner = (const char *) ngx_http_llmsafespace_api_cstr(r,
                                             ctx->identity.user_id.data,
                                             ctx->identity.user_id.len);
    if (sb->owner == NULL) {
        return NGX_DONE;
    }

    sb->admin = ctx->identity.role == NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN
                ? "t" : "f";

    if (id && id->len) {
        if (id->len >= sizeof(sb->id)) {
            *answered = ngx_http_llmsafespace_not_found(r, id);
            return NGX_DONE;
        }

        *ngx_cpymem(sb->id, id->data, id->len) = '\0';
        ctx->audit_object = *id;
        ctx->sandbox_id = *id;
    }

    ctx->sandbox = sb;

    return NGX_OK;
}


ngx_int_t
ngx_http_llmsafespace_sandboxes_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    ngx_int_t                         rc, wait;
    ngx_str_t                         v;
    const char                       *values[6];
    ngx_http_llmsafespace_sandbox_t  *sb;

    if (ngx_http_llmsafespace_sandbox_init(r, ctx, NULL, &rc) != NGX_OK) {
        return rc;
    }

    sb = ctx->sandbox;

    if (ngx_http_llmsafespace_create_validate(r, ctx, sb) != NGX_OK) {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    wait = 0;

    if (ngx_http_arg(r, (u_char *) "wait", 4, &v) == NGX_OK) {
        wait = ngx_atoi(v.data, v.len);

        if (wait < 0 || wait > NGX_HTTP_LLMSAFESPACE_MAX_WAIT) {
            return ngx_http_llmsafespace_send_field_error(r, 422, "wait",
                            &(ngx_str_t) ngx_string("\"wait\" must be 0 to "
                                                    "120 seconds"));
        }
    }

    sb->wait = wait * 1000;
    sb->started = ngx_current_msec;

    values[0] = sb->owner;
    values[1] = sb->aliases;
    values[2] = sb->level;
    values[3] = sb->warm ? "t" : "f";
    values[4] = sb->cpu;
    values[5] = sb->memory;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                        ngx_http_llmsafespace_plan_sql, 6,
                                        values,
                                        ngx_http_llmsafespace_create_planned);
}


/*
 * The create request: unknown fields and values out of range are refused
 * (422), wrong types are 400, each naming the field.
 */

static ngx_int_t
ngx_http_llmsafespace_create_validate(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_sandbox_t *sb)
{
    u_char                             *p, *aliases;
    size_t                              i, len;
    double                              res[NGX_HTTP_LLMSAFESPACE_RES_N];
    double                              cpu, memory;
    json_t                             *v, *rt, *profile, *levels, *level;
    json_int_t                          timeout;
    const char                         *runtime, *profile_ref, *name, *fs;
    const char                         *requested;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    static const char  *fields[] = {
        "runtime", "securityLevel", "timeout", "resources", "networkAccess",
        "useWarmPool", "labels", "profileRef", NULL
    };

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (ngx_http_llmsafespace_api_only(r, ctx, fields) != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "runtime", 1, 64,
                                            &runtime) != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "profileRef", 0, 64,
                                            &profile_ref) != NGX_OK
        || ngx_http_llmsafespace_api_string(r, ctx, "securityLevel", 0, 16,
                                            &requested) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    rt = ngx_http_llmsafespace_runtime_find(lmcf, runtime);
    if (rt == NULL) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "runtime",
                                    "unknown runtime \"%s\" (see GET "
                                    "/api/v1/runtimes)", runtime);
    }

    /* every name that selects this runtime, for matching warm pools */

    name = json_string_value(json_object_get(rt, "name"));
    fs = json_string_value(json_object_get(json_object_get(rt, "rootfs"),
                                           "name"));
    if (name == NULL) {
        return NGX_ERROR;
    }

    sb->runtime = name;

    /* {"name","short","rootfs"}: twice the name, the rootfs, quotes */
    len = ngx_strlen(name);
    aliases = ngx_pnalloc(r->pool, 2 * len + (fs ? ngx_strlen(fs) : 0) + 16);
    if (aliases == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(aliases, "{\"%s\"", name);

    for (i = 0; i < len && name[i] != ':'; i++) { /* void */ }

    if (i < len) {
        p = ngx_sprintf(p, ",\"%*s\"", i, name);
    }

    if (fs) {
        p = ngx_sprintf(p, ",\"%s\"", fs);
    }

    *p++ = '}';
    *p = '\0';
    sb->aliases = (const char *) aliases;

    profile = NULL;

    if (profile_ref) {
        profile = ngx_http_llmsafespace_profile_find(lmcf, profile_ref);
        if (profile == NULL) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "profileRef", "unknown profile \"%s\" "
                                    "(see GET /api/v1/profiles)",
                                    profile_ref);
        }
    }

    /*
     * The level: the profile's, else as asked; "custom" is the profile's.
     * A request may raise a profile's level, never lower it: a profile
     * is the operator's policy.
     */

    sb->level = "standard";

    if (profile) {
        name = json_string_value(json_object_get(profile, "securityLevel"));
        if (name) {
            sb->level = name;
        }
    }

    if (requested) {
        if (ngx_strcmp(requested, "custom") == 0) {
            if (profile == NULL) {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "securityLevel", "securityLevel "
                                    "\"custom\" needs a \"profileRef\"");
            }

        } else if (ngx_strcmp(requested, "standard") == 0
                   || ngx_strcmp(requested, "high") == 0)
        {
            if (ngx_strcmp(sb->level, "high") == 0
                && ngx_strcmp(requested, "high") != 0)
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "securityLevel", "profile \"%s\" runs "
                                    "at security level \"high\": a request "
                                    "may not lower it", profile_ref);
            }

            sb->level = requested;

        } else {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "securityLevel", "field "
                                    "\"securityLevel\" must be \"standard\", "
                                    "\"high\" or \"custom\"");
        }
    }

    levels = json_object_get(rt, "securityLevels");

    if (json_is_array(levels)) {
        json_array_foreach(levels, i, level) {
            if (json_is_string(level)
                && ngx_strcmp(json_string_value(level), sb->level) == 0)
            {
                break;
            }
        }

        if (i == json_array_size(levels)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "securityLevel", "runtime \"%s\" does "
                                    "not run at security level \"%s\"",
                                    sb->runtime, sb->level);
        }
    }

    timeout = NGX_HTTP_LLMSAFESPACE_DEFAULT_TIMEOUT;
    v = json_object_get(ctx->body, "timeout");

    if (v && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "timeout",
                                    "field \"timeout\" must be an integer "
                                    "(seconds)");
        }

        timeout = json_integer_value(v);

        if (timeout < 1 || timeout > NGX_HTTP_LLMSAFESPACE_MAX_TIMEOUT) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "timeout",
                                    "field \"timeout\" must be 1 to 86400 "
                                    "seconds");
        }
    }

    sb->timeout_s = (ngx_uint_t) timeout;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *ngx_sprintf(p, "%ui", sb->timeout_s) = '\0';
    sb->timeout = (const char *) p;

    sb->warm = 1;

    v = json_object_get(ctx->body, "useWarmPool");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "useWarmPool",
                                    "field \"useWarmPool\" must be a "
                                    "boolean");
        }

        sb->warm = json_is_true(v);
    }

    /*
     * A warm sandbox has no egress and no profile, and its pool's
     * resources: the plan takes a pool that has at least what the
     * controller would give this create cold (its defaults where not
     * given, clamped as it clamps).
     */

    v = json_object_get(ctx->body, "resources");
    if (ngx_http_llmsafespace_check_resources(r, ctx, v, res) != NGX_OK
        || ngx_http_llmsafespace_check_bounds(r, ctx, res) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    cpu = res[NGX_HTTP_LLMSAFESPACE_RES_CPU];
    if (cpu < 0) {
        cpu = NGX_HTTP_LLMSAFESPACE_CPU_DEFAULT;
    }

    memory = res[NGX_HTTP_LLMSAFESPACE_RES_MEMORY];
    if (memory < 0) {
        memory = NGX_HTTP_LLMSAFESPACE_MEMORY_DEFAULT;
    }

    p = ngx_pnalloc(r->pool, 2 * NGX_INT64_LEN + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    sb->cpu = (const char *) p;
    p = ngx_sprintf(p, "%.3f%Z", cpu);
    sb->memory = (const char *) p;
    ngx_sprintf(p, "%L%Z", (int64_t) memory);

    sb->resources = ngx_http_llmsafespace_json_text(r, v);

    v = json_object_get(ctx->body, "networkAccess");
    if (v == NULL || json_is_null(v)) {
        v = profile ? json_object_get(profile, "networkAccess") : NULL;
    }

    if (ngx_http_llmsafespace_check_network(r, ctx, v) != NGX_OK) {
        return NGX_DECLINED;
    }

    if (json_array_size(json_object_get(v, "egress"))
        || json_is_true(json_object_get(v, "ingress")))
    {
        sb->warm = 0;
    }

    sb->network = ngx_http_llmsafespace_json_text(r, v);

    if (profile) {
        sb->warm = 0;
    }

    v = json_object_get(ctx->body, "labels");
    if (ngx_http_llmsafespace_check_labels(r, ctx, v) != NGX_OK) {
        return NGX_DECLINED;
    }

    sb->labels = ngx_http_llmsafespace_json_text(r, v);

    if (sb->resources == NULL || sb->network == NULL || sb->labels == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * cpu: cores (number) or "500m"; memory and storage: bytes or "512Mi".
 * The order of fields[] is that of NGX_HTTP_LLMSAFESPACE_RES_*.
 */

/*
 * Out of bounds is refused rather than clamped: the sandbox's answer shows
 * what was asked, so a clamped value would be a silent lie about what it
 * got.  A warm pool's are the same bounds.
 */

ngx_int_t
ngx_http_llmsafespace_check_bounds(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, double *values)
{
    double  cpu, memory, storage;

    cpu = values[NGX_HTTP_LLMSAFESPACE_RES_CPU];
    memory = values[NGX_HTTP_LLMSAFESPACE_RES_MEMORY];
    storage = values[NGX_HTTP_LLMSAFESPACE_RES_STORAGE];

    if (cpu >= 0) {

        /* in millicores, as the controller writes the container's quota
         * (only a value that can be in range: no overflow in the cast) */

        if (cpu < 2 * NGX_HTTP_LLMSAFESPACE_CPU_MAX) {
            cpu = (double) (int64_t) (cpu * 1000 + 0.5) / 1000;
            values[NGX_HTTP_LLMSAFESPACE_RES_CPU] = cpu;
        }

        if (cpu < NGX_HTTP_LLMSAFESPACE_CPU_MIN
            || cpu > NGX_HTTP_LLMSAFESPACE_CPU_MAX)
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "resources", "\"resources.cpu\" must "
                                    "be 0.1 to 2 (cores, or \"100m\" to "
                                    "\"2000m\")");
        }
    }

    if (memory >= 0
        && (memory < NGX_HTTP_LLMSAFESPACE_MEMORY_MIN
            || memory > NGX_HTTP_LLMSAFESPACE_MEMORY_MAX))
    {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "resources",
                                    "\"resources.memory\" must be 64Mi "
                                    "to 8Gi");
    }

    if (storage >= 0
        && (storage < 1 || storage > NGX_HTTP_LLMSAFESPACE_STORAGE_MAX))
    {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "resources",
                                    "\"resources.ephemeralStorage\" must "
                                    "be 1 byte to 10T");
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_llmsafespace_check_resources(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v, double *values)
{
    size_t       i, k, n;
    double       unit;
    json_t      *e;
    ngx_int_t    milli;
    const char  *key, *s;

    static const char  *fields[] = { "cpu", "memory", "ephemeralStorage",
                                     NULL };

    for (k = 0; k < NGX_HTTP_LLMSAFESPACE_RES_N; k++) {
        values[k] = -1;
    }

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_object(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "resources",
                                    "field \"resources\" must be an object");
    }

    json_object_foreach(v, key, e) {

        for (k = 0; fields[k]; k++) {
            if (ngx_strcmp(key, fields[k]) == 0) {
                break;
            }
        }

        if (fields[k] == NULL) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "resources", "unknown field "
                                    "\"resources.%s\"", key);
        }

        if (json_is_number(e)) {
            if (json_number_value(e) <= 0
                || json_number_value(e) > 1e13)
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "resources", "\"resources.%s\" is out "
                                    "of range", key);
            }

            values[k] = json_number_value(e);

            continue;
        }

        if (!json_is_string(e)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "resources",
                                    "\"resources.%s\" must be a number or "
                                    "a quantity string", key);
        }

        /* a Kubernetes quantity: digits, an optional fraction, a suffix */

        s = json_string_value(e);
        n = json_string_length(e);

        for (i = 0; i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.');
             i++)
        {
            /* void */
        }

        /* in thousandths: "500m" of a cpu and "1.5Gi" are exact */

        milli = (i == 0 || i > 16 || s[0] == '.')
                ? NGX_ERROR : ngx_atofp((u_char *) s, i, 3);
        unit = ngx_http_llmsafespace_quantity_unit(s + i, n - i);

        if (milli == NGX_ERROR || unit == 0) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "resources", "\"resources.%s\" must be "
                                    "a quantity such as \"500m\", \"2\" or "
                                    "\"512Mi\"", key);
        }

        values[k] = milli / 1000.0 * unit;
    }

    return NGX_OK;
}


/* the multiplier of a quantity's suffix; 0: not one */

static double
ngx_http_llmsafespace_quantity_unit(const char *s, size_t len)
{
    ngx_uint_t  i;

    static const struct {
        const char  *suffix;
        double       unit;
    } units[] = {
        { "", 1 }, { "m", 1e-3 }, { "k", 1e3 }, { "K", 1e3 }, { "M", 1e6 },
        { "G", 1e9 }, { "T", 1e12 }, { "Ki", 1024.0 }, { "Mi", 1048576.0 },
        { "Gi", 1073741824.0 }, { "Ti", 1099511627776.0 }
    };

    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ngx_strlen(units[i].suffix) == len
            && ngx_strncmp(s, units[i].suffix, len) == 0)
        {
            return units[i].unit;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_llmsafespace_check_network(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v)
{
    size_t       i, k;
    json_t      *e, *egress, *ports, *port;
    const char  *key, *domain;

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_object(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "networkAccess",
                                    "field \"networkAccess\" must be an "
                                    "object");
    }

    json_object_foreach(v, key, e) {
        if (ngx_strcmp(key, "egress") != 0
            && ngx_strcmp(key, "ingress") != 0)
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "unknown field "
                                    "\"networkAccess.%s\"", key);
        }
    }

    e = json_object_get(v, "ingress");
    if (e && !json_is_boolean(e)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "networkAccess",
                                    "\"networkAccess.ingress\" must be a "
                                    "boolean");
    }

    egress = json_object_get(v, "egress");
    if (egress == NULL) {
        return NGX_OK;
    }

    if (!json_is_array(egress)
        || json_array_size(egress) > NGX_HTTP_LLMSAFESPACE_MAX_EGRESS)
    {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "\"networkAccess."
                                    "egress\" must be a list of at most 32 "
                                    "rules");
    }

    json_array_foreach(egress, i, e) {
        domain = json_string_value(json_object_get(e, "domain"));
        ports = json_object_get(e, "ports");

        if (!json_is_object(e) || domain == NULL || *domain == '\0'
            || ngx_strlen(domain) > 253
            || json_object_size(e) != 1u + (ports != NULL))
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "each egress rule is "
                                    "{\"domain\": name, \"ports\"?: [..]}");
        }

        if (ngx_http_llmsafespace_check_address(r, ctx, domain) != NGX_OK) {
            return NGX_DECLINED;
        }

        for (k = 0; domain[k]; k++) {
            /* names only: the controller resolves each to addresses */
            if (!(isalnum((u_char) domain[k]) || domain[k] == '.'
                  || domain[k] == '-'))
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "invalid egress "
                                    "domain \"%s\"", domain);
            }
        }

        if (ports == NULL) {
            continue;
        }

        if (!json_is_array(ports) || json_array_size(ports) > 16) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "egress \"ports\" must "
                                    "be a list of at most 16 ports");
        }

        json_array_foreach(ports, k, port) {
            if (!json_is_integer(port) || json_integer_value(port) < 1
                || json_integer_value(port) > 65535)
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "egress ports are "
                                    "integers 1 to 65535");
            }
        }
    }

    return NGX_OK;
}


/* the prefix length of a netmask (host order) */

static int
ngx_http_llmsafespace_prefix(uint32_t mask)
{
    int  n;

    for (n = 0; n < 32 && (mask & (0x80000000u >> n)); n++) {
        /* void */
    }

    return n;
}


/*
 * An egress "domain" that is an address, in any spelling the controller's
 * resolver takes ("10.0.0.1", "167772161", "0xa000001", inet_aton's), or
 * a range: refused when it falls in a private or special range that
 * llmsafespace_egress_allow does not let through.  Names are the
 * controller's to check once they resolve.
 */

static ngx_int_t
ngx_http_llmsafespace_check_address(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *domain)
{
    ngx_int_t                           rc;
    ngx_str_t                           s;
    ngx_cidr_t                          cidr;
    struct in_addr                      in;
    const lss_egress_range_t           *range;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (inet_aton(domain, &in) != 0) {
        range = lss_egress_refused(ntohl(in.s_addr), 32, lmcf->egress_allow,
                                   lmcf->egress_allow_prefix,
                                   lmcf->egress_nallow);

    } else if (ngx_strchr(domain, '/') != NULL) {
        s.data = (u_char *) domain;
        s.len = ngx_strlen(domain);

        rc = ngx_ptocidr(&s, &cidr);

        if (rc == NGX_ERROR || cidr.family != AF_INET) {
            return NGX_OK;          /* not a range: an invalid name */
        }

        range = lss_egress_refused(ntohl(cidr.u.in.addr),
                          ngx_http_llmsafespace_prefix(ntohl(cidr.u.in.mask)),
                                   lmcf->egress_allow,
                                   lmcf->egress_allow_prefix,
                                   lmcf->egress_nallow);
        if (range == NULL) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "networkAccess", "egress \"%s\": a rule "
                                    "names a host or an address, not a "
                                    "range", domain);
        }

    } else {
        return NGX_OK;
    }

    if (range == NULL) {
        return NGX_OK;
    }

    return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "networkAccess",
                                    "egress \"%s\" is refused: %s %s%s",
                                    domain, range->what, range->cidr,
                                    range->never ? "" : " (not allowed by "
                                    "llmsafespace_egress_allow)");
}


static ngx_int_t
ngx_http_llmsafespace_check_labels(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v)
{
    size_t       i, len;
    json_t      *e;
    const char  *key;

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_object(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "labels",
                                    "field \"labels\" must be an object");
    }

    if (json_object_size(v) > NGX_HTTP_LLMSAFESPACE_MAX_LABELS) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "labels",
                                    "at most 32 labels");
    }

    json_object_foreach(v, key, e) {
        len = ngx_strlen(key);

        for (i = 0; i < len; i++) {
            if (!(isalnum((u_char) key[i]) || key[i] == '.'
                  || key[i] == '_' || key[i] == '/' || key[i] == '-'))
            {
                break;
            }
        }

        if (len == 0 || len > 63 || i != len) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "labels",
                                    "label keys are 1-63 characters of "
                                    "[A-Za-z0-9._/-]");
        }

        if (!json_is_string(e)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "labels",
                                    "label \"%s\" must be a string", key);
        }

        if (json_string_length(e) > 253
            || ngx_strlen(json_string_value(e)) != json_string_length(e))
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "labels",
                                    "label \"%s\": at most 253 characters, "
                                    "no NUL", key);
        }
    }

    return NGX_OK;
}


/* compact JSON text in the request's pool; NULL becomes "{}" */

static const char *
ngx_http_llmsafespace_json_text(ngx_http_request_t *r, json_t *json)
{
    char    *s;
    u_char  *p;
    size_t   len;

    if (json == NULL || json_is_null(json)) {
        return "{}";
    }

    s = json_dumps(json, JSON_COMPACT);
    if (s == NULL) {
        return NULL;
    }

    len = ngx_strlen(s);

    p = ngx_pnalloc(r->pool, len + 1);
    if (p != NULL) {
        ngx_memcpy(p, s, len + 1);
    }

    free(s);

    return (const char *) p;
}


static ngx_int_t
ngx_http_llmsafespace_create_planned(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    u_char                             *key, *exp, *now;
    ngx_uint_t                          live;
    const char                         *argv[8];
    size_t                              argvlen[8];
    int64_t                             ms;
    ngx_http_llmsafespace_sandbox_t    *sb;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    sb = ctx->sandbox;
    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    live = ngx_atoi((u_char *) PQgetvalue(res, 0, 0),
                    PQgetlength(res, 0, 0));

    if (lmcf->sandbox_quota && live >= lmcf->sandbox_quota) {
        return ngx_http_llmsafespace_quota_exceeded(r, live);
    }

    if (PQgetisnull(res, 0, 1)) {
        return ngx_http_llmsafespace_create_cold(r, ctx);
    }

    sb->pool = (const char *) ngx_http_llmsafespace_api_cstr(r,
                                       (u_char *) PQgetvalue(res, 0, 1),
                                       PQgetlength(res, 0, 1));

    key = ngx_pnalloc(r->pool, sizeof("lss:pool::ready") + 64);
    exp = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    now = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (sb->pool == NULL || key == NULL || exp == NULL || now == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ms = (int64_t) ngx_time() * 1000 + (ngx_timeofday())->msec;

    /*
     * EVAL script 2 <ready list> lss:events <owner> <expires> <now>;
     * EVAL rather than EVALSHA: Redis caches the compiled script by its
     * digest anyway, and a restarted Redis can never answer NOSCRIPT.
     */

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) lmcf->claim_script.data;
    argvlen[1] = lmcf->claim_script.len;
    argv[2] = "2";
    argvlen[2] = 1;
    argv[3] = (const char *) key;
    argvlen[3] = ngx_sprintf(key, "lss:pool:%s:ready", sb->pool) - key;
    argv[4] = "lss:events";
    argvlen[4] = sizeof("lss:events") - 1;
    argv[5] = sb->owner;
    argvlen[5] = ngx_strlen(sb->owner);
    argv[6] = (const char *) exp;
    argvlen[6] = ngx_sprintf(exp, "%L", ms + (int64_t) sb->timeout_s * 1000)
                 - exp;
    argv[7] = (const char *) now;
    argvlen[7] = ngx_sprintf(now, "%L", ms) - now;

    return ngx_http_llmsafespace_api_redis(r, ctx, 8, argv, argvlen,
                                        ngx_http_llmsafespace_create_claimed);
}


/* the quota as a query parameter ("0": none) */

static const char *
ngx_http_llmsafespace_quota_value(ngx_http_request_t *r)
{
    u_char                             *p;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%ui", lmcf->sandbox_quota) = '\0';

    return (const char *) p;
}


static ngx_int_t
ngx_http_llmsafespace_quota_exceeded(ngx_http_request_t *r, ngx_int_t live)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    return ngx_http_llmsafespace_send_error_details(r,
               NGX_HTTP_FORBIDDEN, "quota_exceeded",
               &(ngx_str_t) ngx_string("too many live sandboxes: "
                                       "delete one first"),
               json_pack("{s:i, s:i}", "limit", (int) lmcf->sandbox_quota,
                         "current", (int) ngx_max(live, 0)));
}


static ngx_int_t
ngx_http_llmsafespace_create_claimed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, redisReply *reply)
{
    u_char                           *exp;
    size_t                            i;
    int64_t                           ms;
    const char                       *values[6];
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    if (reply->type != REDIS_REPLY_STRING) {
        /* the pool is empty: start one */
        return ngx_http_llmsafespace_create_cold(r, ctx);
    }

    if (reply->len < 3 + 8 || reply->len >= sizeof(sb->id)
        || ngx_strncmp(reply->str, "sb-", 3) != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: pool %s handed out an invalid id",
                      sb->pool);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 3; i < reply->len; i++) {
        if (!((reply->str[i] >= '0' && reply->str[i] <= '9')
              || (reply->str[i] >= 'a' && reply->str[i] <= 'z')))
        {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llmsafespace: pool %s handed out an invalid id",
                          sb->pool);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    *ngx_cpymem(sb->id, reply->str, reply->len) = '\0';

    ctx->audit_object.data = sb->id;
    ctx->audit_object.len = reply->len;
    ctx->sandbox_id = ctx->audit_object;

    exp = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (exp == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ms = (int64_t) ngx_time() * 1000 + (ngx_timeofday())->msec;
    *ngx_sprintf(exp, "%L", ms + (int64_t) sb->timeout_s * 1000) = '\0';

    values[0] = (const char *) sb->id;
    values[1] = sb->owner;
    values[2] = sb->labels;
    values[3] = sb->timeout;
    values[4] = (const char *) exp;
    values[5] = ngx_http_llmsafespace_quota_value(r);

    if (values[5] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_api_query(r, ctx,
                                         ngx_http_llmsafespace_bind_sql, 6,
                                         values,
                                         ngx_http_llmsafespace_create_bound);
}


static ngx_int_t
ngx_http_llmsafespace_create_bound(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    if (PQntuples(res) == 1 && PQgetisnull(res, 0, 0)
        && ngx_strcmp(PQgetvalue(res, 0, PQnfields(res) - 1), "1") == 0)
    {
        /* concurrent creates took the quota first: this one is retired */
        return ngx_http_llmsafespace_quota_exceeded(r,
                   ngx_atoi((u_char *) PQgetvalue(res, 0, PQnfields(res) - 2),
                            PQgetlength(res, 0, PQnfields(res) - 2)));
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        /* the route was claimed but its record is gone or not ours */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: claimed sandbox %s has no record to "
                      "bind", sb->id);
        return ngx_http_llmsafespace_send_error(r,
                                         NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "unavailable", "the claimed "
                                         "sandbox could not be bound, "
                                         "retry");
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_CREATED,
                                  ngx_http_llmsafespace_sandbox_json(res, 0));
}


/* no warm sandbox fits: a record in Pending, which the controller starts */

static ngx_int_t
ngx_http_llmsafespace_create_cold(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    u_char                            rnd[10];
    const char                       *values[9];
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    /* 80 random bits: ids cannot be guessed */

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_hex_dump(ngx_cpymem(sb->id, "sb-", 3), rnd, sizeof(rnd)) = '\0';

    ctx->audit_object.data = sb->id;
    ctx->audit_object.len = 3 + 20;
    ctx->sandbox_id = ctx->audit_object;

    values[0] = (const char *) sb->id;
    values[1] = sb->owner;
    values[2] = sb->runtime;
    values[3] = sb->level;
    values[4] = sb->timeout;
    values[5] = sb->resources;
    values[6] = sb->network;
    values[7] = sb->labels;
    values[8] = ngx_http_llmsafespace_quota_value(r);

    if (values[8] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_api_query(r, ctx,
                                      ngx_http_llmsafespace_insert_sql, 9,
                                      values,
                                      ngx_http_llmsafespace_create_recorded);
}


static ngx_int_t
ngx_http_llmsafespace_create_recorded(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 0)) {
        /* concurrent creates took the quota first: nothing recorded */
        return ngx_http_llmsafespace_quota_exceeded(r,
                   ngx_atoi((u_char *) PQgetvalue(res, 0, PQnfields(res) - 1),
                            PQgetlength(res, 0, PQnfields(res) - 1)));
    }

    /* wakes the controller; it would find the record within a tick anyway */
    ngx_http_llmsafespace_request_controller(r, sb, "create");

    return ngx_http_llmsafespace_create_polled(r, ctx, res);
}


/* Running or ended: answered; still starting: wait, bounded, or say so */

static ngx_int_t
ngx_http_llmsafespace_create_polled(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    const char                       *phase;
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_not_found(r, &ctx->sandbox_id);
    }

    phase = PQgetvalue(res, 0, NGX_HTTP_LLMSAFESPACE_COL_PHASE);

    if (ngx_strcmp(phase, "Pending") != 0
        && ngx_strcmp(phase, "Creating") != 0)
    {
        return ngx_http_llmsafespace_send_object(r, NGX_HTTP_CREATED,
                                  ngx_http_llmsafespace_sandbox_json(res, 0));
    }

    if (ngx_current_msec - sb->started >= sb->wait) {
        return ngx_http_llmsafespace_create_answer(r, ctx, res);
    }

    ctx->wait_event.handler = ngx_http_llmsafespace_wait_handler;
    ctx->wait_event.data = r;
    ctx->wait_event.log = r->connection->log;

    ngx_add_timer(&ctx->wait_event, NGX_HTTP_LLMSAFESPACE_WAIT_POLL);

    /* a client that goes away ends the wait (the pool cleanup) */
    r->read_event_handler = ngx_http_test_reading;

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_llmsafespace_create_answer(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    p = ngx_pnalloc(r->pool, sizeof("/api/v1/sandboxes/") + 64);
    if (h == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Location");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "/api/v1/sandboxes/%V", &ctx->sandbox_id)
                   - p;

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_ACCEPTED,
                                  ngx_http_llmsafespace_sandbox_json(res, 0));
}


static void
ngx_http_llmsafespace_wait_handler(ngx_event_t *ev)
{
    ngx_int_t                         rc;
    ngx_connection_t                 *c;
    const char                       *values[1];
    ngx_http_request_t               *r;
    ngx_http_llmsafespace_ctx_t      *ctx;
    ngx_http_llmsafespace_sandbox_t  *sb;

    r = ev->data;
    c = r->connection;
    ctx = ngx_http_llmsafespace_get_ctx(r);
    sb = ctx->sandbox;

    values[0] = (const char *) sb->id;

    rc = ngx_http_llmsafespace_api_query(r, ctx,
                                         ngx_http_llmsafespace_poll_sql, 1,
                                         values,
                                         ngx_http_llmsafespace_create_polled);
    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    /* the wait's own reference */
    ngx_http_finalize_request(r, NGX_DONE);
    ngx_http_run_posted_requests(c);
}


/* lss:requests: wakes the controller; best effort, the record is the truth */

static void
ngx_http_llmsafespace_request_controller(ngx_http_request_t *r,
    ngx_http_llmsafespace_sandbox_t *sb, const char *type)
{
    u_char       now[NGX_INT64_LEN + 1];
    ngx_uint_t   n, i;
    const char  *argv[26];
    size_t       argvlen[26];

    *ngx_sprintf(now, "%L", (int64_t) ngx_time() * 1000
                            + (ngx_timeofday())->msec) = '\0';

    n = 0;
    argv[n++] = "XADD";
    argv[n++] = "lss:requests";
    argv[n++] = "MAXLEN";
    argv[n++] = "~";
    argv[n++] = "100000";
    argv[n++] = "*";
    argv[n++] = "type";
    argv[n++] = type;
    argv[n++] = "id";
    argv[n++] = (const char *) sb->id;
    argv[n++] = "owner";
    argv[n++] = sb->owner;

    if (ngx_strcmp(type, "create") == 0) {
        argv[n++] = "runtime";
        argv[n++] = sb->runtime;
        argv[n++] = "securityLevel";
        argv[n++] = sb->level;
        argv[n++] = "timeout";
        argv[n++] = sb->timeout;
        argv[n++] = "resources";
        argv[n++] = sb->resources;
        argv[n++] = "networkAccess";
        argv[n++] = sb->network;
        argv[n++] = "labels";
        argv[n++] = sb->labels;
    }

    argv[n++] = "requestedAt";
    argv[n++] = (const char *) now;

    for (i = 0; i < n; i++) {
        argvlen[i] = ngx_strlen(argv[i]);
    }

    if (ngx_http_llmsafespace_redis_command(n, argv, argvlen,
                                         ngx_http_llmsafespace_ignore_reply,
                                         NULL)
        == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "llmsafespace: %s request for %s not filed (Redis "
                      "unavailable); the controller finds the record on "
                      "its next tick", type, sb->id);
    }
}


static void
ngx_http_llmsafespace_ignore_reply(void *data, redisReply *reply,
    ngx_int_t rc)
{
    if (rc != NGX_OK || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "llmsafespace: request to the controller not filed");
    }
}


ngx_int_t
ngx_http_llmsafespace_sandboxes_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char                           *p, *q, *last, *end, *eq, *phases;
    u_char                            limit[NGX_INT_T_LEN + 1];
    u_char                            offset[NGX_INT_T_LEN + 1];
    size_t                            len;
    json_t                           *labels;
    ngx_int_t                         rc;
    ngx_str_t                         v, name, value;
    const char                       *values[5];
    ngx_http_llmsafespace_sandbox_t  *sb;

    if (ngx_http_llmsafespace_sandbox_init(r, ctx, NULL, &rc) != NGX_OK) {
        return rc;
    }

    sb = ctx->sandbox;

    if (ngx_http_llmsafespace_api_page(r, ctx, limit, offset) != NGX_OK) {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    /* users see their own; admins everybody's, or one user's */

    values[0] = sb->owner;

    if (sb->admin[0] == 't') {
        values[0] = NULL;

        if (ngx_http_arg(r, (u_char *) "user", 4, &v) == NGX_OK) {
            values[0] = (const char *) ngx_http_llmsafespace_api_cstr(r,
                                                           v.data, v.len);
        }
    }

    /* ?phase=Running,Pending as a text[] literal */

    values[1] = NULL;

    if (ngx_http_arg(r, (u_char *) "phase", 5, &v) == NGX_OK) {
        phases = ngx_pnalloc(r->pool, v.len + 3);
        if (phases == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        q = phases;
        *q++ = '{';
        p = v.data;
        last = v.data + v.len;

        while (p <= last) {
            end = ngx_strlchr(p, last, ',');
            if (end == NULL) {
                end = last;
            }

            if (!ngx_http_llmsafespace_is_phase(p, end - p)) {
                return ngx_http_llmsafespace_send_field_error(r, 422,
                               "phase", &(ngx_str_t) ngx_string(
                               "\"phase\" must be Pending, Creating, "
                               "Running, Terminating, Terminated or Failed "
                               "(comma-separated)"));
            }

            if (q != phases + 1) {
                *q++ = ',';
            }

            q = ngx_cpymem(q, p, end - p);
            p = end + 1;
        }

        *q++ = '}';
        *q = '\0';
        values[1] = (const char *) phases;
    }

    /* ?label=k=v, repeatable: all must match */

    labels = json_object();
    if (labels == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = r->args.data;
    last = r->args.data + r->args.len;

    while (p < last) {
        end = ngx_strlchr(p, last, '&');
        if (end == NULL) {
            end = last;
        }

        if (end - p > 6 && ngx_strncmp(p, "label=", 6) == 0) {
            len = end - p - 6;
            q = ngx_pnalloc(r->pool, len + 1);
            if (q == NULL) {
                json_decref(labels);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            name.data = q;
            eq = p + 6;
            ngx_unescape_uri(&q, &eq, len, NGX_UNESCAPE_URI);
            name.len = q - name.data;

            /* "%00" would reach PostgreSQL, which refuses NUL in jsonb */
            eq = ngx_strlchr(name.data, name.data + name.len, '=');
            if (eq == NULL || eq == name.data
                || ngx_strlchr(name.data, name.data + name.len, '\0'))
            {
                json_decref(labels);
                return ngx_http_llmsafespace_send_field_error(r, 422,
                               "label", &(ngx_str_t) ngx_string(
                               "\"label\" must be key=value"));
            }

            value.data = eq + 1;
            value.len = name.data + name.len - value.data;
            name.len = eq - name.data;

            if (json_object_setn_new(labels, (char *) name.data,
                                              name.len,
                                              json_stringn((char *)
                                                           value.data,
                                                           value.len))
                != 0)
            {
                json_decref(labels);
                return ngx_http_llmsafespace_send_field_error(r, 422,
                               "label", &(ngx_str_t) ngx_string(
                               "\"label\" must be UTF-8 key=value"));
            }
        }

        p = end + 1;
    }

    values[2] = ngx_http_llmsafespace_json_text(r, labels);
    json_decref(labels);

    values[3] = (const char *) limit;
    values[4] = (const char *) offset;

    if (values[2] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_api_query(r, ctx,
                                     ngx_http_llmsafespace_list_sql, 5,
                                     values,
                                     ngx_http_llmsafespace_sandboxes_listed);
}


static ngx_uint_t
ngx_http_llmsafespace_is_phase(u_char *p, size_t len)
{
    ngx_uint_t  i;

    for (i = 0; ngx_http_llmsafespace_phases[i]; i++) {
        if (ngx_strlen(ngx_http_llmsafespace_phases[i]) == len
            && ngx_strncmp(p, ngx_http_llmsafespace_phases[i], len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_llmsafespace_sandboxes_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    int      i;
    json_t  *list, *total;

    list = json_array();
    if (list == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < PQntuples(res); i++) {
        if (json_array_append_new(list,
                                  ngx_http_llmsafespace_sandbox_json(res, i))
            != 0)
        {
            json_decref(list);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    total = json_integer(PQntuples(res)
                         ? ngx_atoi((u_char *) PQgetvalue(res, 0,
                                           NGX_HTTP_LLMSAFESPACE_COL_N),
                                    PQgetlength(res, 0,
                                           NGX_HTTP_LLMSAFESPACE_COL_N))
                         : 0);

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                             json_pack("{s:o, s:o}",
                                                       "sandboxes", list,
                                                       "total", total));
}


/* a route on one sandbox of the caller's (any, for admins) */

static ngx_int_t
ngx_http_llmsafespace_sandbox_query(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, const char *sql,
    ngx_http_llmsafespace_query_done_pt done)
{
    ngx_int_t                         rc;
    const char                       *values[3];
    ngx_http_llmsafespace_sandbox_t  *sb;

    if (ngx_http_llmsafespace_sandbox_init(r, ctx, id, &rc) != NGX_OK) {
        return rc;
    }

    sb = ctx->sandbox;

    values[0] = (const char *) sb->id;
    values[1] = sb->owner;
    values[2] = sb->admin;

    return ngx_http_llmsafespace_api_query(r, ctx, sql, 3, values, done);
}


ngx_int_t
ngx_http_llmsafespace_sandboxes_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_sandbox_query(r, ctx, id,
                                               ngx_http_llmsafespace_get_sql,
                                               ngx_http_llmsafespace_sandboxes_got);
}


static ngx_int_t
ngx_http_llmsafespace_sandboxes_got(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_not_found(r, &ctx->sandbox_id);
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                  ngx_http_llmsafespace_sandbox_json(res, 0));
}


ngx_int_t
ngx_http_llmsafespace_sandboxes_status(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_sandbox_query(r, ctx, id,
                                               ngx_http_llmsafespace_get_sql,
                                               ngx_http_llmsafespace_sandboxes_status_got);
}


/* phase and a Ready condition, as a Kubernetes status would show them */

static ngx_int_t
ngx_http_llmsafespace_sandboxes_status_got(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t      *sandbox, *status, *cond;
    const char  *phase;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_not_found(r, &ctx->sandbox_id);
    }

    sandbox = ngx_http_llmsafespace_sandbox_json(res, 0);
    if (sandbox == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    phase = PQgetvalue(res, 0, NGX_HTTP_LLMSAFESPACE_COL_PHASE);

    cond = json_pack("{s:s, s:s, s:O, s:O, s:o}",
                     "type", "Ready",
                     "status", ngx_strcmp(phase, "Running") == 0
                               ? "True" : "False",
                     "reason", json_object_get(sandbox, "reason"),
                     "message", json_object_get(sandbox, "message"),
                     "lastTransitionTime",
                     ngx_http_llmsafespace_api_value(res, 0,
                                       NGX_HTTP_LLMSAFESPACE_COL_UPDATED));

    status = json_pack("{s:O, s:O, s:O, s:O, s:[o], s:O, s:O, s:O}",
                       "id", json_object_get(sandbox, "id"),
                       "phase", json_object_get(sandbox, "phase"),
                       "reason", json_object_get(sandbox, "reason"),
                       "message", json_object_get(sandbox, "message"),
                       "conditions", cond,
                       "startedAt", json_object_get(sandbox, "startedAt"),
                       "expiresAt", json_object_get(sandbox, "expiresAt"),
                       "resources", json_object_get(sandbox, "resources"));

    json_decref(sandbox);

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, status);
}


ngx_int_t
ngx_http_llmsafespace_sandboxes_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_sandbox_query(r, ctx, id,
                                               ngx_http_llmsafespace_mark_sql,
                                               ngx_http_llmsafespace_sandboxes_marked);
}


/*
 * Marked for deletion: the route goes first, before the answer, so that
 * no request after it reaches the sandbox; the controller then destroys
 * it (docs/architecture.md: the gateway may delete the route of a
 * sandbox it has just marked).
 */

static ngx_int_t
ngx_http_llmsafespace_sandboxes_marked(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    u_char                           *key;
    const char                       *argv[2];
    size_t                            argvlen[2];
    ngx_pool_cleanup_t               *cln;
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_not_found(r, &ctx->sandbox_id);
    }

    if (PQgetvalue(res, 0, NGX_HTTP_LLMSAFESPACE_COL_N)[0] != 't') {
        /* already ended: nothing to do */
        return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                  ngx_http_llmsafespace_sandbox_json(res, 0));
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    key = ngx_pnalloc(r->pool, sizeof("lss:sb:") + sizeof(sb->id));
    if (cln == NULL || key == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sb->answer = ngx_http_llmsafespace_sandbox_json(res, 0);
    if (sb->answer == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_llmsafespace_json_cleanup;
    cln->data = sb->answer;

    argv[0] = "DEL";
    argv[1] = (const char *) key;
    argvlen[0] = 3;
    argvlen[1] = ngx_sprintf(key, "lss:sb:%s", sb->id) - key;

    return ngx_http_llmsafespace_api_redis(r, ctx, 2, argv, argvlen,
                                     ngx_http_llmsafespace_sandboxes_unrouted);
}


static ngx_int_t
ngx_http_llmsafespace_sandboxes_unrouted(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, redisReply *reply)
{
    ngx_http_llmsafespace_sandbox_t  *sb;

    sb = ctx->sandbox;

    ngx_http_llmsafespace_request_controller(r, sb, "delete");

    return ngx_http_llmsafespace_send_json(r, NGX_HTTP_ACCEPTED, sb->answer);
}


static void
ngx_http_llmsafespace_json_cleanup(void *data)
{
    json_decref(data);
}


/* the sandbox object of the API from a row of SANDBOX_COLUMNS */

static json_t *
ngx_http_llmsafespace_sandbox_json(PGresult *res, int row)
{
    char    *id;
    json_t  *json, *timeout;
    u_char   execute[128], files[128], stream[128];

    id = PQgetvalue(res, row, 0);

    ngx_snprintf(execute, sizeof(execute), "/api/v1/sandboxes/%s/execute%Z",
                 id);
    ngx_snprintf(files, sizeof(files), "/api/v1/sandboxes/%s/files%Z", id);
    ngx_snprintf(stream, sizeof(stream), "/api/v1/sandboxes/%s/stream%Z", id);

    timeout = PQgetisnull(res, row, NGX_HTTP_LLMSAFESPACE_COL_TIMEOUT)
              ? json_null()
              : json_integer(ngx_atoi((u_char *) PQgetvalue(res, row,
                                        NGX_HTTP_LLMSAFESPACE_COL_TIMEOUT),
                                      PQgetlength(res, row,
                                        NGX_HTTP_LLMSAFESPACE_COL_TIMEOUT)));

    json = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o,"
                     " s:o, s:o, s:o, s:o, s:o, s:o,"
                     " s:{s:s, s:s, s:s}}",
                     "id", ngx_http_llmsafespace_api_value(res, row, 0),
                     "phase", ngx_http_llmsafespace_api_value(res, row, 1),
                     "reason", ngx_http_llmsafespace_api_value(res, row, 2),
                     "message", ngx_http_llmsafespace_api_value(res, row, 3),
                     "runtime", ngx_http_llmsafespace_api_value(res, row, 4),
                     "securityLevel",
                     ngx_http_llmsafespace_api_value(res, row, 5),
                     "timeout", timeout,
                     "resources", ngx_http_llmsafespace_parsed(res, row, 7),
                     "networkAccess",
                     ngx_http_llmsafespace_parsed(res, row, 8),
                     "labels", ngx_http_llmsafespace_parsed(res, row, 9),
                     "pool", ngx_http_llmsafespace_api_value(res, row, 10),
                     "user", ngx_http_llmsafespace_api_value(res, row, 11),
                     "createdAt",
                     ngx_http_llmsafespace_api_value(res, row, 12),
                     "startedAt",
                     ngx_http_llmsafespace_api_value(res, row, 13),
                     "expiresAt",
                     ngx_http_llmsafespace_api_value(res, row, 14),
                     "terminatedAt",
                     ngx_http_llmsafespace_api_value(res, row, 15),
                     "endpoints",
                     "execute", (char *) execute,
                     "files", (char *) files,
                     "websocket", (char *) stream);

    return json;
}


/* a jsonb column (written by us or by the controller) */

static json_t *
ngx_http_llmsafespace_parsed(PGresult *res, int row, int col)
{
    json_t  *json;

    if (PQgetisnull(res, row, col)) {
        return json_object();
    }

    json = json_loadb(PQgetvalue(res, row, col), PQgetlength(res, row, col),
                      0, NULL);

    return json ? json : json_object();
}


static ngx_int_t
ngx_http_llmsafespace_not_found(ngx_http_request_t *r, ngx_str_t *id)
{
    return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "not_found",
                                            "sandbox %V not found", id);
}
