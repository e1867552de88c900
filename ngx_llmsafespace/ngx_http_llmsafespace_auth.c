
/*
 * Copyright (C) LLMSafeSpace
 *
 * API key authentication.
 *
 * A key is "lsp_<keyid>_<secret>"; only the SHA-256 of the secret is stored
 * (PostgreSQL table api_keys, or the keys file).  Verified keys are cached
 * in a shared memory zone so every worker shares one view: an entry is
 * trusted for "ttl" seconds, then looked up again; while PostgreSQL is down
 * an entry keeps serving for at most "stale" seconds.  Revocation removes
 * the entry at once on this gateway and, through a Redis stream, on every
 * other gateway within about a second.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_auth.h"


#define NGX_HTTP_LLMSAFESPACE_KEY_OK        0
#define NGX_HTTP_LLMSAFESPACE_KEY_MISSING   1
#define NGX_HTTP_LLMSAFESPACE_KEY_REVOKED   2

/* unknown key ids are remembered briefly so guessing costs no query */
#define NGX_HTTP_LLMSAFESPACE_MISSING_TTL   5

#define NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM  "lss:keys:revoked"
#define NGX_HTTP_LLMSAFESPACE_REVOKE_POLL     1000

/* the revocations noted in the shared zone for this gateway's workers */
#define NGX_HTTP_LLMSAFESPACE_REVOKED_RING    256


typedef struct {
    u_char                          color;
    u_char                          state;
    u_char                          pad[2];
    time_t                          fetched;
    ngx_queue_t                     queue;
    ngx_http_llmsafespace_key_t     key;
} ngx_http_llmsafespace_cache_node_t;


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     queue;
    ngx_uint_t                      revoked_seq;  /* noted, ever */
    u_char                          revoked[NGX_HTTP_LLMSAFESPACE_REVOKED_RING]
                                       [NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN];
} ngx_http_llmsafespace_cache_sh_t;


typedef struct {
    ngx_http_llmsafespace_cache_sh_t  *sh;
    ngx_slab_pool_t                   *shpool;
} ngx_http_llmsafespace_cache_t;


static ngx_int_t ngx_http_llmsafespace_hex_decode(u_char *dst, u_char *src,
    size_t len);
static ngx_uint_t ngx_http_llmsafespace_hex_digit(u_char c);
static ngx_int_t ngx_http_llmsafespace_parse_key(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *key_id, u_char *hash);
static ngx_int_t ngx_http_llmsafespace_key_find(ngx_str_t *key_id,
    ngx_http_llmsafespace_key_t *key, ngx_uint_t *state, time_t *fetched);
static void ngx_http_llmsafespace_key_store(ngx_str_t *key_id,
    ngx_http_llmsafespace_key_t *key, ngx_uint_t state);
static void ngx_http_llmsafespace_key_forget(ngx_str_t *key_id);
static ngx_int_t ngx_http_llmsafespace_verify(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_key_t *key,
    ngx_uint_t state, u_char *hash);
