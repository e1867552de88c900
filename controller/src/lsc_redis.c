/*
 * Redis: the controller's side of the contract with the gateway
 * (docs/architecture.md, "The Redis contract").  Synchronous hiredis: the
 * controller has its own loop, and its one blocking call (XREADGROUP with
 * BLOCK) is also its tick timer.
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lsc.h"


#define LSC_GROUP     "controllers"
#define LSC_CONSUMER  "local"
#define LSC_STREAM    "lss:requests"
#define LSC_EVENTS    "lss:events"
#define LSC_MAX_FIELD (16 * 1024)


static char *
lsc_load_script(lsc_ctx_t *ctx, const char *name)
{
    char   path[LSC_PATH_LEN + 64];
    char  *s;

    snprintf(path, sizeof(path), "%s/%s", ctx->contract_dir, name);
    s = lsc_read_file(path, 64 * 1024);
    if (s == NULL) {
        lsc_log("error", "cannot read %s", path);
    }
    return s;
}


static int
lsc_group(lsc_ctx_t *ctx, const char *stream, const char *from)
{
    redisReply  *r;

    r = redisCommand(ctx->redis, "XGROUP CREATE %s %s %s MKSTREAM",
                     stream, LSC_GROUP, from);
    if (r == NULL) {
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "BUSYGROUP") == NULL) {
        lsc_log("error", "redis: XGROUP %s: %s", stream, r->str);
        freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    return 0;
}


int
lsc_redis_connect(lsc_ctx_t *ctx)
{
    struct timeval   tv;
    char            *colon;
    char             host[LSC_PATH_LEN];
    int              port;

    if (ctx->redis != NULL && ctx->redis->err == 0) {
        return 0;
    }
    if (ctx->redis != NULL) {
        redisFree(ctx->redis);
        ctx->redis = NULL;
    }

    if (ctx->claim_lua == NULL) {
        ctx->claim_lua = lsc_load_script(ctx, "claim.lua");
        ctx->publish_lua = lsc_load_script(ctx, "publish.lua");
        ctx->retire_lua = lsc_load_script(ctx, "retire.lua");
        if (ctx->claim_lua == NULL || ctx->publish_lua == NULL
            || ctx->retire_lua == NULL)
        {
            return -1;
        }
    }

    tv.tv_sec = 2;
    tv.tv_usec = 0;
    if (strncmp(ctx->redis_addr, "unix:", 5) == 0) {
        ctx->redis = redisConnectUnixWithTimeout(ctx->redis_addr + 5, tv);
    } else {
        snprintf(host, sizeof(host), "%s", ctx->redis_addr);
        colon = strrchr(host, ':');
        port = 6379;
        if (colon != NULL) {
            *colon = '\0';
            port = atoi(colon + 1);
        }
        ctx->redis = redisConnectWithTimeout(host, port, tv);
    }
    if (ctx->redis == NULL || ctx->redis->err) {
        lsc_log("error", "redis %s: %s", ctx->redis_addr,
                ctx->redis ? ctx->redis->errstr : "out of memory");
        if (ctx->redis != NULL) {
            redisFree(ctx->redis);
            ctx->redis = NULL;
        }
        return -1;
    }

    /* the container runtimes we start must not inherit the connection */
    fcntl(ctx->redis->fd, F_SETFD, FD_CLOEXEC);

    /* longer than the longest BLOCK we ask for */
    tv.tv_sec = 2 + ctx->tick_ms / 1000;
    redisSetTimeout(ctx->redis, tv);

    /*
     * From 0 on the requests: those filed before any controller ever ran
     * are served.  From $ on the events: they only wake the loop (a claim
     * is seen at once instead of at the next idle tick); what they say is
     * read from the routes, so none from before matters.
     */
    if (lsc_group(ctx, LSC_STREAM, "0") != 0
        || lsc_group(ctx, LSC_EVENTS, "$") != 0)
    {
        return -1;
    }
    return 0;
}


static int
lsc_handle_request(lsc_ctx_t *ctx, redisReply *fields)
{
    json_t       *req;
    size_t        i;
    const char   *type;
    int           rc;
    redisReply   *k, *v;

    req = json_object();
    if (req == NULL) {
        return -1;
    }
    for (i = 0; i + 1 < fields->elements && i < 64; i += 2) {
        k = fields->element[i];
        v = fields->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING
            || k->len > 64 || v->len > LSC_MAX_FIELD
            || strlen(k->str) != k->len || strlen(v->str) != v->len)
        {
            continue;
        }
        json_object_set_new(req, k->str, json_string_nocheck(v->str));
    }

    type = json_string_value(json_object_get(req, "type"));
    rc = 1;
    if (type != NULL && strcmp(type, "create") == 0) {
        rc = lsc_pg_insert_request(ctx, req);
    } else if (type != NULL && strcmp(type, "delete") == 0) {
        rc = lsc_pg_request_delete(ctx,
                 json_string_value(json_object_get(req, "id")));
    } else {
        lsc_log("warn", "request of unknown type dropped");
    }
    json_decref(req);
    return rc;
}


