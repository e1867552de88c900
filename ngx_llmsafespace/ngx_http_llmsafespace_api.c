
/*
 * Copyright (C) LLMSafeSpace
 *
 * The REST API under /api/v1: the route table, method and role checks,
 * JSON request bodies, and the glue that lets a handler wait for
 * PostgreSQL and finish the request from the query's callback.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"


#define NGX_HTTP_LLMSAFESPACE_PREFIX      "/api/v1"
#define NGX_HTTP_LLMSAFESPACE_SEGMENTS    5
#define NGX_HTTP_LLMSAFESPACE_ID_MAX      64
#define NGX_HTTP_LLMSAFESPACE_LIST_MAX    1000


typedef struct {
    ngx_uint_t                      method;
    const char                     *path;     /* "*" matches one id */
    ngx_http_llmsafespace_route_pt  handler;
    ngx_uint_t                      admin;
    const char                     *action;   /* audit, for mutations */
} ngx_http_llmsafespace_route_t;


typedef struct {
    ngx_http_llmsafespace_query_done_pt  done;
} ngx_http_llmsafespace_query_ctx_t;


static ngx_int_t ngx_http_llmsafespace_api_split(ngx_http_request_t *r,
    ngx_str_t *segments, ngx_uint_t *n);
static ngx_int_t ngx_http_llmsafespace_api_match(const char *path,
    ngx_str_t *segments, ngx_uint_t n, ngx_str_t *id);
static ngx_int_t ngx_http_llmsafespace_api_dispatch(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);
static void ngx_http_llmsafespace_api_body_handler(ngx_http_request_t *r);
static void ngx_http_llmsafespace_api_query_done(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_llmsafespace_api_redis_done(void *data,
    redisReply *reply, ngx_int_t rc);


static ngx_http_llmsafespace_route_t  ngx_http_llmsafespace_routes[] = {

    { NGX_HTTP_GET, "/user",
      ngx_http_llmsafespace_user_get, 0, NULL },

    { NGX_HTTP_GET, "/user/apikeys",
      ngx_http_llmsafespace_apikeys_list, 0, NULL },

    { NGX_HTTP_POST, "/user/apikeys",
      ngx_http_llmsafespace_apikeys_create, 0, "apikey.create" },

    { NGX_HTTP_DELETE, "/user/apikeys/*",
      ngx_http_llmsafespace_apikeys_delete, 0, "apikey.revoke" },

    { NGX_HTTP_GET, "/users",
      ngx_http_llmsafespace_users_list, 1, NULL },

    { NGX_HTTP_POST, "/users",
      ngx_http_llmsafespace_users_create, 1, "user.create" },

    { NGX_HTTP_GET, "/users/*",
      ngx_http_llmsafespace_users_get, 1, NULL },

    { NGX_HTTP_DELETE, "/users/*",
      ngx_http_llmsafespace_users_delete, 1, "user.delete" },

    { NGX_HTTP_GET, "/sandboxes",
      ngx_http_llmsafespace_sandboxes_list, 0, NULL },

    { NGX_HTTP_POST, "/sandboxes",
      ngx_http_llmsafespace_sandboxes_create, 0, "sandbox.create" },

    { NGX_HTTP_GET, "/sandboxes/*",
      ngx_http_llmsafespace_sandboxes_get, 0, NULL },

    { NGX_HTTP_DELETE, "/sandboxes/*",
      ngx_http_llmsafespace_sandboxes_delete, 0, "sandbox.delete" },

    { NGX_HTTP_GET, "/sandboxes/*/status",
      ngx_http_llmsafespace_sandboxes_status, 0, NULL },

    { NGX_HTTP_GET, "/warmpools",
      ngx_http_llmsafespace_warmpools_list, 1, NULL },

    { NGX_HTTP_POST, "/warmpools",
      ngx_http_llmsafespace_warmpools_create, 1, "warmpool.create" },

    { NGX_HTTP_GET, "/warmpools/*",
      ngx_http_llmsafespace_warmpools_get, 1, NULL },

    { NGX_HTTP_PATCH, "/warmpools/*",
      ngx_http_llmsafespace_warmpools_patch, 1, "warmpool.update" },

    { NGX_HTTP_DELETE, "/warmpools/*",
      ngx_http_llmsafespace_warmpools_delete, 1, "warmpool.delete" },

    { NGX_HTTP_GET, "/warmpools/*/status",
      ngx_http_llmsafespace_warmpools_status, 1, NULL },

    { NGX_HTTP_GET, "/runtimes",
      ngx_http_llmsafespace_runtimes_list, 0, NULL },

    { NGX_HTTP_GET, "/runtimes/*",
      ngx_http_llmsafespace_runtimes_get, 0, NULL },

    { NGX_HTTP_GET, "/profiles",
      ngx_http_llmsafespace_profiles_list, 0, NULL },

    { NGX_HTTP_GET, "/profiles/*",
      ngx_http_llmsafespace_profiles_get, 0, NULL },

    { 0, NULL, NULL, 0, NULL }
};


static ngx_str_t  ngx_http_llmsafespace_method_names[] = {
    ngx_string("GET"), ngx_string("POST"), ngx_string("PUT"),
    ngx_string("PATCH"), ngx_string("DELETE")
};

static ngx_uint_t  ngx_http_llmsafespace_methods[] = {
    NGX_HTTP_GET, NGX_HTTP_POST, NGX_HTTP_PUT, NGX_HTTP_PATCH,
    NGX_HTTP_DELETE
};


ngx_int_t
ngx_http_llmsafespace_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_http_llmsafespace_ctx_t       *ctx;
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);

    if (ctx == NULL || !ctx->authenticated) {
        /* the access handler always runs first in API locations */
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* execution traffic goes to the runner with its body unread */

    rc = ngx_http_llmsafespace_proxy(r, ctx);

    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH)) {

        llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

        if (r->headers_in.content_length_n > (off_t) llcf->max_body_size
            || (r->headers_in.chunked && llcf->max_body_size == 0))
        {
            return ngx_http_llmsafespace_send_error(r,
                                    NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "payload_too_large",
                                    "JSON bodies are limited to %uz bytes",
                                    llcf->max_body_size);
        }

        rc = ngx_http_read_client_request_body(r,
                                      ngx_http_llmsafespace_api_body_handler);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_llmsafespace_api_dispatch(r, ctx);
}