static ngx_int_t ngx_http_llmsafespace_lookup(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *key_id);
static void ngx_http_llmsafespace_lookup_done(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_llmsafespace_auth_fail(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message);
static void ngx_http_llmsafespace_touch_key(ngx_str_t *key_id);
static void ngx_http_llmsafespace_ignore_result(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_llmsafespace_cache_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static void ngx_http_llmsafespace_revoke_poll(ngx_event_t *ev);
static void ngx_http_llmsafespace_revoke_start(void *data,
    redisReply *reply, ngx_int_t rc);
static void ngx_http_llmsafespace_revoke_apply(redisReply *entries,
    ngx_uint_t newest_first);
static void ngx_http_llmsafespace_revoke_read(void *data, redisReply *reply,
    ngx_int_t rc);
static void ngx_http_llmsafespace_ignore_reply(void *data,
    redisReply *reply, ngx_int_t rc);
static void ngx_http_llmsafespace_recheck_done(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_llmsafespace_revoked_note(ngx_str_t *key_id);


static ngx_shm_zone_t                     *ngx_http_llmsafespace_cache_zone;
static ngx_http_llmsafespace_main_conf_t  *ngx_http_llmsafespace_auth_conf;
static ngx_event_t                         ngx_http_llmsafespace_revoke_ev;
static ngx_http_llmsafespace_redis_cmd_t  *ngx_http_llmsafespace_revoke_cmd;
static u_char   ngx_http_llmsafespace_revoke_last[NGX_INT64_LEN + 24];
static ngx_uint_t  ngx_http_llmsafespace_revoked_seen;

static ngx_str_t  ngx_http_llmsafespace_default_zone =
    ngx_string("llmsafespace_keys");


static const char  ngx_http_llmsafespace_lookup_sql[] =
    "SELECT k.secret_hash, k.revoked_at IS NOT NULL, u.id, u.name, u.role, "
    "u.deleted_at IS NOT NULL "
    "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1";

/* whether a key in use may go on: no row, or revoked, says no */
static const char  ngx_http_llmsafespace_recheck_sql[] =
    "SELECT k.revoked_at IS NULL AND u.deleted_at IS NULL "
    "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1";

static const char  ngx_http_llmsafespace_touch_sql[] =
    "UPDATE api_keys SET last_used_at = now() WHERE id = $1";


/* llmsafespace_keys_file PATH; lines: keyid:sha256hex:user_id:name:role */

char *
ngx_http_llmsafespace_keys_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t *lmcf = conf;

    u_char                       *p, *last, *line, *end, *field[5];
    size_t                        len[5];
    ssize_t                       n;
    ngx_fd_t                      fd;
    ngx_str_t                    *value, name;
    ngx_uint_t                    i, lineno;
    ngx_file_info_t               fi;
    ngx_http_llmsafespace_key_t  *key;

    if (lmcf->keys_file.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    lmcf->keys_file = name;

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "llmsafespace_keys_file: cannot open \"%V\"",
                           &name);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 16 * 1024 * 1024)
    {
        ngx_close_file(fd);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_keys_file: \"%V\" is not a "
                           "readable file of at most 16M", &name);
        return NGX_CONF_ERROR;
    }

    p = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);
    if (p == NULL) {
        ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_read_fd(fd, p, ngx_file_size(&fi));
    ngx_close_file(fd);

    if (n != (ssize_t) ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "llmsafespace_keys_file: cannot read \"%V\"",
                           &name);
        return NGX_CONF_ERROR;
    }

    last = p + n;

    lmcf->file_keys = ngx_array_create(cf->pool, 16,
                                       sizeof(ngx_http_llmsafespace_key_t));
    if (lmcf->file_keys == NULL) {
        return NGX_CONF_ERROR;
    }

    for (lineno = 1; p < last; lineno++, p = end + 1) {

        end = ngx_strlchr(p, last, '\n');
        if (end == NULL) {
            end = last;
        }

        line = p;

        while (line < end && (*line == ' ' || *line == '\t')) {
            line++;
        }

        if (line == end || *line == '#' || *line == '\r') {
            continue;
        }

        for (i = 0; i < 5; i++) {
            field[i] = line;

            while (line < end && *line != ':' && *line != '\r') {
                line++;
            }

            len[i] = line - field[i];

            if (i < 4) {
                if (line == end || *line != ':') {
                    goto invalid;
                }

                line++;
            }
        }

        if (len[0] != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN
            || len[1] != NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN
            || len[2] == 0 || len[2] > NGX_HTTP_LLMSAFESPACE_NAME_LEN
            || len[3] == 0 || len[3] > NGX_HTTP_LLMSAFESPACE_NAME_LEN)
        {
            goto invalid;
        }

        key = ngx_array_push(lmcf->file_keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(key, sizeof(ngx_http_llmsafespace_key_t));

        ngx_memcpy(key->key_id, field[0], len[0]);

        if (ngx_http_llmsafespace_hex_decode(key->hash, field[1], len[1])
            != NGX_OK)
        {
            goto invalid;
        }

        key->user_len = len[2];
        ngx_memcpy(key->user_id, field[2], len[2]);
        key->name_len = len[3];
        ngx_memcpy(key->user_name, field[3], len[3]);

        if (len[4] == 5 && ngx_strncmp(field[4], "admin", 5) == 0) {
            key->role = NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN;

        } else if (len[4] == 4 && ngx_strncmp(field[4], "user", 4) == 0) {
            key->role = NGX_HTTP_LLMSAFESPACE_ROLE_USER;

        } else {
            goto invalid;
        }

        continue;

    invalid:

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_keys_file: invalid entry in "
                           "\"%V\" line %ui, expected "
                           "\"keyid:sha256hex:user_id:user_name:admin|user\"",
                           &name, lineno);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* llmsafespace_key_cache zone=NAME:SIZE [ttl=TIME] [stale=TIME]; */

char *
ngx_http_llmsafespace_key_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t *lmcf = conf;

    u_char     *p;
    ssize_t     size;
    ngx_str_t  *value, name, s;
    ngx_uint_t  i;

    if (lmcf->key_cache) {
        return "is duplicate";
    }

    value = cf->args->elts;
    size = 0;
    name.len = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;
            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llmsafespace_key_cache: invalid zone "
                                   "\"%V\", expected NAME:SIZE", &value[i]);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR || name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llmsafespace_key_cache: invalid zone "
                                   "\"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llmsafespace_key_cache: zone \"%V\" is "
                                   "too small", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "ttl=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            lmcf->key_ttl = ngx_parse_time(&s, 1);
            if (lmcf->key_ttl == (time_t) NGX_ERROR || lmcf->key_ttl == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llmsafespace_key_cache: invalid ttl "
                                   "\"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "stale=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            lmcf->key_stale = ngx_parse_time(&s, 1);
            if (lmcf->key_stale == (time_t) NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "llmsafespace_key_cache: invalid stale "
                                   "\"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_key_cache: invalid parameter "
                           "\"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_key_cache: \"zone\" is required");
        return NGX_CONF_ERROR;
    }

    lmcf->key_cache = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_llmsafespace_module);
    if (lmcf->key_cache == NULL) {
        return NGX_CONF_ERROR;
    }

    if (lmcf->key_cache->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_key_cache: zone \"%V\" is already "
                           "used", &name);
        return NGX_CONF_ERROR;
    }

    lmcf->key_cache->init = ngx_http_llmsafespace_cache_init_zone;
    lmcf->key_cache->data = ngx_pcalloc(cf->pool,
                                        sizeof(ngx_http_llmsafespace_cache_t));

    return lmcf->key_cache->data ? NGX_CONF_OK : NGX_CONF_ERROR;
}


/* without "llmsafespace_key_cache", PostgreSQL keys get a 1M zone */

ngx_int_t
ngx_http_llmsafespace_auth_init(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf)
{
    if (lmcf->key_cache || lmcf->pg.conninfo.len == 0) {
        return NGX_OK;
    }

    lmcf->key_cache = ngx_shared_memory_add(cf,
                                        &ngx_http_llmsafespace_default_zone,
                                        1024 * 1024,
                                        &ngx_http_llmsafespace_module);
    if (lmcf->key_cache == NULL) {
        return NGX_ERROR;
    }

    if (lmcf->key_cache->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &ngx_http_llmsafespace_default_zone);
        return NGX_ERROR;
    }

    lmcf->key_cache->init = ngx_http_llmsafespace_cache_init_zone;
    lmcf->key_cache->data = ngx_pcalloc(cf->pool,
                                        sizeof(ngx_http_llmsafespace_cache_t));

    return lmcf->key_cache->data ? NGX_OK : NGX_ERROR;
}


