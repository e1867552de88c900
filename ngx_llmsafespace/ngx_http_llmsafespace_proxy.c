
/*
 * Copyright (C) LLMSafeSpace
 *
 * Runner proxying: execute, stream, files and packages of a sandbox are
 * carried to the runner inside it by nginx's own proxy module.  This file
 * only decides where to: it reads the sandbox's route from Redis, checks
 * that the caller owns it, and hands the request to the runner location
 * (a named location with proxy_pass, see conf/llmsafespace-runner.conf)
 * with $llmsafespace_runner_url and $llmsafespace_runner_token set.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"
#include "ngx_http_llmsafespace_auth.h"


#define NGX_HTTP_LLMSAFESPACE_SANDBOXES   "/api/v1/sandboxes/"
#define NGX_HTTP_LLMSAFESPACE_TOKEN_LEN   64

/*
 * An execute or packages body: what the runner reads (its --max-request,
 * 8 MiB by default, room for its 8 MiB of stdin), or more when
 * llmsafespace_json_body_size says so.
 */
#define NGX_HTTP_LLMSAFESPACE_RUNNER_BODY (8 * 1024 * 1024)


/* a JSON body's field: its name and type (JSON_NULL: a string or null) */
typedef struct {
    const char                     *name;
    json_type                       type;
} ngx_http_llmsafespace_field_t;


typedef struct {
    const char                     *tail;
    ngx_uint_t                      methods;
    const char                     *allow;
    const char                     *action;   /* audit */
    ngx_uint_t                      prefix;   /* tail is a prefix */
    ngx_uint_t                      stream;   /* counted while open */
    ngx_http_llmsafespace_field_t  *body;     /* JSON checked first */
} ngx_http_llmsafespace_runner_route_t;


typedef struct {
    ngx_str_t                       id;
    ngx_str_t                       path;     /* escaped, with the args */
    ngx_http_llmsafespace_runner_route_t  *route;
} ngx_http_llmsafespace_proxy_t;


static ngx_int_t ngx_http_llmsafespace_proxy_route(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, redisReply *reply);
static ngx_int_t ngx_http_llmsafespace_proxy_lookup(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);
static ngx_int_t ngx_http_llmsafespace_proxy_record(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);
static ngx_int_t ngx_http_llmsafespace_proxy_go(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);
static size_t ngx_http_llmsafespace_proxy_body_max(ngx_http_request_t *r);
static void ngx_http_llmsafespace_proxy_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_proxy_check(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_field_t *fields);
static ngx_int_t ngx_http_llmsafespace_proxy_path(ngx_http_request_t *r,
    ngx_str_t *tail, ngx_str_t *path);
static ngx_int_t ngx_http_llmsafespace_proxy_not_found(
    ngx_http_request_t *r, ngx_str_t *id);
static ngx_int_t ngx_http_llmsafespace_proxy_not_running(
    ngx_http_request_t *r, ngx_str_t *id, const char *phase);
static ngx_uint_t ngx_http_llmsafespace_runner_valid(redisReply *runner);
static ngx_int_t ngx_http_llmsafespace_proxy_invalid(ngx_http_request_t *r,
    ngx_str_t *id, const char *what);


/*
 * The runner's requests (runner.md, lss_exec_parse()) with what each
 * field must be: a field the runner does not know would be silently
 * ignored there, so it is refused here, as a create's is.  Values are
 * the runner's to check.
 */

static ngx_http_llmsafespace_field_t  ngx_http_llmsafespace_execute_fields[] =
{
    { "type", JSON_STRING },
    { "language", JSON_STRING },
    { "content", JSON_STRING },
    { "args", JSON_ARRAY },
    { "timeout", JSON_INTEGER },
    { "env", JSON_OBJECT },
    { "workingDir", JSON_STRING },
    { "stdin", JSON_STRING },
    { "context", JSON_NULL },
    { NULL, 0 }
};


static ngx_http_llmsafespace_field_t  ngx_http_llmsafespace_packages_fields[] =
{
    { "packages", JSON_ARRAY },
    { "manager", JSON_STRING },
    { NULL, 0 }
};