static void
ngx_http_llmsafespace_api_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_http_llmsafespace_ctx_t       *ctx;
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    rc = ngx_http_llmsafespace_api_parse_body(r, ctx, llcf->max_body_size);

    if (rc == NGX_OK) {
        rc = ngx_http_llmsafespace_api_dispatch(r, ctx);

    } else if (rc == NGX_DECLINED) {
        rc = ngx_http_llmsafespace_api_reject(r, ctx);
    }

    ngx_http_finalize_request(r, rc);
}


/*
 * The body is JSON of at most "max" bytes (a chunked one is only counted
 * once read), in memory or in a temporary file; it must be an object.  An
 * empty body is an empty object, so "POST /user/apikeys" needs none.
 */

ngx_int_t
ngx_http_llmsafespace_api_parse_body(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, size_t max)
{
    u_char        *p, *data;
    off_t          len;
    ssize_t        n;
    json_t        *json;
    ngx_buf_t     *b;
    ngx_chain_t   *cl;
    json_error_t   err;

    len = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            len += ngx_buf_size(cl->buf);
        }
    }

    if (len > (off_t) max) {
        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                    NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                                    "JSON bodies are limited to %uz bytes",
                                    max);
    }

    if (len == 0) {
        ctx->body = json_object();
        return ctx->body ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    data = ngx_pnalloc(r->pool, len);
    if (data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                              b->file_pos);
            if (n != b->file_last - b->file_pos) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, b->pos, b->last - b->pos);
    }

    json = json_loadb((char *) data, p - data, JSON_REJECT_DUPLICATES, &err);

    if (json == NULL) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                 NULL, "invalid JSON at line %d column %d: %s",
                                 err.line, err.column, err.text);
    }

    if (!json_is_object(json)) {
        json_decref(json);
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                 NULL, "the request body must be a JSON "
                                 "object");
    }

    ctx->body = json;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_api_dispatch(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    u_char                         *p, allow[64];
    ngx_str_t                       segments[NGX_HTTP_LLMSAFESPACE_SEGMENTS];
    ngx_str_t                       id;
    ngx_uint_t                      n, i, path_found;
    ngx_table_elt_t                *h;
    ngx_http_llmsafespace_route_t  *route;

    if (ngx_http_llmsafespace_api_split(r, segments, &n) != NGX_OK) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "no such API route");
    }

    path_found = 0;
    p = allow;

    for (route = ngx_http_llmsafespace_routes; route->path; route++) {

        if (ngx_http_llmsafespace_api_match(route->path, segments, n, &id)
            != NGX_OK)
        {
            continue;
        }

        if (route->method != r->method) {
            path_found = 1;

            for (i = 0; i < 5; i++) {
                if (ngx_http_llmsafespace_methods[i] == route->method
                    && p + 8 < allow + sizeof(allow))
                {
                    if (p != allow) {
                        *p++ = ',';
                        *p++ = ' ';
                    }

                    p = ngx_cpymem(p,
                                   ngx_http_llmsafespace_method_names[i].data,
                                   ngx_http_llmsafespace_method_names[i].len);
                }
            }

            continue;
        }

        if (route->admin
            && ctx->identity.role != NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN)
        {
            return ngx_http_llmsafespace_send_error(r, NGX_HTTP_FORBIDDEN,
                                                    "forbidden",
                                                    "admin role required");
        }

        ctx->audit_action = route->action;

        return route->handler(r, ctx, &id);
    }

    if (path_found) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        h->value.len = p - allow;
        h->value.data = ngx_pnalloc(r->pool, h->value.len);

        if (h->value.data == NULL) {
            h->hash = 0;
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(h->value.data, allow, h->value.len);

        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                                "method_not_allowed",
                                                "method %V not allowed here",
                                                &r->method_name);
    }

    return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "not_found", "no such API route");
}