static int
lsc_process(lsc_ctx_t *ctx, redisReply *r, int *count)
{
    redisReply  *entries, *e, *a, *st;
    size_t       i, k;
    int          rc, requests;

    *count = 0;
    if (r->type != REDIS_REPLY_ARRAY) {
        return 0;
    }
    for (k = 0; k < r->elements; k++) {
        st = r->element[k];
        if (st->type != REDIS_REPLY_ARRAY || st->elements < 2
            || st->element[0]->type != REDIS_REPLY_STRING
            || st->element[1]->type != REDIS_REPLY_ARRAY)
        {
            continue;
        }
        requests = strcmp(st->element[0]->str, LSC_STREAM) == 0;
        entries = st->element[1];
        for (i = 0; i < entries->elements; i++) {
            e = entries->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 2
                || e->element[0]->type != REDIS_REPLY_STRING)
            {
                continue;
            }
            (*count)++;
            rc = 1;
            if (requests && e->element[1]->type == REDIS_REPLY_ARRAY) {
                rc = lsc_handle_request(ctx, e->element[1]);
            }
            if (rc < 0) {
                /* PostgreSQL failed: leave it pending, retried next tick */
                return -1;
            }
            a = redisCommand(ctx->redis, "XACK %s %s %s",
                             st->element[0]->str, LSC_GROUP,
                             e->element[0]->str);
            if (a == NULL) {
                return -1;
            }
            freeReplyObject(a);
        }
    }
    return 0;
}


/*
 * Our own pending entries first (delivered before a crash, never
 * acknowledged), then new ones, waiting up to block_ms for them: this
 * wait is the loop's idle sleep, cut short by the first request.
 * Returns the number of requests handled, or -1.
 */
int
lsc_redis_read_requests(lsc_ctx_t *ctx, int block_ms)
{
    redisReply  *r;
    int          n, rc;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }

    r = redisCommand(ctx->redis,
                     "XREADGROUP GROUP %s %s COUNT 64 STREAMS %s %s 0 0",
                     LSC_GROUP, LSC_CONSUMER, LSC_STREAM, LSC_EVENTS);
    if (r == NULL) {
        return -1;
    }
    rc = lsc_process(ctx, r, &n);
    freeReplyObject(r);
    if (rc != 0 || n > 0) {
        return rc != 0 ? -1 : n;
    }

    r = redisCommand(ctx->redis,
                     "XREADGROUP GROUP %s %s COUNT 64 BLOCK %d STREAMS %s %s"
                     " > >", LSC_GROUP, LSC_CONSUMER, block_ms, LSC_STREAM,
                     LSC_EVENTS);
    if (r == NULL) {
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP") != NULL) {
        /* the stream was deleted under us: make the group again */
        freeReplyObject(r);
        redisFree(ctx->redis);
        ctx->redis = NULL;
        return -1;
    }
    rc = lsc_process(ctx, r, &n);
    freeReplyObject(r);
    return rc != 0 ? -1 : n;
}


/* the pinned socket (see lsc_local_pin), not the one in the run dir */
void
lsc_redis_socket_path(lsc_ctx_t *ctx, const char *id, char *buf, size_t len)
{
    snprintf(buf, len, "%s/routes/%s", ctx->state_dir, id);
}


static int
lsc_reply_int(redisReply *r, const char *what)
{
    int  v;

    if (r == NULL) {
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        lsc_log("error", "redis %s: %s", what, r->str);
        freeReplyObject(r);
        return -1;
    }
    v = r->type == REDIS_REPLY_INTEGER ? (int) r->integer : 0;
    freeReplyObject(r);
    return v;
}


/* returns 1 published, 0 claimed meanwhile by another owner, -1 error */
int
lsc_redis_publish(lsc_ctx_t *ctx, lsc_sandbox_t *sb, int announce)
{
    redisReply  *r;
    char         route[LSC_ID_LEN + 16], ready[LSC_NAME_LEN + 32];
    char         sock[LSC_PATH_LEN + 128], runner[LSC_PATH_LEN + 140];
    char         tokpath[LSC_PATH_LEN + 128], exp[32], now[32];
    char        *token;
    size_t       n;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    snprintf(tokpath, sizeof(tokpath), "%s/bundles/%s/token",
             ctx->state_dir, sb->id);
    token = lsc_read_file(tokpath, 256);
    if (token == NULL) {
        lsc_log("error", "%s: no token", sb->id);
        return -1;
    }
    n = strlen(token);
    while (n > 0 && (token[n - 1] == '\n' || token[n - 1] == '\r')) {
        token[--n] = '\0';
    }

    lsc_redis_socket_path(ctx, sb->id, sock, sizeof(sock));
    snprintf(runner, sizeof(runner), "unix:%s", sock);
    snprintf(route, sizeof(route), "lss:sb:%s", sb->id);
    if (sb->pool[0] != '\0') {
        snprintf(ready, sizeof(ready), "lss:pool:%s:ready", sb->pool);
    } else {
        ready[0] = '\0';
    }
    snprintf(exp, sizeof(exp), "%lld", (long long) sb->expires_ms);
    snprintf(now, sizeof(now), "%lld", (long long) lsc_now_ms());

    r = redisCommand(ctx->redis,
                     "EVAL %s 3 %s %s %s %s %s %s %s %s %s %s %s %s",
                     ctx->publish_lua, route, ready, LSC_EVENTS, sb->id,
                     sb->owner, runner, token, exp, sb->runtime, sb->pool,
                     now, announce ? "1" : "0");
    free(token);
    return lsc_reply_int(r, "publish");
}