static ngx_int_t
ngx_http_llmsafespace_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llmsafespace_cache_t  *ocache = data;

    size_t                          len;
    ngx_http_llmsafespace_cache_t  *cache;

    cache = shm_zone->data;

    /* on reload the zone and its entries stay */

    if (ocache) {
        cache->sh = ocache->sh;
        cache->shpool = ocache->shpool;
        return NGX_OK;
    }

    cache->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        cache->sh = cache->shpool->data;
        return NGX_OK;
    }

    cache->sh = ngx_slab_alloc(cache->shpool,
                               sizeof(ngx_http_llmsafespace_cache_sh_t));
    if (cache->sh == NULL) {
        return NGX_ERROR;
    }

    cache->shpool->data = cache->sh;

    cache->sh->revoked_seq = 0;

    ngx_rbtree_init(&cache->sh->rbtree, &cache->sh->sentinel,
                    ngx_rbtree_insert_value);

    ngx_queue_init(&cache->sh->queue);

    len = sizeof(" in llmsafespace key cache \"\"") + shm_zone->shm.name.len;

    cache->shpool->log_ctx = ngx_slab_alloc(cache->shpool, len);
    if (cache->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(cache->shpool->log_ctx, " in llmsafespace key cache \"%V\"%Z",
                &shm_zone->shm.name);

    cache->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_llmsafespace_auth_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_main_conf_t *lmcf)
{
    ngx_http_llmsafespace_cache_t  *cache;

    ngx_http_llmsafespace_auth_conf = lmcf;
    ngx_http_llmsafespace_cache_zone = lmcf->key_cache;

    /* revocations noted before this worker started end nothing of it */

    if (lmcf->key_cache) {
        cache = lmcf->key_cache->data;

        ngx_shmtx_lock(&cache->shpool->mutex);
        ngx_http_llmsafespace_revoked_seen = cache->sh->revoked_seq;
        ngx_shmtx_unlock(&cache->shpool->mutex);
    }

    if (lmcf->redis.addr == NULL || lmcf->key_cache == NULL) {
        return NGX_OK;
    }

    /*
     * Where to start reading revocations is asked of Redis, not derived
     * from this host's clock: stream ids carry Redis' time, and a clock
     * ahead of it would skip revocations.  The newest entries found then
     * are applied too (forgetting a valid key only costs a lookup), so
     * nothing revoked while this worker started is missed.
     */

    ngx_http_llmsafespace_revoke_last[0] = '\0';

    ngx_http_llmsafespace_revoke_ev.handler =
                                          ngx_http_llmsafespace_revoke_poll;
    ngx_http_llmsafespace_revoke_ev.log = cycle->log;
    ngx_http_llmsafespace_revoke_ev.data = lmcf;
    ngx_http_llmsafespace_revoke_ev.cancelable = 1;

    ngx_add_timer(&ngx_http_llmsafespace_revoke_ev,
                  NGX_HTTP_LLMSAFESPACE_REVOKE_POLL);

    return NGX_OK;
}


void
ngx_http_llmsafespace_auth_exit_process(ngx_cycle_t *cycle)
{
    if (ngx_http_llmsafespace_revoke_ev.timer_set) {
        ngx_del_timer(&ngx_http_llmsafespace_revoke_ev);
    }

    if (ngx_http_llmsafespace_revoke_cmd) {
        ngx_http_llmsafespace_redis_cancel(ngx_http_llmsafespace_revoke_cmd);
        ngx_http_llmsafespace_revoke_cmd = NULL;
    }
}


ngx_int_t
ngx_http_llmsafespace_authenticate(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx)
{
    time_t                              fetched;
    u_char                              hash[NGX_HTTP_LLMSAFESPACE_HASH_LEN];
    ngx_int_t                           rc;
    ngx_str_t                           key_id;
    ngx_uint_t                          i, state;
    ngx_http_llmsafespace_key_t        *key, found;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    rc = ngx_http_llmsafespace_parse_key(r, ctx, &key_id, hash);

    if (rc != NGX_OK) {
        return ngx_http_llmsafespace_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                   "unauthorized",
                   rc == NGX_DECLINED ? "missing API key: send "
                                        "\"Authorization: Bearer <key>\""
                   : rc == NGX_DONE ? "an API key in the query is taken "
                                      "only by the WebSocket upgrade of "
                                      "/sandboxes/{id}/stream: send "
                                      "\"Authorization: Bearer <key>\""
                   : "invalid API key");
    }

    if (lmcf->file_keys) {
        key = lmcf->file_keys->elts;

        for (i = 0; i < lmcf->file_keys->nelts; i++) {
            if (ngx_memcmp(key[i].key_id, key_id.data, key_id.len) == 0) {
                return ngx_http_llmsafespace_verify(r, ctx, &key[i],
                                             NGX_HTTP_LLMSAFESPACE_KEY_OK,
                                             hash);
            }
        }

        return ngx_http_llmsafespace_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                               "unauthorized",
                                               "invalid API key");
    }

    /* a lookup has finished: its verdict is in ctx */

    if (ctx->auth_rc != 0) {
        rc = ctx->auth_rc;
        ctx->auth_rc = 0;

        if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
            return ngx_http_llmsafespace_auth_fail(r, ctx, rc, "unavailable",
                                        "the API key store is unavailable, "
                                        "retry later");
        }

        return ngx_http_llmsafespace_verify(r, ctx, &ctx->looked_up,
                                            (ngx_uint_t) rc - 1, hash);
    }

    rc = ngx_http_llmsafespace_key_find(&key_id, &found, &state, &fetched);

    if (rc == NGX_OK) {
        if (state == NGX_HTTP_LLMSAFESPACE_KEY_MISSING
            ? ngx_time() - fetched < NGX_HTTP_LLMSAFESPACE_MISSING_TTL
            : ngx_time() - fetched < lmcf->key_ttl)
        {
            return ngx_http_llmsafespace_verify(r, ctx, &found, state, hash);
        }

        /* stale: kept in ctx in case PostgreSQL cannot answer */

        ctx->looked_up = found;
        ctx->looked_up_state = state;
        ctx->looked_up_fetched = fetched;
        ctx->have_stale = 1;
    }

    return ngx_http_llmsafespace_lookup(r, ctx, &key_id);
}


