
/*
 * Copyright (C) LLMSafeSpace
 *
 * Rate limiting per API key and route class with GCRA (the generic cell
 * rate algorithm): a key's whole state is one "theoretical arrival time",
 * so a check is one read and one write, in shared memory for this gateway
 * and in one atomic Lua script in Redis for all replicas together.  Each
 * request counts against two budgets at once, its key's and its user's
 * (shared by all the user's keys), so that minting keys does not multiply
 * what a user may do; it is allowed only when both allow it.
 *
 * The shared memory zone is laid out like ngx_http_limit_req_module's: an
 * rbtree of keys plus an LRU queue for eviction.  nginx's own limit_req
 * cannot be used: its key is a variable evaluated before our access
 * handler has authenticated the key, it has no cluster-wide budget, and it
 * does not report remaining/reset for the RateLimit-* headers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>

#include "ngx_http_llmsafespace.h"


#define NGX_HTTP_LLMSAFESPACE_LIMIT_KEY_MAX  255

/* a request's budgets: its key's (or client address') and its user's */
#define NGX_HTTP_LLMSAFESPACE_LIMIT_BUCKETS  2


typedef struct {
    ngx_rbtree_t                          rbtree;
    ngx_rbtree_node_t                     sentinel;
    ngx_queue_t                           queue;      /* LRU, newest first */
} ngx_http_llmsafespace_limit_sh_t;


typedef struct {
    ngx_rbtree_node_t                     node;
    ngx_queue_t                           queue;
    uint64_t                              tat;        /* us, monotonic */
    u_short                               len;
    u_char                                data[1];
} ngx_http_llmsafespace_limit_node_t;


/* the public zone first, so the two pointers are interchangeable */
typedef struct {
    ngx_http_llmsafespace_limit_zone_t    zone;
    uint64_t                              interval;   /* us per request */
    uint64_t                              user_interval;
    ngx_http_llmsafespace_limit_sh_t     *sh;
    ngx_slab_pool_t                      *shpool;
    ngx_str_t                             file;       /* first use, for */
    ngx_uint_t                            line;       /* "unknown zone" */
} ngx_http_llmsafespace_limit_ctx_t;


/* one budget a request counts against */
typedef struct {
    ngx_str_t                             local;      /* zone key */
    ngx_str_t                             key;        /* Redis key */
    uint64_t                              interval;   /* us per request */
    ngx_uint_t                            burst;
    u_char                                interval_text[NGX_INT64_LEN];
    size_t                                interval_len;
    u_char                                limit_text[NGX_INT_T_LEN];
    size_t                                limit_len;
} ngx_http_llmsafespace_limit_bucket_t;


/* one check, and its Redis command in flight, in the request's pool */
typedef struct {
    ngx_http_request_t                   *request;
    ngx_http_llmsafespace_limit_ctx_t    *lctx;
    ngx_http_llmsafespace_limit_bucket_t  bucket[
                                          NGX_HTTP_LLMSAFESPACE_LIMIT_BUCKETS];
    ngx_uint_t                            n;
    ngx_uint_t                            eval;       /* EVAL sent */
} ngx_http_llmsafespace_limit_wait_t;


static ngx_http_llmsafespace_limit_ctx_t *ngx_http_llmsafespace_limit_get(
    ngx_conf_t *cf, ngx_str_t *name);
