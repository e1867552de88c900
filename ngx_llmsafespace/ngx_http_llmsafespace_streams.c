
/*
 * Copyright (C) LLMSafeSpace
 *
 * Open WebSocket streams per sandbox.  The runner serves each stream with
 * a thread of its own, inside the sandbox's pids limit: hundreds of
 * streams on one sandbox all got their 101 and then left the runner
 * unable to start a thread or a process for anyone.  Streams are counted
 * here, in a shared zone (every worker's streams, an rbtree of sandbox
 * ids like ngx_http_limit_conn_module's), and one past
 * "llmsafespace_stream_limit" is refused before it reaches the runner.
 * A stream's count goes with its request's pool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"


#define NGX_HTTP_LLMSAFESPACE_STREAMS_SIZE    (1024 * 1024)


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
} ngx_http_llmsafespace_streams_sh_t;


typedef struct {
    ngx_http_llmsafespace_streams_sh_t  *sh;
    ngx_slab_pool_t                     *shpool;
} ngx_http_llmsafespace_streams_t;


typedef struct {
    ngx_str_node_t                  sn;
    ngx_uint_t                      count;
    u_char                          id[1];
} ngx_http_llmsafespace_stream_node_t;


typedef struct {
    ngx_shm_zone_t                 *zone;
    ngx_http_llmsafespace_stream_node_t  *node;
} ngx_http_llmsafespace_stream_cleanup_t;


static ngx_int_t ngx_http_llmsafespace_streams_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llmsafespace_streams_release(void *data);


/* llmsafespace_stream_limit N; 0: no limit */

char *
ngx_http_llmsafespace_stream_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (lmcf->stream_limit != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);
    if (n == NGX_ERROR || n > 100000) {
        return "has an invalid value (0 to 100000; 0: no limit)";
    }

    lmcf->stream_limit = n;

    return NGX_CONF_OK;
}


/* called at init_main_conf, once the limit is known */

ngx_int_t
ngx_http_llmsafespace_streams_init_conf(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf)
{
    ngx_str_t                         name;
    ngx_shm_zone_t                   *zone;
    ngx_http_llmsafespace_streams_t  *ctx;

    if (lmcf->stream_limit == 0) {
        return NGX_OK;
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_llmsafespace_streams_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&name, "llmsafespace_streams");

    zone = ngx_shared_memory_add(cf, &name,
                                 NGX_HTTP_LLMSAFESPACE_STREAMS_SIZE,
                                 &ngx_http_llmsafespace_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_llmsafespace_streams_init_zone;
    zone->data = ctx;

    lmcf->streams = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_streams_init_zone(ngx_shm_zone_t *shm_zone,
    void *data)
{
    ngx_http_llmsafespace_streams_t  *octx = data;

    ngx_http_llmsafespace_streams_t  *ctx;

    ctx = shm_zone->data;

    if (octx) {
        /* a reload: the open streams stay counted */
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_alloc(ctx->shpool,
                             sizeof(ngx_http_llmsafespace_streams_sh_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

    ngx_rbtree_init(&ctx->sh->rbtree, &ctx->sh->sentinel,
                    ngx_str_rbtree_insert_value);

    ctx->shpool->log_nomem = 0;

    return NGX_OK;
}


/*
 * Counts a stream of sandbox "id" for as long as the request lives:
 * NGX_OK, NGX_DECLINED when the sandbox has its limit of streams open,
 * NGX_ERROR when the zone is full.
 */

ngx_int_t
ngx_http_llmsafespace_streams_acquire(ngx_http_request_t *r, ngx_str_t *id)
{
    uint32_t                                 hash;
    ngx_pool_cleanup_t                      *cln;
    ngx_http_llmsafespace_streams_t         *ctx;
    ngx_http_llmsafespace_stream_node_t     *node;
    ngx_http_llmsafespace_main_conf_t       *lmcf;
    ngx_http_llmsafespace_stream_cleanup_t  *sc;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    if (lmcf->streams == NULL) {
        return NGX_OK;
    }

    ctx = lmcf->streams->data;

    cln = ngx_pool_cleanup_add(r->pool,
                             sizeof(ngx_http_llmsafespace_stream_cleanup_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    hash = ngx_crc32_short(id->data, id->len);

    ngx_shmtx_lock(&ctx->shpool->mutex);

    node = (ngx_http_llmsafespace_stream_node_t *)
               ngx_str_rbtree_lookup(&ctx->sh->rbtree, id, hash);

    if (node == NULL) {
        node = ngx_slab_alloc_locked(ctx->shpool,
                          sizeof(ngx_http_llmsafespace_stream_node_t)
                          + id->len);
        if (node == NULL) {
            ngx_shmtx_unlock(&ctx->shpool->mutex);

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llmsafespace: the streams zone is full");
            return NGX_ERROR;
        }

        node->sn.node.key = hash;
        node->sn.str.len = id->len;
        node->sn.str.data = node->id;
        ngx_memcpy(node->id, id->data, id->len);
        node->count = 0;

        ngx_rbtree_insert(&ctx->sh->rbtree, &node->sn.node);

    } else if (node->count >= lmcf->stream_limit) {
        ngx_shmtx_unlock(&ctx->shpool->mutex);
        return NGX_DECLINED;
    }

    node->count++;

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    sc = cln->data;
    sc->zone = lmcf->streams;
    sc->node = node;

    cln->handler = ngx_http_llmsafespace_streams_release;

    return NGX_OK;
}


static void
ngx_http_llmsafespace_streams_release(void *data)
{
    ngx_http_llmsafespace_stream_cleanup_t  *sc = data;

    ngx_http_llmsafespace_streams_t      *ctx;
    ngx_http_llmsafespace_stream_node_t  *node;

    ctx = sc->zone->data;
    node = sc->node;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (--node->count == 0) {
        ngx_rbtree_delete(&ctx->sh->rbtree, &node->sn.node);
        ngx_slab_free_locked(ctx->shpool, node);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}