/* the route first, so no request reaches a sandbox being removed */
int
lsc_redis_unpublish(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    redisReply  *r;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    r = redisCommand(ctx->redis, "DEL lss:sb:%s", sb->id);
    if (lsc_reply_int(r, "DEL") < 0) {
        return -1;
    }
    if (sb->pool[0] != '\0') {
        r = redisCommand(ctx->redis, "LREM lss:pool:%s:ready 0 %s",
                         sb->pool, sb->id);
        if (lsc_reply_int(r, "LREM") < 0) {
            return -1;
        }
    }
    return 0;
}


/* 1: retired (was unclaimed), 0: claimed meanwhile, -1: error */
int
lsc_redis_retire(lsc_ctx_t *ctx, lsc_sandbox_t *sb)
{
    redisReply  *r;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    r = redisCommand(ctx->redis, "EVAL %s 2 lss:sb:%s lss:pool:%s:ready %s",
                     ctx->retire_lua, sb->id, sb->pool, sb->id);
    return lsc_reply_int(r, "retire");
}


/*
 * The routes of n sandboxes, pipelined: who owns each (the gateway's
 * claim writes it) and until when.
 */
int
lsc_redis_routes(lsc_ctx_t *ctx, lsc_sandbox_t **sbs, size_t n,
    char (*owners)[LSC_OWNER_LEN], int64_t *expires, int *exists)
{
    size_t       i;
    redisReply  *r;
    int          rc;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        redisAppendCommand(ctx->redis, "HMGET lss:sb:%s owner expires",
                           sbs[i]->id);
    }
    rc = 0;
    for (i = 0; i < n; i++) {
        owners[i][0] = '\0';
        expires[i] = 0;
        exists[i] = 0;
        if (redisGetReply(ctx->redis, (void **) &r) != REDIS_OK) {
            return -1;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            if (r->element[0]->type == REDIS_REPLY_STRING) {
                exists[i] = 1;
                if (r->element[0]->len < LSC_OWNER_LEN) {
                    memcpy(owners[i], r->element[0]->str,
                           r->element[0]->len + 1);
                }
            }
            if (r->element[1]->type == REDIS_REPLY_STRING) {
                expires[i] = strtoll(r->element[1]->str, NULL, 10);
            }
        } else {
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}


int
lsc_redis_event(lsc_ctx_t *ctx, const char *type, const char *id,
    const char *pool, const char *reason)
{
    redisReply  *r;
    const char  *argv[16];
    char         now[32];
    int          argc;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    snprintf(now, sizeof(now), "%lld", (long long) lsc_now_ms());
    argc = 0;
    argv[argc++] = "XADD";
    argv[argc++] = LSC_EVENTS;
    argv[argc++] = "MAXLEN";
    argv[argc++] = "~";
    argv[argc++] = "100000";
    argv[argc++] = "*";
    argv[argc++] = "type";
    argv[argc++] = type;
    argv[argc++] = "id";
    argv[argc++] = id;
    if (pool != NULL && pool[0] != '\0') {
        argv[argc++] = "pool";
        argv[argc++] = pool;
    }
    if (reason != NULL && reason[0] != '\0') {
        argv[argc++] = "reason";
        argv[argc++] = reason;
    }
    argv[argc++] = "at";
    argv[argc++] = now;
    r = redisCommandArgv(ctx->redis, argc, argv, NULL);
    if (r == NULL) {
        return -1;
    }
    freeReplyObject(r);
    return 0;
}


int
lsc_redis_pool_status(lsc_ctx_t *ctx, const char *pool, const char *json)
{
    redisReply  *r;

    if (lsc_redis_connect(ctx) != 0) {
        return -1;
    }
    r = redisCommand(ctx->redis, "SET lss:pool:%s:status %s", pool, json);
    if (r == NULL) {
        return -1;
    }
    freeReplyObject(r);
    return 0;
}