static ngx_int_t ngx_http_llmsafespace_limit_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llmsafespace_limit_rbtree_insert(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static char *ngx_http_llmsafespace_limit_parse_rate(ngx_conf_t *cf,
    ngx_str_t *value, size_t skip, ngx_int_t *rate, ngx_int_t *scale);
static ngx_int_t ngx_http_llmsafespace_limit_bucket(ngx_http_request_t *r,
    ngx_http_llmsafespace_limit_wait_t *w, ngx_str_t *id, const char *prefix,
    uint64_t interval, ngx_uint_t burst);
static ngx_int_t ngx_http_llmsafespace_limit_local(
    ngx_http_llmsafespace_limit_wait_t *w,
    ngx_http_llmsafespace_limit_result_t *res, ngx_log_t *log);
static ngx_http_llmsafespace_limit_node_t *ngx_http_llmsafespace_limit_lookup(
    ngx_http_llmsafespace_limit_ctx_t *lctx, ngx_str_t *key, uint32_t hash);
static void ngx_http_llmsafespace_limit_refund(
    ngx_http_llmsafespace_limit_wait_t *w);
static void ngx_http_llmsafespace_limit_expire(
    ngx_http_llmsafespace_limit_ctx_t *lctx, uint64_t now, ngx_uint_t n);
static ngx_int_t ngx_http_llmsafespace_limit_send(
    ngx_http_llmsafespace_limit_wait_t *w);
static void ngx_http_llmsafespace_limit_redis_handler(void *data,
    redisReply *reply, ngx_int_t rc);
static ngx_int_t ngx_http_llmsafespace_limit_redis_result(
    ngx_http_llmsafespace_limit_wait_t *w, redisReply *reply);
static ngx_int_t ngx_http_llmsafespace_limit_unavailable(
    ngx_http_request_t *r);


/* distinguishes our zones from the module's other shared memory zones */
static ngx_uint_t  ngx_http_llmsafespace_limit_tag;


/*
 * KEYS[i] a budget; ARGV[2i-1] its interval between requests (us),
 * ARGV[2i] its limit (burst + 1).  A request is allowed when every budget
 * allows it, and then taken from all of them.  Redis' clock is the one all
 * replicas agree on.  Returns {allowed, remaining, reset ms, retry after
 * ms}, of the tightest budget.
 */
static ngx_str_t  ngx_http_llmsafespace_limit_script = ngx_string(
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local ok, rem, reset, retry, new = 1, nil, 0, 0, {}\n"
    "for i = 1, #KEYS do\n"
    "  local interval = tonumber(ARGV[2 * i - 1])\n"
    "  local tau = interval * tonumber(ARGV[2 * i])\n"
    "  local tat = tonumber(redis.call('GET', KEYS[i])) or now\n"
    "  if tat < now then tat = now end\n"
    "  new[i] = tat + interval\n"
    "  if new[i] > now + tau then\n"
    "    ok = 0\n"
    "    reset = math.max(reset, math.ceil((tat - now) / 1000))\n"
    "    retry = math.max(retry, math.ceil((new[i] - tau - now) / 1000))\n"
    "  else\n"
    "    local r = math.floor((now + tau - new[i]) / interval)\n"
    "    if rem == nil or r < rem then rem = r end\n"
    "  end\n"
    "end\n"
    "if ok == 0 then return {0, 0, reset, retry} end\n"
    "for i = 1, #KEYS do\n"
    "  redis.call('SET', KEYS[i], string.format('%d', new[i]),\n"
    "             'PX', math.ceil((new[i] - now) / 1000))\n"
    "  reset = math.max(reset, math.ceil((new[i] - now) / 1000))\n"
    "end\n"
    "return {1, rem, reset, 0}\n");

static u_char  ngx_http_llmsafespace_limit_sha[40];

static ngx_str_t  ngx_http_llmsafespace_limit_classes[] = {
    ngx_string("default"),              /* NGX_HTTP_LLMSAFESPACE_CLASS_* */
    ngx_string("create"),
    ngx_string("execute")
};


char *
ngx_http_llmsafespace_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    u_char                             *p;
    size_t                              len;
    ssize_t                             size;
    ngx_int_t                           rate, scale, burst, user_rate,
                                        user_scale, user_burst;
    ngx_str_t                          *value, name, s;
    ngx_int_t                           n;
    ngx_uint_t                          i;
    ngx_sha1_t                          sha1;
    ngx_shm_zone_t                     *shm_zone;
    ngx_http_llmsafespace_limit_ctx_t  *lctx;
    u_char                              digest[20];

    value = cf->args->elts;

    size = 0;
    rate = 0;
    scale = 1;
    burst = 0;
    user_rate = 0;
    user_scale = 1;
    user_burst = -1;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL || p == name.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid zone \"%V\"",
                                   &value[0], &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid zone size \"%V\"",
                                   &value[0], &s);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: zone \"%V\" is too small "
                                   "(at least %uzk)", &value[0], &name,
                                   8 * ngx_pagesize / 1024);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {

            if (ngx_http_llmsafespace_limit_parse_rate(cf, &value[i], 5,
                                                       &rate, &scale)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "user_rate=", 10) == 0) {

            if (ngx_http_llmsafespace_limit_parse_rate(cf, &value[i], 10,
                                                       &user_rate,
                                                       &user_scale)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0
            || ngx_strncmp(value[i].data, "user_burst=", 11) == 0)
        {
            len = (value[i].data[0] == 'b') ? 6 : 11;
            n = ngx_atoi(value[i].data + len, value[i].len - len);

            if (n == NGX_ERROR || n > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid burst \"%V\"",
                                   &value[0], &value[i]);
                return NGX_CONF_ERROR;
            }

            if (len == 6) {
                burst = n;

            } else {
                user_burst = n;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid parameter \"%V\"",
                           &value[0], &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"zone=NAME:SIZE\" is missing", &value[0]);
        return NGX_CONF_ERROR;
    }

    if (rate == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"rate=\" is missing", &value[0]);
        return NGX_CONF_ERROR;
    }

    lctx = ngx_http_llmsafespace_limit_get(cf, &name);
    if (lctx == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lctx->zone.rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: zone \"%V\" is already defined",
                           &value[0], &name);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size,
                                     &ngx_http_llmsafespace_limit_tag);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a user's keys share, by default, what one key may do */

    if (user_rate == 0) {
        user_rate = rate;
        user_scale = scale;
    }

    if (user_burst == -1) {
        user_burst = burst;
    }

    lctx->zone.rate = rate * 1000 / scale;
    lctx->zone.burst = burst;
    lctx->interval = (uint64_t) 1000000 * scale / rate;
    lctx->zone.user_rate = user_rate * 1000 / user_scale;
    lctx->zone.user_burst = user_burst;
    lctx->user_interval = (uint64_t) 1000000 * user_scale / user_rate;

    shm_zone->init = ngx_http_llmsafespace_limit_init_zone;
    shm_zone->data = lctx;

    if (ngx_http_llmsafespace_limit_sha[0] == '\0') {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, ngx_http_llmsafespace_limit_script.data,
                        ngx_http_llmsafespace_limit_script.len);
        ngx_sha1_final(digest, &sha1);

        ngx_hex_dump(ngx_http_llmsafespace_limit_sha, digest, 20);
    }

    return NGX_CONF_OK;
}