/*
 * The one definition of the query argument that carries an API key: an
 * argument whose name, with %XX decoded, is "token" in any case.  The
 * lookup (ctx->query_key, taken by the post-read handler), the redaction
 * of all that nginx logs and the stripping of the runner's URL all use
 * it, so no spelling can be accepted as a key and yet escape the other
 * two.  "arg" is where an argument starts (after '?' or '&'); the name
 * ends at '=', '&', ' ' or "last".  Returns the length of the name and
 * its '=', or 0 for another argument.
 */

size_t
ngx_http_llmsafespace_token_arg(u_char *arg, u_char *last)
{
    u_char      c, hi, lo, *p;
    ngx_uint_t  i;

    static u_char  name[] = "token";

    p = arg;

    for (i = 0; p < last && *p != '=' && *p != '&' && *p != ' '; i++) {
        c = *p++;

        if (c == '%' && last - p >= 2) {
            hi = ngx_http_llmsafespace_hex_digit(p[0]);
            lo = ngx_http_llmsafespace_hex_digit(p[1]);

            if (hi != 0xff && lo != 0xff) {
                c = (u_char) (hi << 4 | lo);
                p += 2;
            }
        }

        if (i == sizeof(name) - 1 || ngx_tolower(c) != name[i]) {
            return 0;
        }
    }

    if (i != sizeof(name) - 1) {
        return 0;
    }

    if (p < last && *p == '=') {
        p++;
    }

    return p - arg;
}


/*
 * Finds the key in "Authorization: Bearer", or in the query argument of
 * an upgrade to a WebSocket on the stream route (browsers cannot set
 * headers there; no other route takes a key in the query).  NGX_DECLINED:
 * no key at all; NGX_DONE: a key in the query where none is taken;
 * NGX_ERROR: not a well-formed key.
 */

