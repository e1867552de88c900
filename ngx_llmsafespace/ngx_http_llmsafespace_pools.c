
/*
 * Copyright (C) LLMSafeSpace
 *
 * Warm pools (admin): /warmpools create, list, get, patch, delete, status
 * over the warm_pools table of sql/controller.sql.  The gateway writes
 * definitions with source 'api'; the controller reads them (lsc_pool.c),
 * keeps the pools filled and writes their status.  Pools mirrored from
 * manifests (source 'manifest') are read-only here: the files win.
 *
 * A pool is checked here against the rules the controller applies when it
 * loads a definition, because the controller skips an invalid pool
 * silently: an accepted pool must be one the controller will run.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"


/* the controller skips names of 48 characters (lsc_valid_name(name, 48)) */
#define NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG                                     \
    "warm pools are kept in PostgreSQL"

#define NGX_HTTP_LLMSAFESPACE_POOL_NAME_MAX    47
#define NGX_HTTP_LLMSAFESPACE_POOL_SIZE_MAX    100
/* the controller's limits: lsc_valid_package(), p->packages[400] */
#define NGX_HTTP_LLMSAFESPACE_PACKAGE_MAX      100
#define NGX_HTTP_LLMSAFESPACE_PACKAGES_MAX     400
#define NGX_HTTP_LLMSAFESPACE_SCRIPTS_MAX      16
#define NGX_HTTP_LLMSAFESPACE_SCRIPT_MAX       (64 * 1024)
#define NGX_HTTP_LLMSAFESPACE_DELAY_MAX        86400
/* the controller's LSC_TTL_MAX: 30 days */
#define NGX_HTTP_LLMSAFESPACE_TTL_MAX          2592000


#define NGX_HTTP_LLMSAFESPACE_POOL_TS(col)                                    \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* the controller's report, with zeros until its first one */
#define NGX_HTTP_LLMSAFESPACE_POOL_STATUS(t)                                  \
    "(jsonb_build_object('availablePods', 0, 'assignedPods', 0, "             \
    "'pendingPods', 0, 'lastScaleTime', NULL, 'conditions', '[]'::jsonb) "    \
    "|| " t "status)"

/* the API's pool object, as JSON text; t: the table's alias and a dot */
#define NGX_HTTP_LLMSAFESPACE_POOL_JSON(t)                                    \
    "json_build_object('id', " t "id, 'name', " t "name, "                    \
    "'runtime', " t "runtime, 'minSize', " t "min_size, "                     \
    "'maxSize', " t "max_size, 'securityLevel', " t "security_level, "        \
    "'preloadPackages', " t "preload_packages, "                              \
    "'preloadScripts', " t "preload_scripts, "                                \
    "'autoScaling', " t "auto_scaling, 'resources', " t "resources, "         \
    "'ttl', " t "ttl_s, 'source', " t "source, "                              \
    "'status', " NGX_HTTP_LLMSAFESPACE_POOL_STATUS(t) ", "                    \
    "'createdAt', " NGX_HTTP_LLMSAFESPACE_POOL_TS(t "created_at") ", "        \
    "'updatedAt', " NGX_HTTP_LLMSAFESPACE_POOL_TS(t "updated_at") ")::text"

/* {id} is a pool's id or its name; an id wins over a name that looks so */
#define NGX_HTTP_LLMSAFESPACE_POOL_WHERE                                      \
    "WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1"


typedef struct {
    const char                     *name;
    const char                     *runtime;
    const char                     *level;
    json_int_t                      min_size;
    json_int_t                      max_size;
    const char                     *packages;     /* JSON text, or NULL */
    const char                     *scripts;
    const char                     *autoscaling;
    const char                     *resources;    /* JSON text, or NULL */
    const char                     *ttl;          /* seconds, or NULL */
    ngx_uint_t                      ttl_given;    /* a patch's null too */
} ngx_http_llmsafespace_pool_t;


static ngx_int_t ngx_http_llmsafespace_pool_spec(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool,
    ngx_uint_t create);