/* "rate=Nr/s" or "Nr/m" after "skip" characters */

static char *
ngx_http_llmsafespace_limit_parse_rate(ngx_conf_t *cf, ngx_str_t *value,
    size_t skip, ngx_int_t *rate, ngx_int_t *scale)
{
    u_char     *p;
    size_t      len;
    ngx_str_t  *args;

    len = value->len;
    p = value->data + len - 3;

    if (len > skip + 3 && ngx_strncmp(p, "r/s", 3) == 0) {
        *scale = 1;
        len -= 3;

    } else if (len > skip + 3 && ngx_strncmp(p, "r/m", 3) == 0) {
        *scale = 60;
        len -= 3;

    } else {
        len = 0;
    }

    *rate = len ? ngx_atoi(value->data + skip, len - skip) : NGX_ERROR;

    if (*rate <= 0 || *rate > 1000000) {
        args = cf->args->elts;
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid rate \"%V\" "
                           "(expected Nr/s or Nr/m)", &args[0], value);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_llmsafespace_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llmsafespace_loc_conf_t *llcf = conf;

    ngx_str_t                          *value, name;
    ngx_uint_t                          i, class;
    ngx_http_llmsafespace_limit_ctx_t  *lctx;

    value = cf->args->elts;

    class = NGX_HTTP_LLMSAFESPACE_CLASS_N;

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_CLASS_N; i++) {
        if (value[1].len == ngx_http_llmsafespace_limit_classes[i].len
            && ngx_strncmp(value[1].data,
                           ngx_http_llmsafespace_limit_classes[i].data,
                           value[1].len) == 0)
        {
            class = i;
            break;
        }
    }

    if (class == NGX_HTTP_LLMSAFESPACE_CLASS_N) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: unknown route class \"%V\" "
                           "(expected create, execute or default)",
                           &value[0], &value[1]);
        return NGX_CONF_ERROR;
    }

    if (value[2].len <= 5 || ngx_strncmp(value[2].data, "zone=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid parameter \"%V\" "
                           "(expected zone=NAME)", &value[0], &value[2]);
        return NGX_CONF_ERROR;
    }

    if (llcf->limit[class]) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: class \"%V\" is limited twice here",
                           &value[0], &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[2].data + 5;
    name.len = value[2].len - 5;

    /* the zone may be defined further down: it is checked once all is read */

    lctx = ngx_http_llmsafespace_limit_get(cf, &name);
    if (lctx == NULL) {
        return NGX_CONF_ERROR;
    }

    llcf->limit[class] = &lctx->zone;
    llcf->limit_set = 1;

    return NGX_CONF_OK;
}