static ngx_int_t
ngx_http_llmsafespace_parse_key(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *key_id, u_char *hash)
{
    u_char     *p;
    ngx_str_t   key;
    ngx_uint_t  i;

    key.len = 0;

    if (r->headers_in.authorization) {
        key = r->headers_in.authorization->value;

        if (key.len < sizeof("Bearer ") - 1
            || ngx_strncasecmp(key.data, (u_char *) "Bearer ",
                               sizeof("Bearer ") - 1) != 0)
        {
            return NGX_ERROR;
        }

        key.data += sizeof("Bearer ") - 1;
        key.len -= sizeof("Bearer ") - 1;

        while (key.len && key.data[0] == ' ') {
            key.data++;
            key.len--;
        }

    } else if (ctx->query_key.data) {

        if (!ctx->stream
            || r->headers_in.upgrade == NULL
            || r->headers_in.upgrade->value.len != 9
            || ngx_strncasecmp(r->headers_in.upgrade->value.data,
                               (u_char *) "websocket", 9) != 0)
        {
            return NGX_DONE;
        }

        key = ctx->query_key;
    }

    if (key.len == 0) {
        return NGX_DECLINED;
    }

    if (key.len != NGX_HTTP_LLMSAFESPACE_KEY_LEN
        || ngx_strncmp(key.data, "lsp_", 4) != 0
        || key.data[4 + NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN] != '_')
    {
        return NGX_ERROR;
    }

    p = key.data + 4;

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN; i++) {
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'z'))) {
            return NGX_ERROR;
        }
    }

    key_id->data = p;
    key_id->len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;

    p += NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1;

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_SECRET_LEN; i++) {
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= 'A' && p[i] <= 'Z')))
        {
            return NGX_ERROR;
        }
    }

    if (EVP_Digest(p, NGX_HTTP_LLMSAFESPACE_SECRET_LEN, hash, NULL,
                   EVP_sha256(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_verify(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_http_llmsafespace_key_t *key,
    ngx_uint_t state, u_char *hash)
{
    ngx_http_llmsafespace_identity_t  *id;

    if (state == NGX_HTTP_LLMSAFESPACE_KEY_MISSING) {
        return ngx_http_llmsafespace_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                               "unauthorized",
                                               "invalid API key");
    }

    /* the secret is checked before anything tells a revoked key apart */

    if (CRYPTO_memcmp(key->hash, hash, NGX_HTTP_LLMSAFESPACE_HASH_LEN) != 0) {
        return ngx_http_llmsafespace_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                               "unauthorized",
                                               "invalid API key");
    }

    if (state == NGX_HTTP_LLMSAFESPACE_KEY_REVOKED) {
        return ngx_http_llmsafespace_auth_fail(r, ctx, NGX_HTTP_UNAUTHORIZED,
                                               "unauthorized",
                                               "API key revoked");
    }

    id = &ctx->identity;

    id->key_id.data = ngx_pnalloc(r->pool, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN
                                           + key->user_len + key->name_len);
    if (id->key_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    id->key_id.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;
    id->user_id.data = ngx_cpymem(id->key_id.data, key->key_id,
                                  NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);
    id->user_id.len = key->user_len;
    id->user_name.data = ngx_cpymem(id->user_id.data, key->user_id,
                                    key->user_len);
    id->user_name.len = key->name_len;
    ngx_memcpy(id->user_name.data, key->user_name, key->name_len);

    id->role = key->role;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_auth_fail(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message)
{
    ctx->error_code = code;
    ctx->error_message.data = (u_char *) message;
    ctx->error_message.len = ngx_strlen(message);

    return status;
}


static ngx_int_t
ngx_http_llmsafespace_lookup(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *key_id)
{
    const char                         *values[1];
    ngx_http_llmsafespace_pg_query_t   *q;

    ngx_memcpy(ctx->key_id, key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);
    ctx->key_id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN] = '\0';

    values[0] = (const char *) ctx->key_id;

    q = ngx_http_llmsafespace_pg_query(ngx_http_llmsafespace_lookup_sql, 1,
                                       values,
                                       ngx_http_llmsafespace_lookup_done, r);
    if (q == NULL) {
        ngx_http_llmsafespace_lookup_done(r, NULL, NGX_ERROR);

        if (ctx->auth_rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
            ctx->auth_rc = 0;
            return ngx_http_llmsafespace_auth_fail(r, ctx,
                                       NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable",
                                       "the API key store is unavailable, "
                                       "retry later");
        }

        /* the stale entry answers */

        return ngx_http_llmsafespace_authenticate(r, ctx);
    }

    ctx->pg_query = q;

    return NGX_AGAIN;
}


/*
 * Stores the verdict in ctx->auth_rc as state + 1 (0 means "none yet"), or
 * NGX_HTTP_SERVICE_UNAVAILABLE when nothing can be said.
 */

static void
ngx_http_llmsafespace_lookup_done(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_http_request_t *r = data;

    char                               *v;
    size_t                              len;
    ngx_str_t                           key_id;
    ngx_uint_t                          state;
    ngx_http_llmsafespace_key_t        *key;
    ngx_http_llmsafespace_ctx_t        *ctx;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    ctx->pg_query = NULL;

    key_id.data = ctx->key_id;
    key_id.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;
    key = &ctx->looked_up;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_TUPLES_OK) {

        if (rc == NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llmsafespace: API key lookup failed: %s",
                          PQresultErrorMessage(res));
        }

        if (ctx->have_stale
            && ngx_time() - ctx->looked_up_fetched
               < lmcf->key_ttl + lmcf->key_stale
            && ctx->looked_up_state != NGX_HTTP_LLMSAFESPACE_KEY_MISSING)
        {
            ctx->auth_rc = ctx->looked_up_state + 1;

        } else {
            ctx->auth_rc = NGX_HTTP_SERVICE_UNAVAILABLE;
        }

        goto done;
    }

    ngx_memzero(key, sizeof(ngx_http_llmsafespace_key_t));

    if (PQntuples(res) == 0) {
        state = NGX_HTTP_LLMSAFESPACE_KEY_MISSING;
        goto store;
    }

    state = NGX_HTTP_LLMSAFESPACE_KEY_OK;

    v = PQgetvalue(res, 0, 0);

    if (ngx_strlen(v) != NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN
        || ngx_http_llmsafespace_hex_decode(key->hash, (u_char *) v,
                          NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llmsafespace: API key has a malformed hash");
        state = NGX_HTTP_LLMSAFESPACE_KEY_MISSING;
        goto store;
    }

    if (PQgetvalue(res, 0, 1)[0] == 't' || PQgetvalue(res, 0, 5)[0] == 't') {
        state = NGX_HTTP_LLMSAFESPACE_KEY_REVOKED;
    }

    v = PQgetvalue(res, 0, 2);
    len = ngx_min(ngx_strlen(v), NGX_HTTP_LLMSAFESPACE_NAME_LEN);
    ngx_memcpy(key->user_id, v, len);
    key->user_len = len;

    v = PQgetvalue(res, 0, 3);
    len = ngx_min(ngx_strlen(v), NGX_HTTP_LLMSAFESPACE_NAME_LEN);
    ngx_memcpy(key->user_name, v, len);
    key->name_len = len;

    key->role = ngx_strcmp(PQgetvalue(res, 0, 4), "admin") == 0
                ? NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN
                : NGX_HTTP_LLMSAFESPACE_ROLE_USER;

store:

    ngx_memcpy(key->key_id, ctx->key_id, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);

    ngx_http_llmsafespace_key_store(&key_id, key, state);

    if (state == NGX_HTTP_LLMSAFESPACE_KEY_OK) {
        ngx_http_llmsafespace_touch_key(&key_id);
    }

    ctx->auth_rc = state + 1;

done:

    if (ctx->waiting) {
        ngx_http_llmsafespace_wake(r);
    }
}


static ngx_http_llmsafespace_cache_node_t *
ngx_http_llmsafespace_cache_lookup(ngx_http_llmsafespace_cache_t *cache,
    ngx_str_t *key_id, uint32_t hash)
{
    ngx_int_t                            rc;
    ngx_rbtree_node_t                   *node, *sentinel;
    ngx_http_llmsafespace_cache_node_t  *cn;

    node = cache->sh->rbtree.root;
    sentinel = cache->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        cn = (ngx_http_llmsafespace_cache_node_t *) &node->color;

        rc = ngx_memcmp(key_id->data, cn->key.key_id, key_id->len);

        if (rc == 0) {
            return cn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_int_t
ngx_http_llmsafespace_key_find(ngx_str_t *key_id,
    ngx_http_llmsafespace_key_t *key, ngx_uint_t *state, time_t *fetched)
{
    uint32_t                             hash;
    ngx_http_llmsafespace_cache_t       *cache;
    ngx_http_llmsafespace_cache_node_t  *cn;

    if (ngx_http_llmsafespace_cache_zone == NULL) {
        return NGX_DECLINED;
    }

    cache = ngx_http_llmsafespace_cache_zone->data;
    hash = ngx_crc32_short(key_id->data, key_id->len);

    ngx_shmtx_lock(&cache->shpool->mutex);

    cn = ngx_http_llmsafespace_cache_lookup(cache, key_id, hash);

    if (cn == NULL) {
        ngx_shmtx_unlock(&cache->shpool->mutex);
        return NGX_DECLINED;
    }

    ngx_queue_remove(&cn->queue);
    ngx_queue_insert_head(&cache->sh->queue, &cn->queue);

    *key = cn->key;
    *state = cn->state;
    *fetched = cn->fetched;

    ngx_shmtx_unlock(&cache->shpool->mutex);

    return NGX_OK;
}


static void
ngx_http_llmsafespace_key_store(ngx_str_t *key_id,
    ngx_http_llmsafespace_key_t *key, ngx_uint_t state)
{
    size_t                               size;
    uint32_t                             hash;
    ngx_queue_t                         *q;
    ngx_rbtree_node_t                   *node;
    ngx_http_llmsafespace_cache_t       *cache;
    ngx_http_llmsafespace_cache_node_t  *cn;

    if (ngx_http_llmsafespace_cache_zone == NULL) {
        return;
    }

    cache = ngx_http_llmsafespace_cache_zone->data;
    hash = ngx_crc32_short(key_id->data, key_id->len);

    size = offsetof(ngx_rbtree_node_t, color)
           + sizeof(ngx_http_llmsafespace_cache_node_t);

    ngx_shmtx_lock(&cache->shpool->mutex);

    cn = ngx_http_llmsafespace_cache_lookup(cache, key_id, hash);

    if (cn == NULL) {
        node = ngx_slab_alloc_locked(cache->shpool, size);

        /* full: the least recently used entries make room */

        while (node == NULL && !ngx_queue_empty(&cache->sh->queue)) {
            q = ngx_queue_last(&cache->sh->queue);
            cn = ngx_queue_data(q, ngx_http_llmsafespace_cache_node_t, queue);

            ngx_queue_remove(q);

            node = (ngx_rbtree_node_t *)
                       ((u_char *) cn - offsetof(ngx_rbtree_node_t, color));
            ngx_rbtree_delete(&cache->sh->rbtree, node);
            ngx_slab_free_locked(cache->shpool, node);

            node = ngx_slab_alloc_locked(cache->shpool, size);
        }

        if (node == NULL) {
            ngx_shmtx_unlock(&cache->shpool->mutex);
            return;
        }

        node->key = hash;
        cn = (ngx_http_llmsafespace_cache_node_t *) &node->color;
        cn->key = *key;

        ngx_rbtree_insert(&cache->sh->rbtree, node);

    } else {
        ngx_queue_remove(&cn->queue);
        cn->key = *key;
    }

    cn->state = (u_char) state;
    cn->fetched = ngx_time();

    ngx_queue_insert_head(&cache->sh->queue, &cn->queue);

    ngx_shmtx_unlock(&cache->shpool->mutex);
}


static void
ngx_http_llmsafespace_key_forget(ngx_str_t *key_id)
{
    uint32_t                             hash;
    ngx_rbtree_node_t                   *node;
    ngx_http_llmsafespace_cache_t       *cache;
    ngx_http_llmsafespace_cache_node_t  *cn;

    if (ngx_http_llmsafespace_cache_zone == NULL
        || key_id->len != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN)
    {
        return;
    }

    cache = ngx_http_llmsafespace_cache_zone->data;
    hash = ngx_crc32_short(key_id->data, key_id->len);

    ngx_shmtx_lock(&cache->shpool->mutex);

    cn = ngx_http_llmsafespace_cache_lookup(cache, key_id, hash);

    if (cn) {
        ngx_queue_remove(&cn->queue);
        node = (ngx_rbtree_node_t *)
                   ((u_char *) cn - offsetof(ngx_rbtree_node_t, color));
        ngx_rbtree_delete(&cache->sh->rbtree, node);
        ngx_slab_free_locked(cache->shpool, node);
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);
}


/* last_used_at moves once per cache period, not once per request */

static void
ngx_http_llmsafespace_touch_key(ngx_str_t *key_id)
{
    u_char      id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1];
    const char *values[1];

    ngx_memcpy(id, key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);
    id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN] = '\0';
    values[0] = (const char *) id;

    (void) ngx_http_llmsafespace_pg_query(ngx_http_llmsafespace_touch_sql, 1,
                                          values,
                                          ngx_http_llmsafespace_ignore_result,
                                          NULL);
}


static void
ngx_http_llmsafespace_ignore_result(void *data, PGresult *res, ngx_int_t rc)
{
}


ngx_int_t
ngx_http_llmsafespace_key_generate(ngx_http_llmsafespace_new_key_t *key)
{
    static const u_char  id_chars[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    static const u_char  secret_chars[] =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

    u_char      *p, *secret;
    u_char       random[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN
                        + NGX_HTTP_LLMSAFESPACE_SECRET_LEN];
    u_char       hash[NGX_HTTP_LLMSAFESPACE_HASH_LEN];
    ngx_uint_t   i;

    if (RAND_bytes(random, sizeof(random)) != 1) {
        return NGX_ERROR;
    }

    /* 252 = 7 * 36 = 4 * 62 + 4: a bias of at most 4/256 per character */

    p = ngx_cpymem(key->key, "lsp_", 4);

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN; i++) {
        *p++ = id_chars[random[i] % 36];
    }

    *p++ = '_';
    secret = p;

    for (i = 0; i < NGX_HTTP_LLMSAFESPACE_SECRET_LEN; i++) {
        *p++ = secret_chars[random[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + i] % 62];
    }

    ngx_memcpy(key->key_id, key->key + 4, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);

    if (EVP_Digest(secret, NGX_HTTP_LLMSAFESPACE_SECRET_LEN, hash, NULL,
                   EVP_sha256(), NULL)
        != 1)
    {
        return NGX_ERROR;
    }

    ngx_hex_dump(key->hash_hex, hash, NGX_HTTP_LLMSAFESPACE_HASH_LEN);

    ngx_explicit_memzero(random, sizeof(random));

    return NGX_OK;
}


/*
 * A key that requests in flight still use is checked again, as a new
 * request would be once its cache entry is older than "ttl": a key revoked
 * where no announcement reaches (in the database directly, or while Redis
 * was down) ends its requests too, within a ttl.  A fresh cache entry
 * answers; else PostgreSQL.  Keys of a keys file are never revoked.
 */

void
ngx_http_llmsafespace_key_recheck(ngx_str_t *key_id)
{
    u_char                        *id;
    time_t                         fetched;
    ngx_uint_t                     state;
    const char                    *values[1];
    ngx_http_llmsafespace_key_t    found;

    if (ngx_http_llmsafespace_auth_conf == NULL
        || ngx_http_llmsafespace_auth_conf->pg.conninfo.len == 0
        || key_id->len != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN)
    {
        return;
    }

    if (ngx_http_llmsafespace_key_find(key_id, &found, &state, &fetched)
        == NGX_OK
        && ngx_time() - fetched < ngx_http_llmsafespace_auth_conf->key_ttl)
    {
        if (state != NGX_HTTP_LLMSAFESPACE_KEY_OK) {
            ngx_http_llmsafespace_inflight_revoked(key_id);
        }

        return;
    }

    /* outlives any request: freed by the callback, called exactly once */

    id = ngx_alloc(NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1, ngx_cycle->log);
    if (id == NULL) {
        return;
    }

    *ngx_cpymem(id, key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN) = '\0';
    values[0] = (const char *) id;

    if (ngx_http_llmsafespace_pg_query(ngx_http_llmsafespace_recheck_sql, 1,
                                       values,
                                       ngx_http_llmsafespace_recheck_done,
                                       id)
        == NULL)
    {
        /* PostgreSQL cannot say now: the next round asks again */
        ngx_free(id);
    }
}


static void
ngx_http_llmsafespace_recheck_done(void *data, PGresult *res, ngx_int_t rc)
{
    u_char  *id = data;

    ngx_str_t  key_id;

    if (rc == NGX_OK && PQresultStatus(res) == PGRES_TUPLES_OK
        && (PQntuples(res) == 0 || PQgetvalue(res, 0, 0)[0] != 't'))
    {
        key_id.data = id;
        key_id.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;

        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "llmsafespace: API key %V in use was revoked",
                      &key_id);

        ngx_http_llmsafespace_key_forget(&key_id);
        ngx_http_llmsafespace_revoked_note(&key_id);
        ngx_http_llmsafespace_inflight_revoked(&key_id);
    }

    ngx_free(id);
}