static ngx_int_t ngx_http_llmsafespace_pool_name(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool);
static ngx_int_t ngx_http_llmsafespace_pool_runtime(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool);
static ngx_int_t ngx_http_llmsafespace_pool_int(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *obj, const char *key,
    const char *field, json_int_t min, json_int_t max, json_int_t *value);
static ngx_int_t ngx_http_llmsafespace_pool_packages(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool);
static ngx_int_t ngx_http_llmsafespace_pool_scripts(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool);
static ngx_int_t ngx_http_llmsafespace_pool_autoscaling(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool, ngx_uint_t create);
static ngx_int_t ngx_http_llmsafespace_pool_resources(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool, ngx_uint_t create);
static ngx_int_t ngx_http_llmsafespace_pool_ttl(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool);
static ngx_uint_t ngx_http_llmsafespace_pool_word(const char *s, size_t len);
static const char *ngx_http_llmsafespace_pool_text(ngx_http_request_t *r,
    json_t *json);
static json_t *ngx_http_llmsafespace_pool_json(PGresult *res, int row);
static ngx_int_t ngx_http_llmsafespace_pool_missing(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_warmpools_listed(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_warmpools_one(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_warmpools_created(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_warmpools_patched(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_warmpools_deleted(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);


static const char  ngx_http_llmsafespace_pools_list_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_POOL_JSON("") " FROM warm_pools "
    "ORDER BY name";

static const char  ngx_http_llmsafespace_pools_get_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_POOL_JSON("") " FROM warm_pools "
    NGX_HTTP_LLMSAFESPACE_POOL_WHERE;

static const char  ngx_http_llmsafespace_pools_status_sql[] =
    "SELECT " NGX_HTTP_LLMSAFESPACE_POOL_STATUS("") "::text FROM warm_pools "
    NGX_HTTP_LLMSAFESPACE_POOL_WHERE;

static const char  ngx_http_llmsafespace_pools_create_sql[] =
    "INSERT INTO warm_pools (name, runtime, min_size, max_size, "
    "security_level, preload_packages, preload_scripts, auto_scaling, "
    "resources, ttl_s, source) VALUES ($1, $2, $3::int, $4::int, $5, "
    "$6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, $10::int, 'api') "
    "RETURNING " NGX_HTTP_LLMSAFESPACE_POOL_JSON("");

/*
 * One row: the pool's source and sizes, and the changed pool unless it is
 * a manifest's or the sizes would cross.  The sizes are compared on the
 * row being updated, so two concurrent patches cannot cross them either.
 * autoScaling and resources are merged key by key; the lists are
 * replaced; ttl is set when given ($7), null included.
 */
static const char  ngx_http_llmsafespace_pools_patch_sql[] =
    "WITH p AS (SELECT id, source, min_size, max_size FROM warm_pools "
    NGX_HTTP_LLMSAFESPACE_POOL_WHERE "), "
    "u AS (UPDATE warm_pools w SET "
    "min_size = coalesce($2::int, w.min_size), "
    "max_size = coalesce($3::int, w.max_size), "
    "preload_packages = coalesce($4::jsonb, w.preload_packages), "
    "preload_scripts = coalesce($5::jsonb, w.preload_scripts), "
    "auto_scaling = w.auto_scaling || coalesce($6::jsonb, '{}'), "
    "resources = w.resources || coalesce($9::jsonb, '{}'), "
    "ttl_s = CASE WHEN $7 = 't' THEN $8::int ELSE w.ttl_s END, "
    "updated_at = now() "
    "FROM p WHERE w.id = p.id AND w.source = 'api' "
    "AND coalesce($2::int, w.min_size) <= coalesce($3::int, w.max_size) "
    "RETURNING " NGX_HTTP_LLMSAFESPACE_POOL_JSON("w.") " AS pool) "
    "SELECT p.source, p.min_size, p.max_size, u.pool "
    "FROM p LEFT JOIN u ON true";

static const char  ngx_http_llmsafespace_pools_delete_sql[] =
    "WITH p AS (SELECT id, source FROM warm_pools "
    NGX_HTTP_LLMSAFESPACE_POOL_WHERE "), "
    "d AS (DELETE FROM warm_pools w USING p "
    "WHERE w.id = p.id AND w.source = 'api' RETURNING w.id, w.name) "
    "SELECT p.source, d.id, d.name FROM p LEFT JOIN d ON true";


ngx_int_t
ngx_http_llmsafespace_warmpools_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
    }

    return ngx_http_llmsafespace_api_query(r, ctx,
                                     ngx_http_llmsafespace_pools_list_sql, 0,
                                     NULL,
                                     ngx_http_llmsafespace_warmpools_listed);
}


static ngx_int_t
ngx_http_llmsafespace_warmpools_listed(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    return ngx_http_llmsafespace_api_send_list(r, res, "warmPools",
                                           ngx_http_llmsafespace_pool_json);
}


ngx_int_t
ngx_http_llmsafespace_warmpools_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_api_query_id(r, ctx, id,
                                     ngx_http_llmsafespace_pools_get_sql,
                                     ngx_http_llmsafespace_warmpools_one,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
}


ngx_int_t
ngx_http_llmsafespace_warmpools_status(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_api_query_id(r, ctx, id,
                                     ngx_http_llmsafespace_pools_status_sql,
                                     ngx_http_llmsafespace_warmpools_one,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
}


/* a pool or its status: one JSON text column */

static ngx_int_t
ngx_http_llmsafespace_warmpools_one(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_pool_missing(r, ctx, res);
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                    ngx_http_llmsafespace_pool_json(res, 0));
}


ngx_int_t
ngx_http_llmsafespace_warmpools_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char                             *sizes;
    const char                         *values[10];
    ngx_http_llmsafespace_pool_t        pool;

    static const char  *fields[] = {
        "name", "runtime", "minSize", "maxSize", "securityLevel",
        "preloadPackages", "preloadScripts", "autoScaling", "resources",
        "ttl", NULL
    };

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
    }

    ngx_memzero(&pool, sizeof(ngx_http_llmsafespace_pool_t));

    pool.min_size = -1;
    pool.max_size = -1;

    if (ngx_http_llmsafespace_api_only(r, ctx, fields) != NGX_OK
        || ngx_http_llmsafespace_pool_name(r, ctx, &pool) != NGX_OK
        || ngx_http_llmsafespace_pool_spec(r, ctx, &pool, 1) != NGX_OK
        || ngx_http_llmsafespace_pool_runtime(r, ctx, &pool) != NGX_OK)
    {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    sizes = ngx_pnalloc(r->pool, 2 * NGX_INT64_LEN + 2);
    if (sizes == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = pool.name;
    values[1] = pool.runtime;
    values[2] = (const char *) sizes;
    sizes = ngx_sprintf(sizes, "%L%Z", (int64_t) pool.min_size);
    values[3] = (const char *) sizes;
    ngx_sprintf(sizes, "%L%Z", (int64_t) pool.max_size);
    values[4] = pool.level;
    values[5] = pool.packages ? pool.packages : "[]";
    values[6] = pool.scripts ? pool.scripts : "[]";
    values[7] = pool.autoscaling;
    values[8] = pool.resources;
    values[9] = pool.ttl;

    ctx->audit_object.data = (u_char *) pool.name;
    ctx->audit_object.len = ngx_strlen(pool.name);

    return ngx_http_llmsafespace_api_query(r, ctx,
                                   ngx_http_llmsafespace_pools_create_sql, 10,
                                   values,
                                   ngx_http_llmsafespace_warmpools_created);
}


static ngx_int_t
ngx_http_llmsafespace_warmpools_created(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json = ngx_http_llmsafespace_pool_json(res, 0);

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_CREATED, json);
}


ngx_int_t
ngx_http_llmsafespace_warmpools_patch(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    u_char                             *p, *pid;
    const char                         *key, *values[9];
    json_t                             *v;
    ngx_http_llmsafespace_pool_t        pool;

    static const char  *fields[] = {
        "minSize", "maxSize", "preloadPackages", "preloadScripts",
        "autoScaling", "resources", "ttl", NULL
    };

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
    }

    ctx->audit_object = *id;

    /* what a pool runs is fixed: a new runtime or level is a new pool */

    json_object_foreach(ctx->body, key, v) {
        if (ngx_strcmp(key, "name") == 0 || ngx_strcmp(key, "runtime") == 0
            || ngx_strcmp(key, "securityLevel") == 0)
        {
            ngx_http_llmsafespace_api_invalid(r, ctx, 422, key,
                                  "\"%s\" of a warm pool cannot be changed: "
                                  "create another pool", key);
            return ngx_http_llmsafespace_api_reject(r, ctx);
        }
    }

    ngx_memzero(&pool, sizeof(ngx_http_llmsafespace_pool_t));
    pool.min_size = -1;
    pool.max_size = -1;

    if (ngx_http_llmsafespace_api_only(r, ctx, fields) != NGX_OK
        || ngx_http_llmsafespace_pool_spec(r, ctx, &pool, 0) != NGX_OK)
    {
        return ngx_http_llmsafespace_api_reject(r, ctx);
    }

    p = ngx_pnalloc(r->pool, 2 * NGX_INT64_LEN + 2);
    pid = ngx_http_llmsafespace_api_cstr(r, id->data, id->len);

    if (p == NULL || pid == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (const char *) pid;
    values[1] = NULL;
    values[2] = NULL;

    if (pool.min_size >= 0) {
        values[1] = (const char *) p;
        p = ngx_sprintf(p, "%L%Z", (int64_t) pool.min_size);
    }

    if (pool.max_size >= 0) {
        values[2] = (const char *) p;
        ngx_sprintf(p, "%L%Z", (int64_t) pool.max_size);
    }

    values[3] = pool.packages;
    values[4] = pool.scripts;
    values[5] = pool.autoscaling;
    values[6] = pool.ttl_given ? "t" : "f";
    values[7] = pool.ttl;
    values[8] = pool.resources;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                    ngx_http_llmsafespace_pools_patch_sql, 9,
                                    values,
                                    ngx_http_llmsafespace_warmpools_patched);
}


static ngx_int_t
ngx_http_llmsafespace_warmpools_patched(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1
        || ngx_strcmp(PQgetvalue(res, 0, 0), "manifest") == 0)
    {
        return ngx_http_llmsafespace_pool_missing(r, ctx, res);
    }

    if (!PQgetisnull(res, 0, 3)) {
        json = json_loadb(PQgetvalue(res, 0, 3), PQgetlength(res, 0, 3), 0,
                          NULL);
        return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
    }

    /* an api pool left alone: the sizes would have crossed */

    ngx_http_llmsafespace_api_invalid(r, ctx, 422, "minSize",
                                      "\"minSize\" would exceed \"maxSize\" "
                                      "(the pool has minSize %s and "
                                      "maxSize %s)", PQgetvalue(res, 0, 1),
                                      PQgetvalue(res, 0, 2));

    return ngx_http_llmsafespace_api_reject(r, ctx);
}