static ngx_http_llmsafespace_runner_route_t
    ngx_http_llmsafespace_runner_routes[] =
{
    { "/execute", NGX_HTTP_POST, "POST", "sandbox.execute", 0, 0,
      ngx_http_llmsafespace_execute_fields },
    { "/packages", NGX_HTTP_POST, "POST", "sandbox.packages", 0, 0,
      ngx_http_llmsafespace_packages_fields },
    { "/stream", NGX_HTTP_GET, "GET", NULL, 0, 1, NULL },
    { "/files", NGX_HTTP_GET, "GET", NULL, 0, 0, NULL },
    { "/files/", NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PUT|NGX_HTTP_DELETE
                 |NGX_HTTP_POST,
      "GET, HEAD, PUT, DELETE, POST", "sandbox.files", 1, 0, NULL },
    { NULL, 0, NULL, NULL, 0, 0, NULL }
};


static const char  ngx_http_llmsafespace_proxy_record_sql[] =
    "SELECT CASE WHEN delete_requested_at IS NOT NULL "
    "AND phase NOT IN ('Terminated', 'Failed') THEN 'Terminating' "
    "ELSE phase END "
    "FROM sandboxes WHERE id = $1 AND owner IS NOT NULL "
    "AND (owner = $2 OR $3 = 't')";