/*
 * "/api/v1/users/usr-x" -> ["users", "usr-x"]; a trailing slash is
 * ignored.  Segments are nginx's decoded URI, so ids are checked to be
 * plain [A-Za-z0-9_-] before anything uses them.
 */

static ngx_int_t
ngx_http_llmsafespace_api_split(ngx_http_request_t *r, ngx_str_t *segments,
    ngx_uint_t *n)
{
    u_char  *p, *last, *start;

    p = r->uri.data;
    last = p + r->uri.len;

    if (r->uri.len < sizeof(NGX_HTTP_LLMSAFESPACE_PREFIX) - 1
        || ngx_strncmp(p, NGX_HTTP_LLMSAFESPACE_PREFIX,
                       sizeof(NGX_HTTP_LLMSAFESPACE_PREFIX) - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    p += sizeof(NGX_HTTP_LLMSAFESPACE_PREFIX) - 1;
    *n = 0;

    while (p < last) {

        if (*p != '/') {
            return NGX_DECLINED;
        }

        p++;
        start = p;

        while (p < last && *p != '/') {
            p++;
        }

        if (p == start) {
            if (p == last) {
                break;          /* trailing slash */
            }

            return NGX_DECLINED;
        }

        if (*n == NGX_HTTP_LLMSAFESPACE_SEGMENTS) {
            return NGX_DECLINED;
        }

        segments[*n].data = start;
        segments[*n].len = p - start;
        (*n)++;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_api_match(const char *path, ngx_str_t *segments,
    ngx_uint_t n, ngx_str_t *id)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i, k;

    id->len = 0;
    id->data = NULL;

    p = (u_char *) path;

    for (i = 0; i < n; i++) {

        if (*p != '/') {
            return NGX_DECLINED;
        }

        p++;

        len = 0;
        while (p[len] && p[len] != '/') {
            len++;
        }

        if (len == 1 && p[0] == '*') {

            if (segments[i].len == 0
                || segments[i].len > NGX_HTTP_LLMSAFESPACE_ID_MAX)
            {
                return NGX_DECLINED;
            }

            for (k = 0; k < segments[i].len; k++) {
                /* ':' and '.' for runtime names ("python:3.11") */
                if (!(isalnum(segments[i].data[k])
                      || segments[i].data[k] == '-'
                      || segments[i].data[k] == '_'
                      || segments[i].data[k] == '.'
                      || segments[i].data[k] == ':'))
                {
                    return NGX_DECLINED;
                }
            }

            *id = segments[i];

        } else if (len != segments[i].len
                   || ngx_strncmp(p, segments[i].data, len) != 0)
        {
            return NGX_DECLINED;
        }

        p += len;
    }

    return (*p == '\0') ? NGX_OK : NGX_DECLINED;
}


void
ngx_http_llmsafespace_api_classify(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    ngx_str_t   segments[NGX_HTTP_LLMSAFESPACE_SEGMENTS];
    ngx_uint_t  n;

    if (ngx_http_llmsafespace_api_split(r, segments, &n) != NGX_OK
        || n == 0
        || segments[0].len != sizeof("sandboxes") - 1
        || ngx_strncmp(segments[0].data, "sandboxes", segments[0].len) != 0)
    {
        return;
    }

    if (n == 1) {
        if (r->method == NGX_HTTP_POST) {
            ctx->route_class = NGX_HTTP_LLMSAFESPACE_CLASS_CREATE;
        }

        return;
    }

    if (segments[1].len <= NGX_HTTP_LLMSAFESPACE_ID_MAX) {
        ctx->sandbox_id = segments[1];
    }

    /* the one route that may take its key in the query */
    ctx->stream = (n == 3 && r->method == NGX_HTTP_GET
                   && segments[2].len == 6
                   && ngx_strncmp(segments[2].data, "stream", 6) == 0);

    if (n >= 3
        && ((segments[2].len == 7
             && ngx_strncmp(segments[2].data, "execute", 7) == 0)
            || (segments[2].len == 6
                && ngx_strncmp(segments[2].data, "stream", 6) == 0)
            || (segments[2].len == 8
                && ngx_strncmp(segments[2].data, "packages", 8) == 0)))
    {
        ctx->route_class = NGX_HTTP_LLMSAFESPACE_CLASS_EXECUTE;
    }
}


/*
 * Starts a query for a route handler.  Returns NGX_DONE when the query is
 * on its way (the request is kept alive and "done" answers it later), or
 * the rc of the error answer when it could not even be queued.
 */

ngx_int_t
ngx_http_llmsafespace_api_query(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *sql, int nparams,
    const char *const *values, ngx_http_llmsafespace_query_done_pt done)
{
    ngx_http_llmsafespace_pg_query_t  *q;

    q = ngx_http_llmsafespace_pg_query(sql, nparams, values,
                                       ngx_http_llmsafespace_api_query_done,
                                       r);
    if (q == NULL) {
        return ngx_http_llmsafespace_send_error(r,
                                      NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "unavailable",
                                      "the database is unavailable, "
                                      "retry later");
    }

    ctx->pg_query = q;
    ctx->query_done = done;

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_llmsafespace_api_query_done(void *data, PGresult *res,
    ngx_int_t rc)
{
    ngx_http_request_t *r = data;

    char                         *state;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_llmsafespace_get_ctx(r);
    ctx->pg_query = NULL;

    if (rc == NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT) {
        rc = ngx_http_llmsafespace_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "unavailable",
                                              "the database did not answer "
                                              "in time, retry later");

    } else if (rc != NGX_OK) {
        rc = ngx_http_llmsafespace_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "unavailable",
                                              "the database is unavailable, "
                                              "retry later");

    } else if (PQresultStatus(res) == PGRES_FATAL_ERROR) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        if (state && ngx_strcmp(state, "23505") == 0) {
            rc = ngx_http_llmsafespace_send_error(r, NGX_HTTP_CONFLICT,
                                                  "conflict",
                                                  "already exists");

        } else {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llmsafespace: query failed: %s",
                          PQresultErrorMessage(res));

            rc = ngx_http_llmsafespace_send_error(r,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "internal", "internal error");
        }

    } else {
        rc = ctx->query_done(r, ctx, res);
    }

    ngx_http_llmsafespace_api_finish(r, rc);
}