ngx_int_t
ngx_http_llmsafespace_warmpools_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_api_query_id(r, ctx, id,
                                     ngx_http_llmsafespace_pools_delete_sql,
                                     ngx_http_llmsafespace_warmpools_deleted,
                                     NGX_HTTP_LLMSAFESPACE_POOLS_NO_PG);
}


/*
 * The controller sees the row gone within its reload period: it retires
 * the pool's unclaimed sandboxes and leaves the claimed ones to their
 * owners.
 */

static ngx_int_t
ngx_http_llmsafespace_warmpools_deleted(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    json_t  *json;

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 1)) {
        return ngx_http_llmsafespace_pool_missing(r, ctx, res);
    }

    json = json_pack("{s:o, s:o, s:b}",
                     "id", ngx_http_llmsafespace_api_value(res, 0, 1),
                     "name", ngx_http_llmsafespace_api_value(res, 0, 2),
                     "deleted", 1);

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, json);
}


/*
 * The answer for a row that is not there (404) or, for the patch and the
 * delete whose first column is the source, one that is a manifest's (409).
 */

static ngx_int_t
ngx_http_llmsafespace_pool_missing(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    if (PQntuples(res) == 0) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "warm pool %V not found",
                                                &ctx->audit_object);
    }

    if (ngx_strcmp(PQgetvalue(res, 0, 0), "manifest") == 0) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_CONFLICT,
                                                "conflict",
                                                "warm pool %V is defined by "
                                                "a manifest (conf/warmpools): "
                                                "change the file instead",
                                                &ctx->audit_object);
    }

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * The fields of a create (create = 1: with defaults) or of a patch (only
 * what is given).  Wrong types are 400, values out of range 422.
 */