ngx_int_t
ngx_http_llmsafespace_proxy(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    size_t                                 len, n;
    u_char                                *p, *last, *key;
    ngx_str_t                              id, tail;
    ngx_table_elt_t                       *h;
    ngx_http_llmsafespace_proxy_t         *px;
    ngx_http_llmsafespace_runner_route_t  *route;
    const char                            *argv[6];
    size_t                                 argvlen[6];

    len = sizeof(NGX_HTTP_LLMSAFESPACE_SANDBOXES) - 1;

    if (r->uri.len <= len
        || ngx_strncmp(r->uri.data, NGX_HTTP_LLMSAFESPACE_SANDBOXES, len)
           != 0)
    {
        return NGX_DECLINED;
    }

    p = r->uri.data + len;
    last = r->uri.data + r->uri.len;

    id.data = p;
    while (p < last && *p != '/') {
        p++;
    }
    id.len = p - id.data;

    tail.data = p;
    tail.len = last - p;

    for (route = ngx_http_llmsafespace_runner_routes; route->tail; route++) {
        n = ngx_strlen(route->tail);

        if (route->prefix ? (tail.len > n
                             && ngx_strncmp(tail.data, route->tail, n) == 0)
                          : (tail.len == n
                             && ngx_strncmp(tail.data, route->tail, n) == 0))
        {
            break;
        }
    }

    if (route->tail == NULL) {
        /* /sandboxes/{id} and /status are the route table's */
        return NGX_DECLINED;
    }

    if (!(r->method & route->methods)) {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        h->value.data = (u_char *) route->allow;
        h->value.len = ngx_strlen(route->allow);

        return ngx_http_llmsafespace_send_error(r,
                                          NGX_HTTP_NOT_ALLOWED,
                                          "method_not_allowed",
                                          "method not allowed on this route");
    }

    ctx->audit_action = route->action;
    ctx->audit_object = id;

    if (id.len < 3 + 8 || id.len > 3 + 40
        || ngx_strncmp(id.data, "sb-", 3) != 0)
    {
        return ngx_http_llmsafespace_proxy_not_found(r, &id);
    }

    for (n = 3; n < id.len; n++) {
        if (!((id.data[n] >= '0' && id.data[n] <= '9')
              || (id.data[n] >= 'a' && id.data[n] <= 'z')))
        {
            return ngx_http_llmsafespace_proxy_not_found(r, &id);
        }
    }

    px = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_proxy_t));
    if (px == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    px->id = id;
    px->route = route;

    if (ngx_http_llmsafespace_proxy_path(r, &tail, &px->path) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->sandbox = px;

    key = ngx_pnalloc(r->pool, sizeof("lss:sb:") - 1 + id.len);
    if (key == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ngx_cpymem(key, "lss:sb:", sizeof("lss:sb:") - 1),
               id.data, id.len);

    argv[0] = "HMGET";
    argv[1] = (const char *) key;
    argv[2] = "owner";
    argv[3] = "runner";
    argv[4] = "token";
    argv[5] = "expires";

    argvlen[0] = 5;
    argvlen[1] = sizeof("lss:sb:") - 1 + id.len;
    argvlen[2] = 5;
    argvlen[3] = 6;
    argvlen[4] = 5;
    argvlen[5] = 7;

    return ngx_http_llmsafespace_api_redis(r, ctx, 6, argv, argvlen,
                                           ngx_http_llmsafespace_proxy_route);
}


/*
 * The runner's path: the tail of the decoded URI escaped again (the runner
 * decodes it itself), and the arguments without the one that carries an
 * API key (already redacted, any spelling): nothing that authenticates a
 * user ever reaches a sandbox.
 */

static ngx_int_t
ngx_http_llmsafespace_proxy_path(ngx_http_request_t *r, ngx_str_t *tail,
    ngx_str_t *path)
{
    size_t      escape;
    u_char     *p, *arg, *end, *last;
    ngx_uint_t  first;

    escape = 2 * ngx_escape_uri(NULL, tail->data, tail->len,
                                NGX_ESCAPE_URI);

    path->data = ngx_pnalloc(r->pool, tail->len + escape + 1 + r->args.len);
    if (path->data == NULL) {
        return NGX_ERROR;
    }

    p = path->data;

    if (escape) {
        p = (u_char *) ngx_escape_uri(p, tail->data, tail->len,
                                      NGX_ESCAPE_URI);
    } else {
        p = ngx_cpymem(p, tail->data, tail->len);
    }

    arg = r->args.data;
    last = r->args.data + r->args.len;
    first = 1;

    while (arg < last) {
        end = ngx_strlchr(arg, last, '&');
        if (end == NULL) {
            end = last;
        }

        if (end > arg && ngx_http_llmsafespace_token_arg(arg, end) == 0) {
            *p++ = first ? '?' : '&';
            p = ngx_cpymem(p, arg, end - arg);
            first = 0;
        }

        arg = end + 1;
    }

    path->len = p - path->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_proxy_route(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, redisReply *reply)
{
    u_char                            *p, buf[160];
    int64_t                            expires;
    ngx_int_t                          rc;
    ngx_str_t                          message;
    ngx_uint_t                         i;
    redisReply                        *owner, *runner, *token, *exp;
    ngx_http_llmsafespace_proxy_t     *px;
    ngx_http_llmsafespace_main_conf_t *lmcf;

    px = ctx->sandbox;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    owner = reply->element[0];
    runner = reply->element[1];
    token = reply->element[2];
    exp = reply->element[3];

    /*
     * No route, another user's sandbox or an unclaimed warm one: the
     * record decides, by the same query whichever it is, so that another
     * user's id is answered as a missing one is, in the same time
     * (security.md, case 29).
     */

    if (owner->type != REDIS_REPLY_STRING
        || owner->len == 0
        || (ctx->identity.role != NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN
            && (owner->len != ctx->identity.user_id.len
                || ngx_strncmp(owner->str, ctx->identity.user_id.data,
                               owner->len) != 0)))
    {
        return ngx_http_llmsafespace_proxy_lookup(r, ctx);
    }

    expires = 0;

    if (exp->type == REDIS_REPLY_STRING) {
        for (i = 0; i < exp->len; i++) {
            if (exp->str[i] < '0' || exp->str[i] > '9' || i > 15) {
                expires = -1;
                break;
            }

            expires = expires * 10 + (exp->str[i] - '0');
        }
    }

    if (expires < 0) {
        return ngx_http_llmsafespace_proxy_invalid(r, &px->id, "expiry");
    }

    if (expires != 0
        && expires <= (int64_t) ngx_time() * 1000
                      + (int64_t) (ngx_timeofday())->msec)
    {
        return ngx_http_llmsafespace_proxy_not_running(r, &px->id,
                                                       "Terminating");
    }

    if (!ngx_http_llmsafespace_runner_valid(runner)) {
        return ngx_http_llmsafespace_proxy_invalid(r, &px->id, "runner");
    }

    if (token->type != REDIS_REPLY_STRING
        || token->len != NGX_HTTP_LLMSAFESPACE_TOKEN_LEN)
    {
        return ngx_http_llmsafespace_proxy_invalid(r, &px->id, "token");
    }

    for (i = 0; i < token->len; i++) {
        if (!((token->str[i] >= '0' && token->str[i] <= '9')
              || (token->str[i] >= 'a' && token->str[i] <= 'f')))
        {
            return ngx_http_llmsafespace_proxy_invalid(r, &px->id, "token");
        }
    }

    /* "unix:/path:/uri" or "addr:port/uri", as proxy_pass parses them */

    ctx->runner_url.data = ngx_pnalloc(r->pool,
                                       runner->len + 1 + px->path.len);
    ctx->runner_token.data = ngx_pnalloc(r->pool, token->len);
    if (ctx->runner_url.data == NULL || ctx->runner_token.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(ctx->runner_url.data, runner->str, runner->len);

    if (runner->len > 5 && ngx_strncmp(runner->str, "unix:", 5) == 0) {
        *p++ = ':';
    }

    p = ngx_cpymem(p, px->path.data, px->path.len);
    ctx->runner_url.len = p - ctx->runner_url.data;

    ngx_memcpy(ctx->runner_token.data, token->str, token->len);
    ctx->runner_token.len = token->len;

    ctx->sandbox_id = px->id;

    if (px->route->stream && r->headers_in.upgrade) {

        rc = ngx_http_llmsafespace_streams_acquire(r, &px->id);

        if (rc == NGX_DECLINED) {
            lmcf = ngx_http_get_module_main_conf(r,
                                               ngx_http_llmsafespace_module);

            message.data = buf;
            message.len = ngx_snprintf(buf, sizeof(buf), "sandbox %V has "
                                       "%ui streams open, its limit: close "
                                       "one first", &px->id,
                                       lmcf->stream_limit) - buf;

            return ngx_http_llmsafespace_send_error_details(r,
                                    NGX_HTTP_TOO_MANY_REQUESTS,
                                    "too_many_streams", &message,
                                    json_pack("{s:I}", "limit",
                                              (json_int_t)
                                              lmcf->stream_limit));
        }

        if (rc != NGX_OK) {
            return ngx_http_llmsafespace_send_error(r,
                                    NGX_HTTP_SERVICE_UNAVAILABLE,
                                    "unavailable", "no room to count "
                                    "another stream, retry later");
        }
    }

    if (px->route->body == NULL) {
        return ngx_http_llmsafespace_proxy_go(r, ctx);
    }

    /* the body is JSON: read whole, checked, then proxied as read */

    if (r->headers_in.content_length_n
        > (off_t) ngx_http_llmsafespace_proxy_body_max(r))
    {
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_llmsafespace_send_error(r,
                                    NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "payload_too_large",
                                    "execute and packages bodies are "
                                    "limited to %uz bytes",
                                    ngx_http_llmsafespace_proxy_body_max(r));
    }

    rc = ngx_http_read_client_request_body(r,
                                       ngx_http_llmsafespace_proxy_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static size_t
ngx_http_llmsafespace_proxy_body_max(ngx_http_request_t *r)
{
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    return ngx_max(llcf->max_body_size, NGX_HTTP_LLMSAFESPACE_RUNNER_BODY);
}


static ngx_int_t
ngx_http_llmsafespace_proxy_go(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    /* it lasts while its key does */
    if (ngx_http_llmsafespace_inflight_add(r, &ctx->identity.key_id)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    return ngx_http_named_location(r, &llcf->runner_location);
}


static void
ngx_http_llmsafespace_proxy_body(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_llmsafespace_ctx_t    *ctx;
    ngx_http_llmsafespace_proxy_t  *px;

    ctx = ngx_http_llmsafespace_get_ctx(r);
    px = ctx->sandbox;

    rc = ngx_http_llmsafespace_api_parse_body(r, ctx,
                                      ngx_http_llmsafespace_proxy_body_max(r));

    if (rc == NGX_OK) {
        rc = ngx_http_llmsafespace_proxy_check(r, ctx, px->route->body);
    }

    if (rc == NGX_OK) {
        rc = ngx_http_llmsafespace_proxy_go(r, ctx);

    } else if (rc == NGX_DECLINED) {
        rc = ngx_http_llmsafespace_api_reject(r, ctx);
    }

    ngx_http_finalize_request(r, rc);
}


/* unknown fields are refused (422), fields of the wrong type are 400 */

static ngx_int_t
ngx_http_llmsafespace_proxy_check(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_field_t *fields)
{
    json_t                         *v;
    const char                     *key, *what;
    ngx_http_llmsafespace_field_t  *f;

    json_object_foreach(ctx->body, key, v) {

        for (f = fields; f->name; f++) {
            if (ngx_strcmp(key, f->name) == 0) {
                break;
            }
        }

        if (f->name == NULL) {
            return ngx_http_llmsafespace_api_invalid(r, ctx, 422, key,
                                        "unknown field \"%s\"", key);
        }

        if (f->type == JSON_NULL
            ? (json_is_string(v) || json_is_null(v))
            : (json_typeof(v) == f->type))
        {
            continue;
        }

        switch (f->type) {
        case JSON_ARRAY:
            what = "an array";
            break;
        case JSON_OBJECT:
            what = "an object";
            break;
        case JSON_INTEGER:
            what = "an integer";
            break;
        case JSON_NULL:
            what = "a string or null";
            break;
        default:
            what = "a string";
            break;
        }

        return ngx_http_llmsafespace_api_invalid(r, ctx,
                                        NGX_HTTP_BAD_REQUEST, f->name,
                                        "field \"%s\" must be %s", f->name,
                                        what);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_proxy_lookup(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    u_char                             *user, *admin;
    const char                         *values[3];
    ngx_http_llmsafespace_proxy_t      *px;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    px = ctx->sandbox;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->pg.conninfo.len == 0) {
        return ngx_http_llmsafespace_proxy_not_found(r, &px->id);
    }

    values[0] = (const char *) ngx_http_llmsafespace_api_cstr(r,
                                            px->id.data, px->id.len);
    user = ngx_http_llmsafespace_api_cstr(r, ctx->identity.user_id.data,
                                          ctx->identity.user_id.len);
    if (values[0] == NULL || user == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    admin = (u_char *) (ctx->identity.role
                        == NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN ? "t" : "f");
    values[1] = (const char *) user;
    values[2] = (const char *) admin;

    return ngx_http_llmsafespace_api_query(r, ctx,
                                  ngx_http_llmsafespace_proxy_record_sql,
                                  3, values,
                                  ngx_http_llmsafespace_proxy_record);
}


/*
 * The route comes from Redis, written by the controller; it is still
 * checked, so that a damaged entry cannot point nginx anywhere else than
 * at a runner: "unix:" and an absolute path without ':', or an IPv4
 * address and a port.
 */

static ngx_uint_t
ngx_http_llmsafespace_runner_valid(redisReply *runner)
{
    size_t      i;
    u_char      c;
    ngx_uint_t  colon;

    if (runner->type != REDIS_REPLY_STRING || runner->len < 7
        || runner->len > 200)
    {
        return 0;
    }

    if (ngx_strncmp(runner->str, "unix:/", 6) == 0) {
        for (i = 6; i < runner->len; i++) {
            c = runner->str[i];

            if (!(isalnum(c) || c == '/' || c == '.' || c == '_'
                  || c == '-'))
            {
                return 0;
            }
        }

        return ngx_strstr(runner->str, "/../") == NULL;
    }

    colon = 0;

    for (i = 0; i < runner->len; i++) {
        c = runner->str[i];

        if (c == ':') {
            colon++;

        } else if (!(c == '.' || (c >= '0' && c <= '9'))) {
            return 0;
        }
    }

    return colon == 1 && runner->str[runner->len - 1] != ':';
}


static ngx_int_t
ngx_http_llmsafespace_proxy_record(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, PGresult *res)
{
    const char                     *phase;
    ngx_http_llmsafespace_proxy_t  *px;

    px = ctx->sandbox;

    if (PQntuples(res) != 1) {
        return ngx_http_llmsafespace_proxy_not_found(r, &px->id);
    }

    phase = PQgetvalue(res, 0, 0);

    if (ngx_strcmp(phase, "Running") == 0) {
        /* the controller restores a lost route within a tick */
        if (ngx_http_discard_request_body(r) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_llmsafespace_send_error(r,
                                         NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "unavailable",
                                         "sandbox %V is not reachable yet, "
                                         "retry shortly", &px->id);
    }

    return ngx_http_llmsafespace_proxy_not_running(r, &px->id, phase);
}


/* a damaged route is never followed: 502, and the operator is told */

static ngx_int_t
ngx_http_llmsafespace_proxy_invalid(ngx_http_request_t *r, ngx_str_t *id,
    const char *what)
{
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "llmsafespace: route of %V has an invalid %s", id, what);

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_error(r, NGX_HTTP_BAD_GATEWAY,
                                            "unavailable",
                                            "the sandbox's route is invalid");
}


static ngx_int_t
ngx_http_llmsafespace_proxy_not_found(ngx_http_request_t *r, ngx_str_t *id)
{
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                            "not_found",
                                            "sandbox %V not found", id);
}


static ngx_int_t
ngx_http_llmsafespace_proxy_not_running(ngx_http_request_t *r,
    ngx_str_t *id, const char *phase)
{
    ngx_str_t  message;
    u_char     buf[160];

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    message.data = buf;
    message.len = ngx_snprintf(buf, sizeof(buf), "sandbox %V is %s, not "
                               "Running", id, phase) - buf;

    return ngx_http_llmsafespace_send_error_details(r, NGX_HTTP_CONFLICT,
                                                    "conflict", &message,
                                                    json_pack("{s:s}",
                                                              "phase",
                                                              phase));
}
