
/*
 * Copyright (C) LLMSafeSpace
 *
 * Shared types of ngx_http_llmsafespace_module: configuration, the per
 * request context, and the calls between the module's files.
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_llmsafespace_redis.h"
#include "ngx_http_llmsafespace_pg.h"
#include "ngx_http_llmsafespace_limit.h"


/* route classes, each with its own rate limit */
#define NGX_HTTP_LLMSAFESPACE_CLASS_DEFAULT   0
#define NGX_HTTP_LLMSAFESPACE_CLASS_CREATE    1
#define NGX_HTTP_LLMSAFESPACE_CLASS_EXECUTE   2
#define NGX_HTTP_LLMSAFESPACE_CLASS_N         3

/* what a location does (llmsafespace_api, _health, _metrics, _error) */
#define NGX_HTTP_LLMSAFESPACE_HANDLER_NONE    0
#define NGX_HTTP_LLMSAFESPACE_HANDLER_API     1
#define NGX_HTTP_LLMSAFESPACE_HANDLER_HEALTH  2
#define NGX_HTTP_LLMSAFESPACE_HANDLER_METRICS 3
#define NGX_HTTP_LLMSAFESPACE_HANDLER_RUNNER  4

#define NGX_HTTP_LLMSAFESPACE_ROLE_USER       0
#define NGX_HTTP_LLMSAFESPACE_ROLE_ADMIN      1

#define NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN      16
#define NGX_HTTP_LLMSAFESPACE_SECRET_LEN      32
#define NGX_HTTP_LLMSAFESPACE_HASH_LEN        32   /* SHA-256 */
#define NGX_HTTP_LLMSAFESPACE_NAME_LEN        64

#define NGX_HTTP_TOO_MANY_REQUESTS            429

/* the controller's --egress-allow takes as many (LSC_EGRESS_ALLOW_MAX) */
#define NGX_HTTP_LLMSAFESPACE_EGRESS_ALLOW    16

/* hex SHA-256 of a secret, as stored */
#define NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN                                    \
    (2 * NGX_HTTP_LLMSAFESPACE_HASH_LEN)

/* "lsp_" keyid "_" secret */
#define NGX_HTTP_LLMSAFESPACE_KEY_LEN                                         \
    (4 + NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN + 1                                 \
     + NGX_HTTP_LLMSAFESPACE_SECRET_LEN)


typedef struct {
    u_char                          key_id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN];
    u_char                          hash[NGX_HTTP_LLMSAFESPACE_HASH_LEN];
    ngx_uint_t                      role;
    ngx_uint_t                      user_len;
    u_char                          user_id[NGX_HTTP_LLMSAFESPACE_NAME_LEN];
    ngx_uint_t                      name_len;
    u_char                          user_name[NGX_HTTP_LLMSAFESPACE_NAME_LEN];
} ngx_http_llmsafespace_key_t;


/* a key made by the gateway: its text is shown once, only its hash kept */
typedef struct {
    u_char                          key[NGX_HTTP_LLMSAFESPACE_KEY_LEN];
    u_char                          key_id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN];
    u_char                          hash_hex[
                                        NGX_HTTP_LLMSAFESPACE_HASH_HEX_LEN];
} ngx_http_llmsafespace_new_key_t;


typedef struct {
    ngx_str_t                       key_id;
    ngx_str_t                       user_id;
    ngx_str_t                       user_name;
    ngx_uint_t                      role;
} ngx_http_llmsafespace_identity_t;