static ngx_int_t
ngx_http_llmsafespace_pool_spec(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool,
    ngx_uint_t create)
{
    json_t  *v;

    if (ngx_http_llmsafespace_pool_int(r, ctx, ctx->body, "minSize",
                                       "minSize", 0,
                                       NGX_HTTP_LLMSAFESPACE_POOL_SIZE_MAX,
                                       &pool->min_size)
        != NGX_OK
        || ngx_http_llmsafespace_pool_int(r, ctx, ctx->body, "maxSize",
                                          "maxSize", 0,
                                          NGX_HTTP_LLMSAFESPACE_POOL_SIZE_MAX,
                                          &pool->max_size)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    /* a pool of one unless told otherwise: ready for the first create */

    if (create && pool->min_size < 0) {
        pool->min_size = (pool->max_size == 0) ? 0 : 1;
    }

    if (create && pool->max_size < 0) {
        pool->max_size = pool->min_size;
    }

    /* a patch giving both is checked here, one giving either in SQL */

    if (pool->min_size >= 0 && pool->max_size >= 0
        && pool->min_size > pool->max_size)
    {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "minSize",
                                    "\"minSize\" (%L) must not exceed "
                                    "\"maxSize\" (%L)",
                                    (int64_t) pool->min_size,
                                    (int64_t) pool->max_size);
    }

    v = json_object_get(ctx->body, "preloadPackages");

    if (v && !json_is_null(v)
        && ngx_http_llmsafespace_pool_packages(r, ctx, v, pool) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    v = json_object_get(ctx->body, "preloadScripts");

    if (v && !json_is_null(v)
        && ngx_http_llmsafespace_pool_scripts(r, ctx, v, pool) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    v = json_object_get(ctx->body, "autoScaling");

    if (v && json_is_null(v)) {
        v = NULL;
    }

    if ((v || create)
        && ngx_http_llmsafespace_pool_autoscaling(r, ctx, v, pool, create)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    v = json_object_get(ctx->body, "resources");

    if (v && json_is_null(v)) {
        v = NULL;
    }

    if ((v || create)
        && ngx_http_llmsafespace_pool_resources(r, ctx, v, pool, create)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    return ngx_http_llmsafespace_pool_ttl(r, ctx, pool);
}


/* the table's CHECK, one character shorter (see POOL_NAME_MAX) */

static ngx_int_t
ngx_http_llmsafespace_pool_name(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool)
{
    size_t       i, n;
    const char  *s;

    if (ngx_http_llmsafespace_api_string(r, ctx, "name", 1,
                                         NGX_HTTP_LLMSAFESPACE_POOL_NAME_MAX,
                                         &s)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    n = ngx_strlen(s);

    for (i = 0; i < n; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')
              || (s[i] == '-' && i > 0 && i < n - 1)))
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "name",
                                    "\"name\" may hold only lowercase "
                                    "letters, digits and inner hyphens");
        }
    }

    pool->name = s;

    return NGX_OK;
}


/*
 * The runtime must be one the controller finds; the pool records its
 * descriptor's name, whichever of its names the request gave.
 */

static ngx_int_t
ngx_http_llmsafespace_pool_runtime(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool)
{
    size_t                              i;
    json_t                             *rt, *levels, *l;
    const char                         *name;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (ngx_http_llmsafespace_api_string(r, ctx, "runtime", 1, 64, &name)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    rt = ngx_http_llmsafespace_runtime_find(lmcf, name);

    if (rt == NULL) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "runtime",
                                    "unknown runtime \"%s\" (see GET "
                                    "/api/v1/runtimes)", name);
    }

    pool->runtime = json_string_value(json_object_get(rt, "name"));

    if (ngx_http_llmsafespace_api_string(r, ctx, "securityLevel", 0, 16,
                                         &pool->level)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    if (pool->level == NULL) {
        pool->level = "standard";

    } else if (ngx_strcmp(pool->level, "standard") != 0
               && ngx_strcmp(pool->level, "high") != 0)
    {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "securityLevel", "\"securityLevel\" "
                                    "must be \"standard\" or \"high\"");
    }

    /* a descriptor that lists its levels is taken at its word */

    levels = json_object_get(rt, "securityLevels");

    if (!json_is_array(levels)) {
        return NGX_OK;
    }

    json_array_foreach(levels, i, l) {
        if (json_is_string(l)
            && ngx_strcmp(json_string_value(l), pool->level) == 0)
        {
            return NGX_OK;
        }
    }

    return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "securityLevel",
                                    "runtime \"%s\" does not run at "
                                    "securityLevel \"%s\"", pool->runtime,
                                    pool->level);
}


