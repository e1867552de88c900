
/*
 * Copyright (C) LLMSafeSpace
 *
 * Rate limiting per API key and route class with GCRA (the generic cell
 * rate algorithm): a key's whole state is one "theoretical arrival time",
 * so a check is one read and one write, in shared memory for this gateway
 * and in one atomic Lua script in Redis for all replicas together.
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
    ngx_http_llmsafespace_limit_sh_t     *sh;
    ngx_slab_pool_t                      *shpool;
    ngx_str_t                             file;       /* first use, for */
    ngx_uint_t                            line;       /* "unknown zone" */
} ngx_http_llmsafespace_limit_ctx_t;


/* one Redis check in flight, in the request's pool */
typedef struct {
    ngx_http_request_t                   *request;
    ngx_http_llmsafespace_limit_ctx_t    *lctx;
    ngx_str_t                             local;      /* zone key */
    ngx_str_t                             key;        /* Redis key */
    u_char                                interval[NGX_INT64_LEN];
    size_t                                interval_len;
    u_char                                limit[NGX_INT_T_LEN];
    size_t                                limit_len;
    ngx_uint_t                            eval;       /* EVAL sent */
} ngx_http_llmsafespace_limit_wait_t;


static ngx_http_llmsafespace_limit_ctx_t *ngx_http_llmsafespace_limit_get(
    ngx_conf_t *cf, ngx_str_t *name);