typedef struct {
    ngx_http_llmsafespace_redis_conf_t   redis;     /* redis.addr: set */
    ngx_http_llmsafespace_pg_conf_t      pg;        /* pg.conninfo: set */

    ngx_str_t                       keys_file;
    ngx_array_t                    *file_keys;    /* ngx_..._key_t */

    ngx_shm_zone_t                 *key_cache;
    ngx_uint_t                      keys_per_user; /* active, 0: any */
    time_t                          key_ttl;      /* re-check after */
    time_t                          key_stale;    /* serve stale while PG
                                                     is down, at most */
    ngx_shm_zone_t                 *metrics;

    ngx_array_t                     limit_zones;  /* ..._limit_zone_t * */
    ngx_uint_t                      limit_redis_down;

    ngx_uint_t                      audit_buffer; /* records held while PG
                                                     is down */

    /* catalog (ngx_http_llmsafespace_catalog.c): borrowed by workers */
    json_t                         *runtimes;     /* index.json "runtimes" */
    json_t                         *profiles;     /* array of profiles */

    /* sandboxes (ngx_http_llmsafespace_sandbox.c) */
    ngx_str_t                       claim_script; /* claim.lua, as loaded */
    ngx_uint_t                      sandbox_quota;

    /* open WebSocket streams per sandbox (_streams.c) */
    ngx_uint_t                      stream_limit;
    ngx_shm_zone_t                 *streams;

    /* servers with an API location, whose raw paths are checked */
    ngx_array_t                    *api_servers;  /* core srv conf * */

    /* llmsafespace_egress_allow: ranges of egress_ranges.h let through */
    uint32_t                        egress_allow[
                                        NGX_HTTP_LLMSAFESPACE_EGRESS_ALLOW];
    int                             egress_allow_prefix[
                                        NGX_HTTP_LLMSAFESPACE_EGRESS_ALLOW];
    int                             egress_nallow;
} ngx_http_llmsafespace_main_conf_t;


typedef struct {
    ngx_uint_t                      handler;
    ngx_flag_t                      auth;
    ngx_flag_t                      json_errors;
    size_t                          max_body_size; /* JSON bodies */
    ngx_str_t                       runner_location; /* "@name" */
    unsigned                        runner:1;      /* llmsafespace_runner */
    ngx_http_llmsafespace_limit_zone_t
                                   *limit[NGX_HTTP_LLMSAFESPACE_CLASS_N];
    ngx_uint_t                      limit_set;    /* limit[] given here */
} ngx_http_llmsafespace_loc_conf_t;


typedef struct ngx_http_llmsafespace_ctx_s  ngx_http_llmsafespace_ctx_t;

/* answers a request once its query returned rows or a command status */
typedef ngx_int_t (*ngx_http_llmsafespace_query_done_pt)(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx, PGresult *res);

/* the same for a Redis reply (never an error reply) */
typedef ngx_int_t (*ngx_http_llmsafespace_redis_done_pt)(
    ngx_http_request_t *r, ngx_http_llmsafespace_ctx_t *ctx,
    redisReply *reply);

struct ngx_http_llmsafespace_ctx_s {
    ngx_http_request_t             *request;

    unsigned                        authenticated:1;
    unsigned                        auth_done:1;
    unsigned                        limit_done:1;
    unsigned                        waiting:1;
    unsigned                        json_error:1;  /* filter replaces body */
    unsigned                        stream:1;      /* GET .../stream */

    ngx_uint_t                      route_class;
    ngx_http_llmsafespace_identity_t identity;
    ngx_str_t                       sandbox_id;

    /* the asynchronous auth lookup and its result */
    ngx_int_t                       auth_rc;
    ngx_http_llmsafespace_key_t     looked_up;
    ngx_uint_t                      looked_up_state;
    time_t                          looked_up_fetched;
    unsigned                        have_stale:1;
    u_char                          key_id[NGX_HTTP_LLMSAFESPACE_KEY_ID_LEN
                                           + 1];
    ngx_str_t                       query_key;    /* ?token=, unredacted */

    /* result of the rate limiter */
    ngx_int_t                       limit_rc;
    ngx_http_llmsafespace_limit_result_t limit;

    /* error rendered by the content phase when access was refused */
    ngx_uint_t                      error_status;
    const char                     *error_code;
    ngx_str_t                       error_message;
    ngx_buf_t                      *error_body;   /* replaces nginx's page */

    /* in-flight asynchronous work, cancelled when the request goes away */
    ngx_http_llmsafespace_redis_cmd_t *redis_cmd;
    ngx_http_llmsafespace_pg_query_t  *pg_query;

    /* content handler state */
    json_t                         *body;         /* parsed request body */
    ngx_http_llmsafespace_query_done_pt  query_done;
    const char                     *audit_action;
    ngx_str_t                       audit_object;
    ngx_uint_t                      invalid_status;
    const char                     *invalid_field;
    ngx_http_llmsafespace_new_key_t *new_key;
    ngx_uint_t                      revoked_keys;
    ngx_http_llmsafespace_redis_done_pt  redis_done;

