
/*
 * Copyright (C) LLMSafeSpace
 *
 * Asynchronous Redis client for nginx workers.
 *
 * The socket is owned by nginx (ngx_event_connect_peer); hiredis is used only
 * as the RESP encoder (redisFormatCommandArgv) and decoder (redisReader),
 * because Debian's hiredis 0.14.1 has no async timeouts and its async cleanup
 * may close a descriptor nginx also closes.
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_REDIS_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <hiredis/hiredis.h>


/* ngx_http_llmsafespace_redis_handler_pt rc values besides NGX_OK */
#define NGX_HTTP_LLMSAFESPACE_REDIS_TIMEDOUT  NGX_AGAIN


typedef struct ngx_http_llmsafespace_redis_cmd_s
    ngx_http_llmsafespace_redis_cmd_t;

/*
 * Called exactly once per accepted command, never from inside
 * ngx_http_llmsafespace_redis_command() itself:
 *   rc == NGX_OK: "reply" is the decoded reply (may be REDIS_REPLY_ERROR);
 *                 it is freed by the client after the handler returns;
 *   rc == NGX_HTTP_LLMSAFESPACE_REDIS_TIMEDOUT: no reply within the timeout;
 *   rc == NGX_ERROR: the connection failed or was closed; reply is NULL.
 */
typedef void (*ngx_http_llmsafespace_redis_handler_pt)(void *data,
    redisReply *reply, ngx_int_t rc);


typedef struct {
    ngx_addr_t                     *addr;         /* parsed server address */
    ngx_str_t                       server;       /* as written, for logs */
    ngx_str_t                       password;     /* empty: no AUTH */
    ngx_int_t                       database;     /* 0: no SELECT */
    ngx_msec_t                      connect_timeout;
    ngx_msec_t                      timeout;      /* per command */
    ngx_msec_t                      backoff_min;  /* reconnect backoff */
    ngx_msec_t                      backoff_max;
    ngx_uint_t                      max_queue;    /* pending + in flight */
} ngx_http_llmsafespace_redis_conf_t;


typedef struct {
    ngx_uint_t                      up;           /* connected and ready */
    ngx_uint_t                      queued;       /* not yet written */
    ngx_uint_t                      in_flight;    /* written, no reply yet */
    ngx_uint_t                      reconnects;   /* since worker start */
    ngx_uint_t                      errors;       /* failed commands */
    ngx_uint_t                      timeouts;
} ngx_http_llmsafespace_redis_stats_t;


/*
 * Parses the directive arguments:
 *   llmsafespace_redis unix:/path/redis.sock | host:port
 *       [password=SECRET] [db=N] [connect_timeout=TIME] [timeout=TIME]
 *       [queue=N] [backoff=MIN:MAX];
 * Returns NGX_CONF_OK or an error string naming the problem.
 */
char *ngx_http_llmsafespace_redis_parse(ngx_conf_t *cf,
    ngx_http_llmsafespace_redis_conf_t *rcf);

/* Per worker: start connecting (after fork). */
ngx_int_t ngx_http_llmsafespace_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_redis_conf_t *rcf);

/* Per worker: fail every pending command, close the socket, stop timers. */
void ngx_http_llmsafespace_redis_exit_process(ngx_cycle_t *cycle);

/*
 * Queues a command; arguments are copied (binary safe) before returning.
 * Returns the command handle on success (the handler will be called later),
 * or NULL when the command cannot be queued (not configured, disconnected
 * and in backoff, or queue full): the handler is then never called.
 */
ngx_http_llmsafespace_redis_cmd_t *ngx_http_llmsafespace_redis_command(
    int argc, const char **argv, const size_t *argvlen,
    ngx_http_llmsafespace_redis_handler_pt handler, void *data);

/*
 * The command's handler will not be called (e.g. the request went away).
 * The command itself may still be sent or awaited to keep replies in order.
 */
void ngx_http_llmsafespace_redis_cancel(ngx_http_llmsafespace_redis_cmd_t *cmd);

/* Connection state and counters of this worker. */
void ngx_http_llmsafespace_redis_stats(
    ngx_http_llmsafespace_redis_stats_t *stats);


#endif /* _NGX_HTTP_LLMSAFESPACE_REDIS_H_INCLUDED_ */
