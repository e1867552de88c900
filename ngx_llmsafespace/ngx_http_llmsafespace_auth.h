
/*
 * Copyright (C) LLMSafeSpace
 *
 * API key authentication: parsing, hashing, the shared-memory key cache,
 * lookups in PostgreSQL or the keys file, and revocation.
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_AUTH_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_AUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


char *ngx_http_llmsafespace_keys_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_llmsafespace_key_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

ngx_int_t ngx_http_llmsafespace_auth_init(ngx_conf_t *cf,
    ngx_http_llmsafespace_main_conf_t *lmcf);
ngx_int_t ngx_http_llmsafespace_auth_init_process(ngx_cycle_t *cycle,
    ngx_http_llmsafespace_main_conf_t *lmcf);
void ngx_http_llmsafespace_auth_exit_process(ngx_cycle_t *cycle);

/*
 * NGX_OK: ctx->identity is set; NGX_AGAIN: waiting for PostgreSQL, the
 * request is woken later; otherwise an HTTP status with ctx->error_code and
 * ctx->error_message set.
 */
ngx_int_t ngx_http_llmsafespace_authenticate(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);

/*
 * The length of the name and '=' of the query argument at "arg" when it is
 * the one that carries an API key ("token", any case, %XX decoded), else 0.
 */
size_t ngx_http_llmsafespace_token_arg(u_char *arg, u_char *last);

/* a new random key, its id and the hex hash to store */
ngx_int_t ngx_http_llmsafespace_key_generate(
    ngx_http_llmsafespace_new_key_t *key);

/* drops a key from every worker's view, here and on other gateways */
void ngx_http_llmsafespace_key_revoked(ngx_str_t *key_id);

/* a key still in use: its requests in flight end if it was revoked */
void ngx_http_llmsafespace_key_recheck(ngx_str_t *key_id);

/* ends what this worker holds of keys revoked by any worker since */
void ngx_http_llmsafespace_key_revocations(void);

/*
 * Requests to a runner (streams, executions, transfers), listed by key id
 * in each worker (ngx_http_llmsafespace_inflight.c): a revoked key's are
 * ended, here and in every worker that reads the revocation.
 */
ngx_int_t ngx_http_llmsafespace_inflight_add(ngx_http_request_t *r,
    ngx_str_t *key_id);
void ngx_http_llmsafespace_inflight_revoked(ngx_str_t *key_id);
void ngx_http_llmsafespace_inflight_exit_process(ngx_cycle_t *cycle);


#endif /* _NGX_HTTP_LLMSAFESPACE_AUTH_H_INCLUDED_ */