char *
ngx_http_llmsafespace_limit_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_llmsafespace_main_conf_t *lmcf = conf;

    ngx_uint_t                           i;
    ngx_http_llmsafespace_limit_ctx_t   *lctx;
    ngx_http_llmsafespace_limit_zone_t **zones;

    zones = lmcf->limit_zones.elts;

    for (i = 0; i < lmcf->limit_zones.nelts; i++) {
        lctx = (ngx_http_llmsafespace_limit_ctx_t *) zones[i];

        if (lctx->zone.rate == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "llmsafespace_limit: unknown zone \"%V\" "
                          "in %V:%ui (no llmsafespace_limit_zone "
                          "defines it)", &lctx->zone.name, &lctx->file,
                          lctx->line);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* Finds a zone by name, or adds an undefined one (rate 0) for it. */

static ngx_http_llmsafespace_limit_ctx_t *
ngx_http_llmsafespace_limit_get(ngx_conf_t *cf, ngx_str_t *name)
{
    ngx_uint_t                           i;
    ngx_shm_zone_t                      *shm_zone;
    ngx_http_llmsafespace_limit_ctx_t   *lctx;
    ngx_http_llmsafespace_main_conf_t   *lmcf;
    ngx_http_llmsafespace_limit_zone_t **zones, **zp;

    lmcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_llmsafespace_module);

    zones = lmcf->limit_zones.elts;

    for (i = 0; i < lmcf->limit_zones.nelts; i++) {
        if (zones[i]->name.len == name->len
            && ngx_strncmp(zones[i]->name.data, name->data, name->len) == 0)
        {
            return (ngx_http_llmsafespace_limit_ctx_t *) zones[i];
        }
    }

    /*
     * Registered with size 0 until the zone is defined: an undefined zone
     * then also fails nginx's own check of shared memory zones.
     */

    shm_zone = ngx_shared_memory_add(cf, name, 0,
                                     &ngx_http_llmsafespace_limit_tag);
    if (shm_zone == NULL) {
        return NULL;
    }

    lctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_llmsafespace_limit_ctx_t));
    if (lctx == NULL) {
        return NULL;
    }

    zp = ngx_array_push(&lmcf->limit_zones);
    if (zp == NULL) {
        return NULL;
    }

    lctx->zone.name = *name;
    lctx->zone.shm_zone = shm_zone;
    lctx->file = cf->conf_file->file.name;
    lctx->line = cf->conf_file->line;

    *zp = &lctx->zone;

    return lctx;
}


/*
 * On reload a zone of the same name and size keeps its memory, and with it
 * every key's state: reuse it as it is.
 */

