
/*
 * Copyright (C) LLMSafeSpace
 *
 * The REST API under /api/v1: routing, request bodies, and the handlers'
 * common helpers.
 */


#ifndef _NGX_HTTP_LLMSAFESPACE_API_H_INCLUDED_
#define _NGX_HTTP_LLMSAFESPACE_API_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"


typedef ngx_int_t (*ngx_http_llmsafespace_route_pt)(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);


/* the content handler of "llmsafespace_api" */
ngx_int_t ngx_http_llmsafespace_api_handler(ngx_http_request_t *r);

/* sets ctx->route_class and ctx->sandbox_id from the URI */
void ngx_http_llmsafespace_api_classify(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);

/*
 * Ends a request whose handler returned NGX_DONE after starting a query:
 * called from the query's callback with the response's rc.
 */
void ngx_http_llmsafespace_api_finish(ngx_http_request_t *r, ngx_int_t rc);

/*
 * Starts a query for a route handler: NGX_DONE, and "done" answers later
 * (PostgreSQL errors are answered for it), or the rc of a 503 answer.
 */
ngx_int_t ngx_http_llmsafespace_api_query(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *sql, int nparams,
    const char *const *values, ngx_http_llmsafespace_query_done_pt done);

/* request body checks: NGX_OK, or NGX_DECLINED with the reason recorded */
ngx_int_t ngx_http_llmsafespace_api_invalid(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *field,
    const char *fmt, ...);
ngx_int_t ngx_http_llmsafespace_api_string(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *field,
    ngx_uint_t required, size_t max, const char **value);
ngx_int_t ngx_http_llmsafespace_api_only(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char **fields);
/* answers the recorded reason */
ngx_int_t ngx_http_llmsafespace_api_reject(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);

/* handlers of ngx_http_llmsafespace_users.c */
ngx_int_t ngx_http_llmsafespace_user_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_apikeys_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_apikeys_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_apikeys_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_users_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_users_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_users_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_users_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);


#endif /* _NGX_HTTP_LLMSAFESPACE_API_H_INCLUDED_ */