    /* sandboxes: the create in progress, a bounded wait for readiness */
    void                           *sandbox;
    ngx_event_t                     wait_event;

    /* the runner this request is proxied to ($llmsafespace_runner_*) */
    ngx_str_t                       runner_url;
    ngx_str_t                       runner_token;
};


extern ngx_module_t  ngx_http_llmsafespace_module;


/* module core */
ngx_http_llmsafespace_ctx_t *ngx_http_llmsafespace_get_ctx(
    ngx_http_request_t *r);
void ngx_http_llmsafespace_wake(ngx_http_request_t *r);

/* responses (ngx_http_llmsafespace_response.c) */
ngx_int_t ngx_http_llmsafespace_send_json(ngx_http_request_t *r,
    ngx_uint_t status, json_t *json);
ngx_int_t ngx_http_llmsafespace_send_object(ngx_http_request_t *r,
    ngx_uint_t status, json_t *json);
ngx_int_t ngx_http_llmsafespace_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *fmt, ...);
ngx_int_t ngx_http_llmsafespace_send_field_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *field, ngx_str_t *message);
ngx_int_t ngx_http_llmsafespace_send_error_details(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, ngx_str_t *message,
    json_t *details);
ngx_int_t ngx_http_llmsafespace_error_filter_init(ngx_conf_t *cf);
const char *ngx_http_llmsafespace_error_code(ngx_uint_t status);
ngx_int_t ngx_http_llmsafespace_set_limit_headers(ngx_http_request_t *r,
    ngx_http_llmsafespace_limit_result_t *limit, ngx_uint_t denied);

/* metrics (ngx_http_llmsafespace_metrics.c) */
#define NGX_HTTP_LLMSAFESPACE_LAT_REDIS       0
#define NGX_HTTP_LLMSAFESPACE_LAT_PG          1
#define NGX_HTTP_LLMSAFESPACE_LAT_N           2

ngx_int_t ngx_http_llmsafespace_metrics_init_zone(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf);
void ngx_http_llmsafespace_metrics_request(ngx_uint_t route_class,
    ngx_uint_t status);
void ngx_http_llmsafespace_metrics_auth_failure(void);
void ngx_http_llmsafespace_metrics_rate_limited(ngx_uint_t route_class);
void ngx_http_llmsafespace_metrics_latency(ngx_uint_t which,
    ngx_msec_t ms);
void ngx_http_llmsafespace_metrics_audit_dropped(void);
void ngx_http_llmsafespace_metrics_audit_written(void);
ngx_int_t ngx_http_llmsafespace_metrics_handler(ngx_http_request_t *r);
/* per worker: keep this worker's gauges slot fresh (1 s timer) */
ngx_int_t ngx_http_llmsafespace_metrics_init_process(ngx_cycle_t *cycle);
void ngx_http_llmsafespace_metrics_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_llmsafespace_health_handler(ngx_http_request_t *r);

/* streams per sandbox (ngx_http_llmsafespace_streams.c) */
char *ngx_http_llmsafespace_stream_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_llmsafespace_streams_init_conf(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf);
ngx_int_t ngx_http_llmsafespace_streams_acquire(ngx_http_request_t *r,
    ngx_str_t *id);

/* raw paths (ngx_http_llmsafespace_path.c): a post-read handler */
ngx_int_t ngx_http_llmsafespace_path_handler(ngx_http_request_t *r);

/* audit (ngx_http_llmsafespace_audit.c) */
void ngx_http_llmsafespace_audit(ngx_http_request_t *r, const char *action,
    ngx_str_t *object, ngx_uint_t status);
ngx_int_t ngx_http_llmsafespace_audit_init_process(ngx_cycle_t *cycle);
void ngx_http_llmsafespace_audit_exit_process(ngx_cycle_t *cycle);
ngx_uint_t ngx_http_llmsafespace_audit_pending(void);


#endif /* _NGX_HTTP_LLMSAFESPACE_H_INCLUDED_ */