static ngx_int_t
ngx_http_llmsafespace_limit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llmsafespace_limit_ctx_t  *octx = data;

    size_t                              len;
    ngx_http_llmsafespace_limit_ctx_t  *lctx;

    lctx = shm_zone->data;

    if (octx) {
        lctx->sh = octx->sh;
        lctx->shpool = octx->shpool;

        return NGX_OK;
    }

    lctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        lctx->sh = lctx->shpool->data;

        return NGX_OK;
    }

    lctx->sh = ngx_slab_alloc(lctx->shpool,
                              sizeof(ngx_http_llmsafespace_limit_sh_t));
    if (lctx->sh == NULL) {
        return NGX_ERROR;
    }

    lctx->shpool->data = lctx->sh;

    ngx_rbtree_init(&lctx->sh->rbtree, &lctx->sh->sentinel,
                    ngx_http_llmsafespace_limit_rbtree_insert);

    ngx_queue_init(&lctx->sh->queue);

    len = sizeof(" in llmsafespace_limit_zone \"\"") + shm_zone->shm.name.len;

    lctx->shpool->log_ctx = ngx_slab_alloc(lctx->shpool, len);
    if (lctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(lctx->shpool->log_ctx, " in llmsafespace_limit_zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone evicts old keys: not worth a "crit" line each time */
    lctx->shpool->log_nomem = 0;

    return NGX_OK;
}


static void
ngx_http_llmsafespace_limit_rbtree_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                   **p;
    ngx_http_llmsafespace_limit_node_t   *ln, *lnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            ln = (ngx_http_llmsafespace_limit_node_t *) node;
            lnt = (ngx_http_llmsafespace_limit_node_t *) temp;

            p = (ngx_memn2cmp(ln->data, lnt->data, ln->len, lnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_int_t
ngx_http_llmsafespace_limit_check(ngx_http_request_t *r)
{
    ngx_int_t                            rc;
    ngx_str_t                            key;
    ngx_http_llmsafespace_ctx_t         *ctx;
    ngx_http_llmsafespace_loc_conf_t    *llcf;
    ngx_http_llmsafespace_main_conf_t   *lmcf;
    ngx_http_llmsafespace_limit_ctx_t   *lctx;
    ngx_http_llmsafespace_limit_wait_t  *w;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    ctx = ngx_http_llmsafespace_get_ctx(r);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    if (ctx->route_class >= NGX_HTTP_LLMSAFESPACE_CLASS_N
        || llcf->limit[ctx->route_class] == NULL)
    {
        return NGX_DECLINED;
    }

    lctx = (ngx_http_llmsafespace_limit_ctx_t *)
               llcf->limit[ctx->route_class];

    w = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_limit_wait_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->request = r;
    w->lctx = lctx;

    /* without an authenticated key, the client address is the key */

    key = ctx->identity.key_id;

    if (key.len == 0) {
        key = r->connection->addr_text;
    }

    rc = ngx_http_llmsafespace_limit_bucket(r, w, &key, "", lctx->interval,
                                            lctx->zone.burst);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->identity.user_id.len) {
        rc = ngx_http_llmsafespace_limit_bucket(r, w, &ctx->identity.user_id,
                                                "user:", lctx->user_interval,
                                                lctx->zone.user_burst);
        if (rc == NGX_ERROR) {
            return rc;
        }
    }

    rc = ngx_http_llmsafespace_limit_local(w, &ctx->limit,
                                           r->connection->log);

    if (rc == NGX_HTTP_TOO_MANY_REQUESTS) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llmsafespace: limiting requests of \"%V\" "
                      "by zone \"%V\"", &key, &lctx->zone.name);

        ngx_http_llmsafespace_metrics_rate_limited(ctx->route_class);
        return rc;
    }

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->redis.addr == NULL) {
        return NGX_OK;
    }

    /* the local verdict stands unless the cluster-wide budget says no */

    if (ngx_http_llmsafespace_limit_send(w) != NGX_OK) {
        rc = ngx_http_llmsafespace_limit_unavailable(r);

        if (rc != NGX_OK) {
            ngx_http_llmsafespace_limit_refund(w);
        }

        return rc;
    }

    return NGX_AGAIN;
}


/*
 * Adds a budget: "prefix" and "id" name it in the zone, and with the
 * zone's name in Redis.  NGX_DECLINED: an id too long to be kept (no
 * limit then, as before for the address alone).
 */