/* an absent or null field leaves *value as it is */

static ngx_int_t
ngx_http_llmsafespace_pool_int(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *obj, const char *key,
    const char *field, json_int_t min, json_int_t max, json_int_t *value)
{
    json_t      *v;
    json_int_t   n;

    v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        return NGX_OK;
    }

    if (!json_is_integer(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    field, "field \"%s\" must be an integer",
                                    field);
    }

    n = json_integer_value(v);

    if (n < min || n > max) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, field,
                                    "field \"%s\" must be %L to %L", field,
                                    (int64_t) min, (int64_t) max);
    }

    *value = n;

    return NGX_OK;
}


/* names the controller passes to the runner as "a,b,c" */

static ngx_int_t
ngx_http_llmsafespace_pool_packages(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool)
{
    size_t   i, len, n;
    json_t  *p;

    if (!json_is_array(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    "preloadPackages", "\"preloadPackages\" "
                                    "must be an array of strings");
    }

    len = 0;

    json_array_foreach(v, i, p) {

        if (!json_is_string(p)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "preloadPackages",
                                    "\"preloadPackages\" must be an array "
                                    "of strings");
        }

        n = json_string_length(p);

        if (!ngx_http_llmsafespace_pool_word(json_string_value(p), n)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadPackages", "preloadPackages[%uz] "
                                    "must be a package name: 1 to %d of "
                                    "[A-Za-z0-9._-]", i,
                                    NGX_HTTP_LLMSAFESPACE_PACKAGE_MAX);
        }

        /* the controller's rule for its buffer, to the byte */

        if (len + n + 2 > NGX_HTTP_LLMSAFESPACE_PACKAGES_MAX) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadPackages", "\"preloadPackages\" "
                                    "may hold at most %d characters, "
                                    "joined by commas",
                                    NGX_HTTP_LLMSAFESPACE_PACKAGES_MAX - 1);
        }

        len += n + (len ? 1 : 0);
    }

    pool->packages = ngx_http_llmsafespace_pool_text(r, v);

    return pool->packages ? NGX_OK : NGX_ERROR;
}