static ngx_int_t ngx_http_llmsafespace_limit_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llmsafespace_limit_rbtree_insert(
    ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_llmsafespace_limit_local(
    ngx_http_llmsafespace_limit_ctx_t *lctx, ngx_str_t *key,
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
 * KEYS[1] the key; ARGV[1] the interval between requests (us), ARGV[2] the
 * limit (burst + 1).  Redis' clock is the one all replicas agree on.
 * Returns {allowed, remaining, reset ms, retry after ms}.
 */
static ngx_str_t  ngx_http_llmsafespace_limit_script = ngx_string(
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local tau = interval * tonumber(ARGV[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or now\n"
    "if tat < now then tat = now end\n"
    "local new = tat + interval\n"
    "if new > now + tau then\n"
    "  return {0, 0, math.ceil((tat - now) / 1000),\n"
    "          math.ceil((new - tau - now) / 1000)}\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%d', new),\n"
    "           'PX', math.ceil((new - now) / 1000))\n"
    "return {1, math.floor((now + tau - new) / interval),\n"
    "        math.ceil((new - now) / 1000), 0}\n");

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
    ngx_int_t                           rate, scale, burst;
    ngx_str_t                          *value, name, s;
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

            len = value[i].len;
            p = value[i].data + len - 3;

            if (len > 8 && ngx_strncmp(p, "r/s", 3) == 0) {
                scale = 1;
                len -= 3;

            } else if (len > 8 && ngx_strncmp(p, "r/m", 3) == 0) {
                scale = 60;
                len -= 3;

            } else {
                len = 0;
            }

            rate = len ? ngx_atoi(value[i].data + 5, len - 5) : NGX_ERROR;

            if (rate <= 0 || rate > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid rate \"%V\" "
                                   "(expected Nr/s or Nr/m)",
                                   &value[0], &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {

            burst = ngx_atoi(value[i].data + 6, value[i].len - 6);

            if (burst == NGX_ERROR || burst > 1000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid burst \"%V\"",
                                   &value[0], &value[i]);
                return NGX_CONF_ERROR;
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

    lctx->zone.rate = rate * 1000 / scale;
    lctx->zone.burst = burst;
    lctx->interval = (uint64_t) 1000000 * scale / rate;

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
    u_char                              *p;
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

    /* without an authenticated key, the client address is the key */

    key = ctx->identity.key_id;

    if (key.len == 0) {
        key = r->connection->addr_text;
    }

    if (key.len == 0 || key.len > NGX_HTTP_LLMSAFESPACE_LIMIT_KEY_MAX) {
        return NGX_DECLINED;
    }

    rc = ngx_http_llmsafespace_limit_local(lctx, &key, &ctx->limit,
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

    w = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_limit_wait_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->request = r;
    w->lctx = lctx;
    w->local = key;

    w->key.len = sizeof("lss:rl::") - 1 + lctx->zone.name.len + key.len;
    w->key.data = ngx_pnalloc(r->pool, w->key.len);
    if (w->key.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(w->key.data, "lss:rl:", sizeof("lss:rl:") - 1);
    p = ngx_cpymem(p, lctx->zone.name.data, lctx->zone.name.len);
    *p++ = ':';
    ngx_memcpy(p, key.data, key.len);

    w->interval_len = ngx_sprintf(w->interval, "%uL", lctx->interval)
                      - w->interval;
    w->limit_len = ngx_sprintf(w->limit, "%ui", lctx->zone.burst + 1)
                   - w->limit;

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
 * GCRA: a request is allowed when the theoretical arrival time, advanced
 * by one interval, stays within (burst + 1) intervals of now.
 */

static ngx_int_t
ngx_http_llmsafespace_limit_local(ngx_http_llmsafespace_limit_ctx_t *lctx,
    ngx_str_t *key, ngx_http_llmsafespace_limit_result_t *res,
    ngx_log_t *log)
{
    size_t                               size;
    uint32_t                             hash;
    uint64_t                             now, tat, next, tau, interval;
    ngx_http_llmsafespace_limit_node_t  *ln;

    /* ngx_current_msec is monotonic and shared by every worker */
    now = (uint64_t) ngx_current_msec * 1000;

    interval = lctx->interval;
    tau = interval * (lctx->zone.burst + 1);

    hash = ngx_crc32_short(key->data, key->len);

    ngx_shmtx_lock(&lctx->shpool->mutex);

    ngx_http_llmsafespace_limit_expire(lctx, now, 1);

    ln = ngx_http_llmsafespace_limit_lookup(lctx, key, hash);

    tat = (ln && ln->tat > now) ? ln->tat : now;
    next = tat + interval;

    res->limit = lctx->zone.burst + 1;

    if (next > now + tau && ln) {
        ngx_queue_remove(&ln->queue);
        ngx_queue_insert_head(&lctx->sh->queue, &ln->queue);

        ngx_shmtx_unlock(&lctx->shpool->mutex);

        res->remaining = 0;
        res->reset = (time_t) ((tat - now + 999999) / 1000000);
        res->retry_after = (time_t) ((next - tau - now + 999999) / 1000000);

        if (res->retry_after == 0) {
            res->retry_after = 1;
        }

        return NGX_HTTP_TOO_MANY_REQUESTS;
    }

    if (ln == NULL) {
        size = offsetof(ngx_http_llmsafespace_limit_node_t, data) + key->len;

        ln = ngx_slab_alloc_locked(lctx->shpool, size);

        if (ln == NULL) {
            ngx_http_llmsafespace_limit_expire(lctx, now, 0);

            ln = ngx_slab_alloc_locked(lctx->shpool, size);
        }

        if (ln == NULL) {
            /* a key whose state cannot be kept yet is on a fresh budget */
            ngx_shmtx_unlock(&lctx->shpool->mutex);

            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "llmsafespace_limit_zone \"%V\" is full",
                          &lctx->zone.name);
            goto allowed;
        }

        ln->node.key = hash;
        ln->len = (u_short) key->len;
        ngx_memcpy(ln->data, key->data, key->len);

        ngx_rbtree_insert(&lctx->sh->rbtree, &ln->node);

    } else {
        ngx_queue_remove(&ln->queue);
    }

    ngx_queue_insert_head(&lctx->sh->queue, &ln->queue);

    ln->tat = next;

    ngx_shmtx_unlock(&lctx->shpool->mutex);

allowed:

    res->remaining = (ngx_uint_t) ((now + tau - next) / interval);
    res->reset = (time_t) ((next - now + 999999) / 1000000);
    res->retry_after = 0;

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
    uint64_t                             now;
    ngx_http_llmsafespace_limit_ctx_t   *lctx;
    ngx_http_llmsafespace_limit_node_t  *ln;

    lctx = w->lctx;
    now = (uint64_t) ngx_current_msec * 1000;

    ngx_shmtx_lock(&lctx->shpool->mutex);

    ln = ngx_http_llmsafespace_limit_lookup(lctx, &w->local,
                                 ngx_crc32_short(w->local.data, w->local.len));

    if (ln && ln->tat > now) {
        ln->tat = (ln->tat - now > lctx->interval) ? ln->tat - lctx->interval
                                                   : now;
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
    const char                          *argv[6];
    size_t                               argvlen[6];
    ngx_http_llmsafespace_ctx_t         *ctx;
    ngx_http_llmsafespace_redis_cmd_t   *cmd;

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

    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (const char *) w->key.data;
    argvlen[3] = w->key.len;
    argv[4] = (const char *) w->interval;
    argvlen[4] = w->interval_len;
    argv[5] = (const char *) w->limit;
    argvlen[5] = w->limit_len;

    cmd = ngx_http_llmsafespace_redis_command(6, argv, argvlen,
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

    if (v[0] > 1 || (ngx_uint_t) v[1] > w->lctx->zone.burst) {
        goto invalid;
    }

    res->limit = w->lctx->zone.burst + 1;

    if (v[0] == 0) {
        res->remaining = 0;
        res->reset = (time_t) ((v[2] + 999) / 1000);
        res->retry_after = (time_t) ((v[3] + 999) / 1000);

        if (res->retry_after == 0) {
            res->retry_after = 1;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llmsafespace: limiting requests of \"%V\" "
                      "by the cluster-wide budget", &w->key);

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