static ngx_int_t
ngx_http_llmsafespace_limit_bucket(ngx_http_request_t *r,
    ngx_http_llmsafespace_limit_wait_t *w, ngx_str_t *id, const char *prefix,
    uint64_t interval, ngx_uint_t burst)
{
    u_char                                *p;
    size_t                                 len;
    ngx_http_llmsafespace_limit_bucket_t  *b;

    len = ngx_strlen(prefix);

    if (id->len == 0
        || len + id->len > NGX_HTTP_LLMSAFESPACE_LIMIT_KEY_MAX)
    {
        return NGX_DECLINED;
    }

    b = &w->bucket[w->n++];

    b->interval = interval;
    b->burst = burst;

    b->key.len = sizeof("lss:rl::") - 1 + w->lctx->zone.name.len + len
                 + id->len;
    b->key.data = ngx_pnalloc(r->pool, b->key.len);
    if (b->key.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(b->key.data, "lss:rl:", sizeof("lss:rl:") - 1);
    p = ngx_cpymem(p, w->lctx->zone.name.data, w->lctx->zone.name.len);
    *p++ = ':';

    /* the zone's key is the Redis key's tail */
    b->local.data = p;
    b->local.len = len + id->len;

    p = ngx_cpymem(p, prefix, len);
    ngx_memcpy(p, id->data, id->len);

    b->interval_len = ngx_sprintf(b->interval_text, "%uL", interval)
                      - b->interval_text;
    b->limit_len = ngx_sprintf(b->limit_text, "%ui", burst + 1)
                   - b->limit_text;

    return NGX_OK;
}


/*
 * GCRA: a request is allowed when, in each of its budgets, the theoretical
 * arrival time advanced by one interval stays within (burst + 1)
 * intervals of now; then it is taken from all of them.  The verdict comes
 * first and the writes after, each budget looked up again: making room
 * for one budget's node may evict another's.
 */

static ngx_int_t
ngx_http_llmsafespace_limit_local(ngx_http_llmsafespace_limit_wait_t *w,
    ngx_http_llmsafespace_limit_result_t *res, ngx_log_t *log)
{
    size_t                                 size;
    uint32_t                               hash;
    uint64_t                               now, tat, tau, left;
    uint64_t                               next[
                                         NGX_HTTP_LLMSAFESPACE_LIMIT_BUCKETS];
    ngx_uint_t                             i, denied, full;
    ngx_http_llmsafespace_limit_ctx_t     *lctx;
    ngx_http_llmsafespace_limit_node_t    *ln;
    ngx_http_llmsafespace_limit_bucket_t  *b;

    lctx = w->lctx;

    /* ngx_current_msec is monotonic and shared by every worker */
    now = (uint64_t) ngx_current_msec * 1000;

    denied = 0;
    full = 0;

    res->limit = 0;
    res->remaining = 0;
    res->reset = 0;
    res->retry_after = 0;

    ngx_shmtx_lock(&lctx->shpool->mutex);

    ngx_http_llmsafespace_limit_expire(lctx, now, 1);

    for (i = 0; i < w->n; i++) {
        b = &w->bucket[i];
        tau = b->interval * (b->burst + 1);

        ln = ngx_http_llmsafespace_limit_lookup(lctx, &b->local,
                               ngx_crc32_short(b->local.data, b->local.len));

        tat = (ln && ln->tat > now) ? ln->tat : now;
        next[i] = tat + b->interval;

        if (next[i] > now + tau && ln) {
            ngx_queue_remove(&ln->queue);
            ngx_queue_insert_head(&lctx->sh->queue, &ln->queue);

            if (!denied || res->retry_after
                           < (time_t) ((next[i] - tau - now + 999999)
                                       / 1000000))
            {
                res->limit = b->burst + 1;
            }

            denied = 1;
            res->reset = ngx_max(res->reset,
                                 (time_t) ((tat - now + 999999) / 1000000));
            res->retry_after = ngx_max(res->retry_after,
                           (time_t) ((next[i] - tau - now + 999999) / 1000000));
            continue;
        }

        /* the tightest budget is the one reported */

        left = (now + tau - next[i]) / b->interval;

        if (!denied && (i == 0 || left < res->remaining)) {
            res->limit = b->burst + 1;
            res->remaining = (ngx_uint_t) left;
        }

        res->reset = ngx_max(res->reset,
                             (time_t) ((next[i] - now + 999999) / 1000000));
    }

    if (denied) {
        ngx_shmtx_unlock(&lctx->shpool->mutex);

        res->remaining = 0;

        if (res->retry_after == 0) {
            res->retry_after = 1;
        }

        return NGX_HTTP_TOO_MANY_REQUESTS;
    }

    for (i = 0; i < w->n; i++) {
        b = &w->bucket[i];
        hash = ngx_crc32_short(b->local.data, b->local.len);

        ln = ngx_http_llmsafespace_limit_lookup(lctx, &b->local, hash);

        if (ln == NULL) {
            size = offsetof(ngx_http_llmsafespace_limit_node_t, data)
                   + b->local.len;

            ln = ngx_slab_alloc_locked(lctx->shpool, size);

            if (ln == NULL) {
                ngx_http_llmsafespace_limit_expire(lctx, now, 0);

                ln = ngx_slab_alloc_locked(lctx->shpool, size);
            }

            if (ln == NULL) {
                /* a budget whose state cannot be kept yet is fresh */
                full = 1;
                continue;
            }

            ln->node.key = hash;
            ln->len = (u_short) b->local.len;
            ngx_memcpy(ln->data, b->local.data, b->local.len);

            ngx_rbtree_insert(&lctx->sh->rbtree, &ln->node);

        } else {
            ngx_queue_remove(&ln->queue);
        }

        ngx_queue_insert_head(&lctx->sh->queue, &ln->queue);

        ln->tat = next[i];
    }

    ngx_shmtx_unlock(&lctx->shpool->mutex);

    if (full) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "llmsafespace_limit_zone \"%V\" is full",
                      &lctx->zone.name);
    }

    return NGX_OK;
}