/* [{name, content}]: the runner runs each in its warm interpreters */

static ngx_int_t
ngx_http_llmsafespace_pool_scripts(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool)
{
    size_t       i, k;
    json_t      *s, *name, *content;
    const char  *key;

    if (!json_is_array(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    "preloadScripts", "\"preloadScripts\" "
                                    "must be an array of objects");
    }

    if (json_array_size(v) > NGX_HTTP_LLMSAFESPACE_SCRIPTS_MAX) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadScripts", "\"preloadScripts\" "
                                    "may hold at most %d scripts",
                                    NGX_HTTP_LLMSAFESPACE_SCRIPTS_MAX);
    }

    json_array_foreach(v, i, s) {

        if (!json_is_object(s)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "preloadScripts",
                                    "\"preloadScripts\" must be an array "
                                    "of objects");
        }

        json_object_foreach(s, key, content) {
            if (ngx_strcmp(key, "name") != 0
                && ngx_strcmp(key, "content") != 0)
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadScripts", "unknown field "
                                    "\"%s\" in preloadScripts[%uz]", key, i);
            }
        }

        name = json_object_get(s, "name");
        content = json_object_get(s, "content");

        if (!json_is_string(name) || !json_is_string(content)) {
            return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_BAD_REQUEST, "preloadScripts",
                                    "preloadScripts[%uz] needs a string "
                                    "\"name\" and a string \"content\"", i);
        }

        if (!ngx_http_llmsafespace_pool_word(json_string_value(name),
                                             json_string_length(name)))
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadScripts", "preloadScripts[%uz] "
                                    "name must be 1 to %d of "
                                    "[A-Za-z0-9._-]", i,
                                    NGX_HTTP_LLMSAFESPACE_PACKAGE_MAX);
        }

        /* each is a file named after it in the sandbox's run dir */

        for (k = 0; k < i; k++) {
            if (ngx_strcmp(json_string_value(name),
                           json_string_value(json_object_get(
                               json_array_get(v, k), "name")))
                == 0)
            {
                return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadScripts", "preloadScripts[%uz] "
                                    "repeats the name of preloadScripts[%uz]",
                                    i, k);
            }
        }

        if (json_string_length(content) > NGX_HTTP_LLMSAFESPACE_SCRIPT_MAX
            || ngx_strlen(json_string_value(content))
               != json_string_length(content))
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "preloadScripts", "preloadScripts[%uz] "
                                    "content must be at most %d bytes, "
                                    "without NUL", i,
                                    NGX_HTTP_LLMSAFESPACE_SCRIPT_MAX);
        }
    }

    pool->scripts = ngx_http_llmsafespace_pool_text(r, v);

    return pool->scripts ? NGX_OK : NGX_ERROR;
}