/*
 * Revocations are also noted in the key cache zone, which every worker of
 * this gateway shares, the old ones still finishing their requests after
 * a reload included: those read Redis and query PostgreSQL no more, and
 * learn here what to end (ngx_http_llmsafespace_inflight.c reads it every
 * second).  An id among the last ones noted is not noted again, so the
 * workers that each read the same Redis entry take one slot.
 */

static void
ngx_http_llmsafespace_revoked_note(ngx_str_t *key_id)
{
    ngx_uint_t                      i, n;
    ngx_http_llmsafespace_cache_t  *cache;

    if (ngx_http_llmsafespace_cache_zone == NULL
        || key_id->len != NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN)
    {
        return;
    }

    cache = ngx_http_llmsafespace_cache_zone->data;

    ngx_shmtx_lock(&cache->shpool->mutex);

    n = ngx_min(cache->sh->revoked_seq, NGX_HTTP_LLMSAFESPACE_REVOKED_RING);

    for (i = 1; i <= n; i++) {
        if (ngx_memcmp(cache->sh->revoked[(cache->sh->revoked_seq - i)
                                          % NGX_HTTP_LLMSAFESPACE_REVOKED_RING],
                       key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN)
            == 0)
        {
            ngx_shmtx_unlock(&cache->shpool->mutex);
            return;
        }
    }

    ngx_memcpy(cache->sh->revoked[cache->sh->revoked_seq
                                  % NGX_HTTP_LLMSAFESPACE_REVOKED_RING],
               key_id->data, NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);
    cache->sh->revoked_seq++;

    ngx_shmtx_unlock(&cache->shpool->mutex);
}


