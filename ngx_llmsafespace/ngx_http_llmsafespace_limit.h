
/*
 * Copyright (C) LLMSafeSpace
 *
 * Rate limiting per API key and route class: a GCRA limiter in a shared
 * memory zone (this gateway) and the same GCRA as an atomic Lua script in
 * Redis (every gateway replica shares one budget).
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_LIMIT_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_LIMIT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_LOCAL   0   /* fall back to shm */
#define NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_REFUSE  1   /* answer 503 */


typedef struct {
    ngx_str_t                       name;
    ngx_shm_zone_t                 *shm_zone;
    ngx_uint_t                      rate;         /* requests per 1000 s */
    ngx_uint_t                      burst;        /* extra requests */
    ngx_uint_t                      user_rate;    /* all keys of a user */
    ngx_uint_t                      user_burst;
} ngx_http_llmsafespace_limit_zone_t;


typedef struct {
    ngx_uint_t                      limit;        /* burst + 1 */
    ngx_uint_t                      remaining;
    time_t                          reset;        /* s until full budget */
    time_t                          retry_after;  /* s, when denied */
} ngx_http_llmsafespace_limit_result_t;


/*
 * llmsafespace_limit_zone zone=NAME:SIZE rate=Nr/s|Nr/m [burst=N]
 *     [user_rate=Nr/s|Nr/m] [user_burst=N];
 */
char *ngx_http_llmsafespace_limit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* llmsafespace_limit create|execute|default zone=NAME; (location level) */
char *ngx_http_llmsafespace_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * From the main conf's init: fails when a zone named by llmsafespace_limit
 * was never defined by llmsafespace_limit_zone (names both).
 */
char *ngx_http_llmsafespace_limit_init_main_conf(ngx_conf_t *cf,
    void *lmcf);

/*
 * Checks and consumes one request of the request's key and of its user
 * (every key of a user shares the user's budget) in the zone of its route
 * class (ctx->route_class, ctx->identity); allowed only when both allow.
 *   NGX_DECLINED: no zone for this class;
 *   NGX_OK: allowed, ctx->limit filled;
 *   NGX_HTTP_TOO_MANY_REQUESTS: denied, ctx->limit filled;
 *   NGX_HTTP_SERVICE_UNAVAILABLE: Redis is down and the policy refuses;
 *   NGX_AGAIN: waiting for Redis; ngx_http_llmsafespace_wake(r) follows once
 *              ctx->limit_rc holds one of the results above.
 */
ngx_int_t ngx_http_llmsafespace_limit_check(ngx_http_request_t *r);


#endif /* _NGX_HTTP_LLMSAFESPACE_LIMIT_H_INCLUDED_ */