/*
 * {enabled, targetUtilization (percent), scaleDownDelay (seconds)}.  A
 * create stores every key (the controller's defaults where not given), so
 * the pool object shows what applies; a patch gives only what changes.
 */

static ngx_int_t
ngx_http_llmsafespace_pool_autoscaling(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool, ngx_uint_t create)
{
    json_t      *out, *e;
    ngx_int_t    rc;
    json_int_t   target, delay;
    const char  *key;

    if (v && !json_is_object(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    "autoScaling", "\"autoScaling\" must be "
                                    "an object");
    }

    json_object_foreach(v, key, e) {
        if (ngx_strcmp(key, "enabled") != 0
            && ngx_strcmp(key, "targetUtilization") != 0
            && ngx_strcmp(key, "scaleDownDelay") != 0)
        {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422,
                                    "autoScaling", "unknown field \"%s\" in "
                                    "\"autoScaling\"", key);
        }
    }

    e = json_object_get(v, "enabled");

    if (e && !json_is_boolean(e)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    "autoScaling.enabled",
                                    "field \"autoScaling.enabled\" must be "
                                    "a boolean");
    }

    target = create ? 80 : -1;
    delay = create ? 300 : -1;

    if (ngx_http_llmsafespace_pool_int(r, ctx, v, "targetUtilization",
                                       "autoScaling.targetUtilization", 1,
                                       100, &target)
        != NGX_OK
        || ngx_http_llmsafespace_pool_int(r, ctx, v, "scaleDownDelay",
                                          "autoScaling.scaleDownDelay", 0,
                                          NGX_HTTP_LLMSAFESPACE_DELAY_MAX,
                                          &delay)
           != NGX_OK)
    {
        return NGX_DECLINED;
    }

    out = json_object();
    if (out == NULL) {
        return NGX_ERROR;
    }

    rc = 0;

    if (e || create) {
        rc |= json_object_set_new(out, "enabled",
                                  json_boolean(json_is_true(e)));
    }

    if (target >= 0) {
        rc |= json_object_set_new(out, "targetUtilization",
                                  json_integer(target));
    }

    if (delay >= 0) {
        rc |= json_object_set_new(out, "scaleDownDelay", json_integer(delay));
    }

    pool->autoscaling = rc ? NULL : ngx_http_llmsafespace_pool_text(r, out);

    json_decref(out);

    return pool->autoscaling ? NGX_OK : NGX_ERROR;
}