/* ends this worker's requests of the keys noted since it last looked */

void
ngx_http_llmsafespace_key_revocations(void)
{
    ngx_str_t                       key_id;
    ngx_uint_t                      i, n, from, seq;
    ngx_http_llmsafespace_cache_t  *cache;
    u_char                          ids[NGX_HTTP_LLMSAFESPACE_REVOKED_RING]
                                       [NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN];

    if (ngx_http_llmsafespace_cache_zone == NULL) {
        return;
    }

    cache = ngx_http_llmsafespace_cache_zone->data;

    ngx_shmtx_lock(&cache->shpool->mutex);

    seq = cache->sh->revoked_seq;
    from = ngx_http_llmsafespace_revoked_seen;

    if (seq - from > NGX_HTTP_LLMSAFESPACE_REVOKED_RING) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "llmsafespace: %ui revocations in a second, the "
                      "oldest not seen by this worker", seq - from);

        from = seq - NGX_HTTP_LLMSAFESPACE_REVOKED_RING;
    }

    n = seq - from;

    for (i = 0; i < n; i++) {
        ngx_memcpy(ids[i], cache->sh->revoked[(from + i)
                                          % NGX_HTTP_LLMSAFESPACE_REVOKED_RING],
                   NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN);
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);

    ngx_http_llmsafespace_revoked_seen = seq;

    for (i = 0; i < n; i++) {
        key_id.data = ids[i];
        key_id.len = NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN;

        ngx_http_llmsafespace_inflight_revoked(&key_id);
    }
}


void
ngx_http_llmsafespace_key_revoked(ngx_str_t *key_id)
{
    const char  *argv[8];
    size_t       argvlen[8];

    ngx_http_llmsafespace_key_forget(key_id);
    ngx_http_llmsafespace_revoked_note(key_id);
    ngx_http_llmsafespace_inflight_revoked(key_id);

    if (ngx_http_llmsafespace_auth_conf == NULL
        || ngx_http_llmsafespace_auth_conf->redis.addr == NULL)
    {
        return;
    }

    argv[0] = "XADD";
    argvlen[0] = 4;
    argv[1] = NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM;
    argvlen[1] = sizeof(NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM) - 1;
    argv[2] = "MAXLEN";
    argvlen[2] = 6;
    argv[3] = "~";
    argvlen[3] = 1;
    argv[4] = "10000";
    argvlen[4] = 5;
    argv[5] = "*";
    argvlen[5] = 1;
    argv[6] = "key";
    argvlen[6] = 3;
    argv[7] = (const char *) key_id->data;
    argvlen[7] = key_id->len;

    (void) ngx_http_llmsafespace_redis_command(8, argv, argvlen,
                                         ngx_http_llmsafespace_ignore_reply,
                                         NULL);
}


static void
ngx_http_llmsafespace_ignore_reply(void *data, redisReply *reply,
    ngx_int_t rc)
{
}