/*
 * Sends a Redis command for a route handler, like the query glue above:
 * NGX_DONE and "done" answers later, or the rc of a 503 answer.
 */

ngx_int_t
ngx_http_llmsafespace_api_redis(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, int argc, const char **argv,
    const size_t *argvlen, ngx_http_llmsafespace_redis_done_pt done)
{
    ngx_http_llmsafespace_redis_cmd_t  *cmd;

    cmd = ngx_http_llmsafespace_redis_command(argc, argv, argvlen,
                                        ngx_http_llmsafespace_api_redis_done,
                                        r);
    if (cmd == NULL) {
        return ngx_http_llmsafespace_send_error(r,
                                      NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "unavailable",
                                      "Redis is unavailable, retry later");
    }

    ctx->redis_cmd = cmd;
    ctx->redis_done = done;

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_llmsafespace_api_redis_done(void *data, redisReply *reply,
    ngx_int_t rc)
{
    ngx_http_request_t *r = data;

    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_llmsafespace_get_ctx(r);
    ctx->redis_cmd = NULL;

    if (rc != NGX_OK) {
        rc = ngx_http_llmsafespace_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              "unavailable",
                                              "Redis did not answer, "
                                              "retry later");

    } else if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: redis command failed: %*s",
                      (size_t) reply->len, reply->str);

        rc = ngx_http_llmsafespace_send_error(r,
                                       NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "internal", "internal error");

    } else {
        rc = ctx->redis_done(r, ctx, reply);
    }

    ngx_http_llmsafespace_api_finish(r, rc);
}


