
/*
 * Copyright (C) LLMSafeSpace
 *
 * Asynchronous PostgreSQL client for nginx workers, on libpq's nonblocking
 * API.  libpq owns its socket: nginx only watches it (a connection without
 * closing the descriptor), the socket is re-read after every PQconnectPoll()
 * because it may change, and writes are flushed with PQflush() until 0.
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_PG_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>


#define NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT  NGX_AGAIN


typedef struct ngx_http_llmsafespace_pg_query_s
    ngx_http_llmsafespace_pg_query_t;

/*
 * Called exactly once per accepted query, never from inside
 * ngx_http_llmsafespace_pg_query() itself:
 *   rc == NGX_OK: "res" is the query's result (PGRES_TUPLES_OK,
 *                 PGRES_COMMAND_OK, or PGRES_FATAL_ERROR for an SQL error);
 *                 it is cleared by the client after the handler returns;
 *   rc == NGX_HTTP_LLMSAFESPACE_PG_TIMEDOUT: no result within the timeout;
 *   rc == NGX_ERROR: the connection failed; res is NULL.
 */
typedef void (*ngx_http_llmsafespace_pg_handler_pt)(void *data,
    PGresult *res, ngx_int_t rc);


typedef struct {
    ngx_str_t                       conninfo;     /* libpq connection string */
    ngx_uint_t                      connections;  /* per worker */
    ngx_msec_t                      connect_timeout;
    ngx_msec_t                      timeout;      /* per query */
    ngx_msec_t                      backoff_min;
    ngx_msec_t                      backoff_max;
    ngx_uint_t                      max_queue;
} ngx_http_llmsafespace_pg_conf_t;


typedef struct {
    ngx_uint_t                      up;           /* connections ready */
    ngx_uint_t                      queued;
    ngx_uint_t                      in_flight;
    ngx_uint_t                      reconnects;
    ngx_uint_t                      errors;
    ngx_uint_t                      timeouts;
} ngx_http_llmsafespace_pg_stats_t;


/*
 * Parses the directive arguments:
 *   llmsafespace_postgres "host=... dbname=... user=..."
 *       [connections=N] [connect_timeout=TIME] [timeout=TIME] [queue=N]
 *       [backoff=MIN:MAX];
 * The connection string is checked with PQconninfoParse().
 */
char *ngx_http_llmsafespace_pg_parse(ngx_conf_t *cf,
    ngx_http_llmsafespace_pg_conf_t *pcf);

ngx_int_t ngx_http_llmsafespace_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_pg_conf_t *pcf);

void ngx_http_llmsafespace_pg_exit_process(ngx_cycle_t *cycle);

/*
 * Queues a parameterised query (text parameters, NULL value = SQL NULL);
 * sql and parameters are copied before returning.  Returns the handle, or
 * NULL when it cannot be queued (not configured, no connection and in
 * backoff, queue full): the handler is then never called.
 */
ngx_http_llmsafespace_pg_query_t *ngx_http_llmsafespace_pg_query(
    const char *sql, int nparams, const char *const *values,
    ngx_http_llmsafespace_pg_handler_pt handler, void *data);

void ngx_http_llmsafespace_pg_cancel(ngx_http_llmsafespace_pg_query_t *q);

void ngx_http_llmsafespace_pg_stats(ngx_http_llmsafespace_pg_stats_t *stats);


#endif /* _NGX_HTTP_LLMSAFESPACE_PG_H_INCLUDED_ */