/* Called locked. */

static ngx_http_llmsafespace_limit_node_t *
ngx_http_llmsafespace_limit_lookup(ngx_http_llmsafespace_limit_ctx_t *lctx,
    ngx_str_t *key, uint32_t hash)
{
    ngx_int_t                            rc;
    ngx_rbtree_node_t                   *node, *sentinel;
    ngx_http_llmsafespace_limit_node_t  *ln;

    node = lctx->sh->rbtree.root;
    sentinel = lctx->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        ln = (ngx_http_llmsafespace_limit_node_t *) node;

        rc = ngx_memn2cmp(key->data, ln->data, key->len, (size_t) ln->len);

        if (rc == 0) {
            return ln;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/*
 * The request was not served after all (the cluster-wide budget refused
 * it, or Redis was down under "refuse"): give its interval back, so this
 * gateway's ceiling counts only what it let through.
 */

static void
ngx_http_llmsafespace_limit_refund(ngx_http_llmsafespace_limit_wait_t *w)
{
    uint64_t                               now;
    ngx_uint_t                             i;
    ngx_http_llmsafespace_limit_ctx_t     *lctx;
    ngx_http_llmsafespace_limit_node_t    *ln;
    ngx_http_llmsafespace_limit_bucket_t  *b;

    lctx = w->lctx;
    now = (uint64_t) ngx_current_msec * 1000;

    ngx_shmtx_lock(&lctx->shpool->mutex);

    for (i = 0; i < w->n; i++) {
        b = &w->bucket[i];

        ln = ngx_http_llmsafespace_limit_lookup(lctx, &b->local,
                               ngx_crc32_short(b->local.data, b->local.len));

        if (ln && ln->tat > now) {
            ln->tat = (ln->tat - now > b->interval) ? ln->tat - b->interval
                                                    : now;
        }
    }

    ngx_shmtx_unlock(&lctx->shpool->mutex);
}


/*
 * Called locked.  A key whose arrival time has passed is in the same
 * state as an unknown key, so removing it loses nothing: n == 1 removes
 * up to two such keys from the LRU end; n == 0 first evicts the least
 * recently used key even if it still holds state (the zone is full).
 */

static void
ngx_http_llmsafespace_limit_expire(ngx_http_llmsafespace_limit_ctx_t *lctx,
    uint64_t now, ngx_uint_t n)
{
    ngx_queue_t                         *q;
    ngx_http_llmsafespace_limit_node_t  *ln;

    while (n < 3) {

        if (ngx_queue_empty(&lctx->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&lctx->sh->queue);

        ln = ngx_queue_data(q, ngx_http_llmsafespace_limit_node_t, queue);

        if (n++ != 0 && ln->tat > now) {
            return;
        }

        ngx_queue_remove(q);
        ngx_rbtree_delete(&lctx->sh->rbtree, &ln->node);
        ngx_slab_free_locked(lctx->shpool, ln);
    }
}


/* EVALSHA first; EVAL only when Redis does not know the script yet. */

static ngx_int_t
ngx_http_llmsafespace_limit_send(ngx_http_llmsafespace_limit_wait_t *w)
{
    ngx_uint_t                             i, argc;
    const char                            *argv[3 + 3
                                         * NGX_HTTP_LLMSAFESPACE_LIMIT_BUCKETS];
    size_t                                 argvlen[3 + 3
                                         * NGX_HTTP_LLMSAFESPACE_LIMIT_BUCKETS];
    u_char                                 numkeys[NGX_INT_T_LEN];
    ngx_http_llmsafespace_ctx_t           *ctx;
    ngx_http_llmsafespace_redis_cmd_t     *cmd;
    ngx_http_llmsafespace_limit_bucket_t  *b;

    if (w->eval) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = (const char *) ngx_http_llmsafespace_limit_script.data;
        argvlen[1] = ngx_http_llmsafespace_limit_script.len;

    } else {
        argv[0] = "EVALSHA";
        argvlen[0] = 7;
        argv[1] = (const char *) ngx_http_llmsafespace_limit_sha;
        argvlen[1] = sizeof(ngx_http_llmsafespace_limit_sha);
    }

    argv[2] = (const char *) numkeys;
    argvlen[2] = ngx_sprintf(numkeys, "%ui", w->n) - numkeys;

    argc = 3;

    for (i = 0; i < w->n; i++) {
        argv[argc] = (const char *) w->bucket[i].key.data;
        argvlen[argc++] = w->bucket[i].key.len;
    }

    for (i = 0; i < w->n; i++) {
        b = &w->bucket[i];

        argv[argc] = (const char *) b->interval_text;
        argvlen[argc++] = b->interval_len;
        argv[argc] = (const char *) b->limit_text;
        argvlen[argc++] = b->limit_len;
    }

    cmd = ngx_http_llmsafespace_redis_command(argc, argv, argvlen,
                                 ngx_http_llmsafespace_limit_redis_handler, w);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    ctx = ngx_http_get_module_ctx(w->request, ngx_http_llmsafespace_module);
    ctx->redis_cmd = cmd;

    return NGX_OK;
}


static void
ngx_http_llmsafespace_limit_redis_handler(void *data, redisReply *reply,
    ngx_int_t rc)
{
    ngx_http_llmsafespace_limit_wait_t *w = data;

    ngx_http_request_t           *r;
    ngx_http_llmsafespace_ctx_t  *ctx;

    r = w->request;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);

    ctx->redis_cmd = NULL;

    if (rc == NGX_OK
        && reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
        && !w->eval)
    {
        w->eval = 1;

        if (ngx_http_llmsafespace_limit_send(w) == NGX_OK) {
            return;
        }

        rc = NGX_ERROR;
    }

    if (rc == NGX_OK) {
        ctx->limit_rc = ngx_http_llmsafespace_limit_redis_result(w, reply);

    } else {
        ctx->limit_rc = ngx_http_llmsafespace_limit_unavailable(r);
    }

    if (ctx->limit_rc != NGX_OK) {
        ngx_http_llmsafespace_limit_refund(w);
    }

    ngx_http_llmsafespace_wake(r);
}


/* The script's reply, checked: Redis is another process, not our memory. */

static ngx_int_t
ngx_http_llmsafespace_limit_redis_result(ngx_http_llmsafespace_limit_wait_t *w,
    redisReply *reply)
{
    long long                              v[4];
    ngx_uint_t                             i;
    ngx_http_request_t                    *r;
    ngx_http_llmsafespace_ctx_t           *ctx;
    ngx_http_llmsafespace_limit_result_t  *res;

    r = w->request;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    res = &ctx->limit;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        goto invalid;
    }

    for (i = 0; i < 4; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER
            || reply->element[i]->integer < 0
            || reply->element[i]->integer > 1000000000000LL)
        {
            goto invalid;
        }

        v[i] = reply->element[i]->integer;
    }

    if (v[0] > 1
        || (ngx_uint_t) v[1] > ngx_max(w->lctx->zone.burst,
                                       w->lctx->zone.user_burst))
    {
        goto invalid;
    }

    if (v[0] == 0) {
        res->remaining = 0;
        res->reset = (time_t) ((v[2] + 999) / 1000);
        res->retry_after = (time_t) ((v[3] + 999) / 1000);

        if (res->retry_after == 0) {
            res->retry_after = 1;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llmsafespace: limiting requests of \"%V\" "
                      "by the cluster-wide budget", &w->bucket[0].key);

        ngx_http_llmsafespace_metrics_rate_limited(ctx->route_class);

        return NGX_HTTP_TOO_MANY_REQUESTS;
    }

    /* both budgets allowed it: report the tighter one */

    res->remaining = ngx_min(res->remaining, (ngx_uint_t) v[1]);
    res->reset = ngx_max(res->reset, (time_t) ((v[2] + 999) / 1000));
    res->retry_after = 0;

    return NGX_OK;

invalid:

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: redis rate limit script failed: %*s",
                      (size_t) reply->len, reply->str);

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: unexpected reply of the redis rate "
                      "limit script (type %d)", reply->type);
    }

    return ngx_http_llmsafespace_limit_unavailable(r);
}


/* Redis cannot say: the configured policy decides. */

static ngx_int_t
ngx_http_llmsafespace_limit_unavailable(ngx_http_request_t *r)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->limit_redis_down == NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_REFUSE) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    /* ctx->limit still holds the local verdict, which allowed it */
    return NGX_OK;
}