static void
ngx_http_llmsafespace_revoke_poll(ngx_event_t *ev)
{
    const char  *argv[6];
    size_t       argvlen[6];

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (ngx_http_llmsafespace_revoke_last[0] == '\0') {
        argv[0] = "XREVRANGE";
        argv[1] = NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM;
        argv[2] = "+";
        argv[3] = "-";
        argv[4] = "COUNT";
        argv[5] = "256";

        argvlen[0] = 9;
        argvlen[1] = sizeof(NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM) - 1;
        argvlen[2] = 1;
        argvlen[3] = 1;
        argvlen[4] = 5;
        argvlen[5] = 3;

        ngx_http_llmsafespace_revoke_cmd =
            ngx_http_llmsafespace_redis_command(6, argv, argvlen,
                                         ngx_http_llmsafespace_revoke_start,
                                         NULL);

        if (ngx_http_llmsafespace_revoke_cmd == NULL) {
            ngx_add_timer(ev, NGX_HTTP_LLMSAFESPACE_REVOKE_POLL);
        }

        return;
    }

    argv[0] = "XREAD";
    argv[1] = "COUNT";
    argv[2] = "256";
    argv[3] = "STREAMS";
    argv[4] = NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM;
    argv[5] = (const char *) ngx_http_llmsafespace_revoke_last;

    argvlen[0] = 5;
    argvlen[1] = 5;
    argvlen[2] = 3;
    argvlen[3] = 7;
    argvlen[4] = sizeof(NGX_HTTP_LLMSAFESPACE_REVOKED_STREAM) - 1;
    argvlen[5] = ngx_strlen(ngx_http_llmsafespace_revoke_last);

    ngx_http_llmsafespace_revoke_cmd = ngx_http_llmsafespace_redis_command(
                                         6, argv, argvlen,
                                         ngx_http_llmsafespace_revoke_read,
                                         NULL);

    if (ngx_http_llmsafespace_revoke_cmd == NULL) {
        ngx_add_timer(ev, NGX_HTTP_LLMSAFESPACE_REVOKE_POLL);
    }
}


/* XREVRANGE reply: [[id, [field, value, ...]], ...], newest first */

static void
ngx_http_llmsafespace_revoke_start(void *data, redisReply *reply,
    ngx_int_t rc)
{
    ngx_http_llmsafespace_revoke_cmd = NULL;

    if (rc == NGX_OK && reply->type == REDIS_REPLY_ARRAY) {

        if (reply->elements == 0) {
            ngx_cpystrn(ngx_http_llmsafespace_revoke_last, (u_char *) "0-0",
                        sizeof("0-0"));

        } else {
            ngx_http_llmsafespace_revoke_apply(reply, 1);
        }
    }

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(&ngx_http_llmsafespace_revoke_ev,
                      NGX_HTTP_LLMSAFESPACE_REVOKE_POLL);
    }
}


/* XREAD reply: [[stream, [[id, [field, value, ...]], ...]]], oldest first */

static void
ngx_http_llmsafespace_revoke_read(void *data, redisReply *reply,
    ngx_int_t rc)
{
    ngx_http_llmsafespace_revoke_cmd = NULL;

    if (rc == NGX_OK && reply->type == REDIS_REPLY_ARRAY
        && reply->elements == 1
        && reply->element[0]->type == REDIS_REPLY_ARRAY
        && reply->element[0]->elements == 2
        && reply->element[0]->element[1]->type == REDIS_REPLY_ARRAY)
    {
        ngx_http_llmsafespace_revoke_apply(reply->element[0]->element[1], 0);
    }

    if (!ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(&ngx_http_llmsafespace_revoke_ev,
                      NGX_HTTP_LLMSAFESPACE_REVOKE_POLL);
    }
}


/*
 * Forgets every key id named in stream entries, ends this worker's
 * requests to runners made with them, and remembers the newest entry's id
 * as where reading goes on.  The entries are Redis' replies:
 * checked for shape, their lengths never trusted.
 */

static void
ngx_http_llmsafespace_revoke_apply(redisReply *entries,
    ngx_uint_t newest_first)
{
    size_t       i, j, newest;
    ngx_str_t    key_id;
    redisReply  *entry, *fields, *id;

    if (entries->elements == 0) {
        return;
    }

    newest = newest_first ? 0 : entries->elements - 1;

    for (i = 0; i < entries->elements; i++) {
        entry = entries->element[i];

        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2
            || entry->element[0]->type != REDIS_REPLY_STRING
            || entry->element[1]->type != REDIS_REPLY_ARRAY)
        {
            continue;
        }

        id = entry->element[0];

        if (i == newest && id->len > 0
            && id->len < sizeof(ngx_http_llmsafespace_revoke_last))
        {
            ngx_memcpy(ngx_http_llmsafespace_revoke_last, id->str, id->len);
            ngx_http_llmsafespace_revoke_last[id->len] = '\0';
        }

        fields = entry->element[1];

        for (j = 0; j + 1 < fields->elements; j += 2) {
            if (fields->element[j + 1]->type != REDIS_REPLY_STRING) {
                continue;
            }

            key_id.data = (u_char *) fields->element[j + 1]->str;
            key_id.len = fields->element[j + 1]->len;

            ngx_http_llmsafespace_key_forget(&key_id);
            ngx_http_llmsafespace_revoked_note(&key_id);
            ngx_http_llmsafespace_inflight_revoked(&key_id);
        }
    }
}


/* nginx has ngx_hex_dump() but no inverse */

static ngx_int_t
ngx_http_llmsafespace_hex_decode(u_char *dst, u_char *src, size_t len)
{
    u_char  c, hi, lo;
    size_t  i;

    if (len % 2) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i += 2) {
        c = src[i];
        hi = (c >= '0' && c <= '9') ? c - '0'
             : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : 0xff;
        c = src[i + 1];
        lo = (c >= '0' && c <= '9') ? c - '0'
             : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : 0xff;

        if (hi == 0xff || lo == 0xff) {
            return NGX_ERROR;
        }

        *dst++ = (u_char) (hi << 4 | lo);
    }

    return NGX_OK;
}


/* a hex digit of a %XX escape, either case; 0xff for anything else */

static ngx_uint_t
ngx_http_llmsafespace_hex_digit(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c = (u_char) (c | 0x20);

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return 0xff;
}