/*
 * {cpu, memory, ephemeralStorage}, checked as a create's are, within the
 * bounds the controller gives a sandbox: the pool shows what its
 * sandboxes get, and the controller refuses a pool outside them.  Stored
 * as numbers (cores, bytes), which the plan of a create compares with
 * what it asks; a create stores cpu and memory always (the controller's
 * defaults where not given), a patch what changes.
 */

static ngx_int_t
ngx_http_llmsafespace_pool_resources(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v,
    ngx_http_llmsafespace_pool_t *pool, ngx_uint_t create)
{
    int      rc;
    double   res[NGX_HTTP_LLMSAFESPACE_RES_N], cpu, memory, storage;
    json_t  *out;

    if (ngx_http_llmsafespace_check_resources(r, ctx, v, res) != NGX_OK
        || ngx_http_llmsafespace_check_bounds(r, ctx, res) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    cpu = res[NGX_HTTP_LLMSAFESPACE_RES_CPU];
    memory = res[NGX_HTTP_LLMSAFESPACE_RES_MEMORY];
    storage = res[NGX_HTTP_LLMSAFESPACE_RES_STORAGE];

    if (create && cpu < 0) {
        cpu = NGX_HTTP_LLMSAFESPACE_CPU_DEFAULT;
    }

    if (create && memory < 0) {
        memory = NGX_HTTP_LLMSAFESPACE_MEMORY_DEFAULT;
    }

    out = json_object();
    if (out == NULL) {
        return NGX_ERROR;
    }

    rc = 0;

    if (cpu >= 0) {
        rc |= json_object_set_new(out, "cpu",
                                  cpu == (double) (int64_t) cpu
                                  ? json_integer((json_int_t) cpu)
                                  : json_real(cpu));
    }

    if (memory >= 0) {
        rc |= json_object_set_new(out, "memory",
                                  json_integer((json_int_t) memory));
    }

    if (storage >= 0) {
        rc |= json_object_set_new(out, "ephemeralStorage",
                                  json_integer((json_int_t) storage));
    }

    pool->resources = rc ? NULL : ngx_http_llmsafespace_pool_text(r, out);

    json_decref(out);

    return pool->resources ? NGX_OK : NGX_ERROR;
}


/* seconds; null is no ttl (a patch's null removes the pool's) */

static ngx_int_t
ngx_http_llmsafespace_pool_ttl(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_pool_t *pool)
{
    u_char      *p;
    json_int_t   ttl;

    if (json_object_get(ctx->body, "ttl") == NULL) {
        return NGX_OK;
    }

    pool->ttl_given = 1;
    ttl = -1;

    if (ngx_http_llmsafespace_pool_int(r, ctx, ctx->body, "ttl", "ttl", 1,
                                       NGX_HTTP_LLMSAFESPACE_TTL_MAX, &ttl)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    if (ttl < 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(p, "%L%Z", (int64_t) ttl);
    pool->ttl = (const char *) p;

    return NGX_OK;
}


/* the controller's lsc_valid_package(), for packages and script names */

static ngx_uint_t
ngx_http_llmsafespace_pool_word(const char *s, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_HTTP_LLMSAFESPACE_PACKAGE_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!(isalnum((u_char) s[i]) || s[i] == '.' || s[i] == '_'
              || s[i] == '-'))
        {
            return 0;
        }
    }

    return 1;
}


/* a query parameter: compact JSON text in the request's pool */

static const char *
ngx_http_llmsafespace_pool_text(ngx_http_request_t *r, json_t *json)
{
    char    *p;
    size_t   len;

    /* 15 digits: a cpu of 0.1 is written "0.1", not its nearest double */

    len = json_dumpb(json, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (len == 0) {
        return NULL;
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    if (json_dumpb(json, p, len, JSON_COMPACT | JSON_REAL_PRECISION(15))
        != len)
    {
        return NULL;
    }

    p[len] = '\0';

    return p;
}


/* the first column: JSON text made by PostgreSQL */

static json_t *
ngx_http_llmsafespace_pool_json(PGresult *res, int row)
{
    return json_loadb(PQgetvalue(res, row, 0), PQgetlength(res, row, 0), 0,
                      NULL);
}