void
ngx_http_llmsafespace_api_finish(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/*
 * Records why a request body is refused; the handler answers with
 * ngx_http_llmsafespace_api_reject().  Returns NGX_DECLINED.
 */

ngx_int_t
ngx_http_llmsafespace_api_invalid(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *field,
    const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    p = ngx_pnalloc(r->pool, 512);
    if (p == NULL) {
        return NGX_ERROR;
    }

    va_start(args, fmt);
    ctx->error_message.data = p;
    ctx->error_message.len = ngx_vslprintf(p, p + 512, fmt, args) - p;
    va_end(args);

    ctx->invalid_status = status;
    ctx->invalid_field = field;

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_llmsafespace_api_reject(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    if (ctx->invalid_status == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_field_error(r, ctx->invalid_status,
                                                  ctx->invalid_field,
                                                  &ctx->error_message);
}


/* JSON body helpers: wrong types are 400, values out of range 422 */

ngx_int_t
ngx_http_llmsafespace_api_string(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *field,
    ngx_uint_t required, size_t max, const char **value)
{
    json_t  *v;

    *value = NULL;

    v = json_object_get(ctx->body, field);

    if (v == NULL || json_is_null(v)) {
        if (required) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, field,
                                        "field \"%s\" is required", field);
        }

        return NGX_OK;
    }

    if (!json_is_string(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, NGX_HTTP_BAD_REQUEST,
                                    field, "field \"%s\" must be a string",
                                    field);
    }

    if (json_string_length(v) == 0 || json_string_length(v) > max) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, field,
                                    "field \"%s\" must be 1 to %uz "
                                    "characters", field, max);
    }

    if (ngx_strlen(json_string_value(v)) != json_string_length(v)) {
        return ngx_http_llmsafespace_api_invalid(r, ctx, 422, field,
                                    "field \"%s\" must not contain NUL",
                                    field);
    }

    *value = json_string_value(v);

    return NGX_OK;
}


/* fields a handler does not know are refused, never silently ignored */

ngx_int_t
ngx_http_llmsafespace_api_only(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char **fields)
{
    const char  *key, **f;
    json_t      *v;

    json_object_foreach(ctx->body, key, v) {

        for (f = fields; *f; f++) {
            if (ngx_strcmp(key, *f) == 0) {
                break;
            }
        }

        if (*f == NULL) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, key,
                                        "unknown field \"%s\"", key);
        }
    }

    return NGX_OK;
}


/* query parameters are C strings */

u_char *
ngx_http_llmsafespace_api_cstr(ngx_http_request_t *r, u_char *data, size_t len)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_cpymem(p, data, len) = '\0';

    return p;
}


json_t *
ngx_http_llmsafespace_api_value(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col)) {
        return json_null();
    }

    return json_stringn(PQgetvalue(res, row, col),
                        PQgetlength(res, row, col));
}


ngx_int_t
ngx_http_llmsafespace_api_page(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, u_char *limit, u_char *offset)
{
    ngx_int_t  l, o;
    ngx_str_t  v;

    l = 100;
    o = 0;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &v) == NGX_OK) {
        l = ngx_atoi(v.data, v.len);

        if (l < 1 || l > NGX_HTTP_LLMSAFESPACE_LIST_MAX) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "limit",
                                       "\"limit\" must be 1 to %d",
                                       NGX_HTTP_LLMSAFESPACE_LIST_MAX);
        }
    }

    if (ngx_http_arg(r, (u_char *) "offset", 6, &v) == NGX_OK) {
        o = ngx_atoi(v.data, v.len);

        if (o < 0 || o > 1000000000) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, "offset",
                                       "\"offset\" must be a number "
                                       "from 0");
        }
    }

    *ngx_sprintf(limit, "%i", l) = '\0';
    *ngx_sprintf(offset, "%i", o) = '\0';

    return NGX_OK;
}


/* {"<name>": [row, ...]} */

ngx_int_t
ngx_http_llmsafespace_api_send_list(ngx_http_request_t *r, PGresult *res,
    const char *name, json_t *(*row)(PGresult *res, int i))
{
    int      i;
    json_t  *list;

    list = json_array();
    if (list == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < PQntuples(res); i++) {
        if (json_array_append_new(list, row(res, i)) != 0) {
            json_decref(list);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                         json_pack("{s:o}", name, list));
}


ngx_uint_t
ngx_http_llmsafespace_api_have_pg(ngx_http_request_t *r)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    return lmcf->pg.conninfo.len != 0;
}


/* 501: "what" lives in PostgreSQL, which this gateway was not given */

ngx_int_t
ngx_http_llmsafespace_api_no_pg(ngx_http_request_t *r, const char *what)
{
    return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_IMPLEMENTED,
                                            "not_implemented",
                                            "%s: this gateway has no "
                                            "llmsafespace_postgres", what);
}


/* a route on one object: the id is its only query parameter */

ngx_int_t
ngx_http_llmsafespace_api_query_id(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, const char *sql,
    ngx_http_llmsafespace_query_done_pt done, const char *what)
{
    u_char      *p;
    const char  *values[1];

    if (!ngx_http_llmsafespace_api_have_pg(r)) {
        return ngx_http_llmsafespace_api_no_pg(r, what);
    }

    ctx->audit_object = *id;

    p = ngx_http_llmsafespace_api_cstr(r, id->data, id->len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    values[0] = (const char *) p;

    return ngx_http_llmsafespace_api_query(r, ctx, sql, 1, values, done);
}
