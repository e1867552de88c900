
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

/* the same for a Redis command; error replies are answered for it */
ngx_int_t ngx_http_llmsafespace_api_redis(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, int argc, const char **argv,
    const size_t *argvlen, ngx_http_llmsafespace_redis_done_pt done);

/*
 * The request body read, at most "max" bytes, as a JSON object in
 * ctx->body: NGX_OK, NGX_DECLINED with the reason recorded, or a status
 */
ngx_int_t ngx_http_llmsafespace_api_parse_body(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, size_t max);

/* request body checks: NGX_OK, or NGX_DECLINED with the reason recorded */
ngx_int_t ngx_http_llmsafespace_api_invalid(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *field,
    const char *fmt, ...);
ngx_int_t ngx_http_llmsafespace_api_string(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char *field,
    ngx_uint_t required, size_t max, const char **value);
ngx_int_t ngx_http_llmsafespace_api_only(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, const char **fields);
/* shared helpers of the route handlers */
u_char *ngx_http_llmsafespace_api_cstr(ngx_http_request_t *r, u_char *data,
    size_t len);
json_t *ngx_http_llmsafespace_api_value(PGresult *res, int row, int col);
/* ?limit= (1-1000, default 100) and ?offset= as C strings */
ngx_int_t ngx_http_llmsafespace_api_page(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, u_char *limit, u_char *offset);
ngx_uint_t ngx_http_llmsafespace_api_have_pg(ngx_http_request_t *r);
/* 501 not_implemented: "<what>: this gateway has no llmsafespace_postgres" */
ngx_int_t ngx_http_llmsafespace_api_no_pg(ngx_http_request_t *r,
    const char *what);
/* a query whose only parameter is the route's id (501 without PostgreSQL) */
ngx_int_t ngx_http_llmsafespace_api_query_id(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id, const char *sql,
    ngx_http_llmsafespace_query_done_pt done, const char *what);
/* {"<name>": [row(res, i), ...]} */
ngx_int_t ngx_http_llmsafespace_api_send_list(ngx_http_request_t *r,
    PGresult *res, const char *name, json_t *(*row)(PGresult *res, int i));

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

/* handlers of ngx_http_llmsafespace_sandbox.c */
char *ngx_http_llmsafespace_sandboxes_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_llmsafespace_egress_allow(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llmsafespace_sandboxes_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_sandboxes_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_sandboxes_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_sandboxes_status(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_sandboxes_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);

/*
 * A sandbox's resources as the controller applies them (lsc.h): the
 * defaults and the bounds it clamps a create's to, and a warm pool's
 * must keep within.
 */
#define NGX_HTTP_LLMSAFESPACE_CPU_DEFAULT      1
#define NGX_HTTP_LLMSAFESPACE_CPU_MIN          0.1
#define NGX_HTTP_LLMSAFESPACE_CPU_MAX          2
#define NGX_HTTP_LLMSAFESPACE_MEMORY_DEFAULT   536870912       /* 512Mi */
#define NGX_HTTP_LLMSAFESPACE_MEMORY_MIN       67108864        /* 64Mi */
#define NGX_HTTP_LLMSAFESPACE_MEMORY_MAX       8589934592LL    /* 8Gi */
/* the bound of a number in any resources (check_resources), 10T */
#define NGX_HTTP_LLMSAFESPACE_STORAGE_MAX      1e13

/* the indexes of the values ngx_http_llmsafespace_check_resources() sets */
#define NGX_HTTP_LLMSAFESPACE_RES_CPU          0
#define NGX_HTTP_LLMSAFESPACE_RES_MEMORY       1
#define NGX_HTTP_LLMSAFESPACE_RES_STORAGE      2
#define NGX_HTTP_LLMSAFESPACE_RES_N            3

/*
 * "resources" {cpu, memory, ephemeralStorage} of a create or a warm pool:
 * NGX_OK with each value (cores, bytes, bytes; -1 when not given), or
 * NGX_DECLINED with the reason recorded
 */
ngx_int_t ngx_http_llmsafespace_check_resources(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, json_t *v, double *values);

/*
 * those values within what the controller gives a sandbox (cpu in whole
 * millicores then): NGX_OK, or NGX_DECLINED with a 422 naming the field
 */
ngx_int_t ngx_http_llmsafespace_check_bounds(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, double *values);

/*
 * ngx_http_llmsafespace_proxy.c: execute, stream, files and packages go to
 * the sandbox's runner; NGX_DECLINED for every other route.
 */
ngx_int_t ngx_http_llmsafespace_proxy(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx);

/* handlers of ngx_http_llmsafespace_pools.c (admin) */
ngx_int_t ngx_http_llmsafespace_warmpools_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_warmpools_create(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_warmpools_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_warmpools_patch(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_warmpools_delete(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_warmpools_status(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);

/* ngx_http_llmsafespace_catalog.c: runtimes and profiles */
char *ngx_http_llmsafespace_runtimes_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_llmsafespace_profiles_file(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
/* the descriptor "python", "python:3.11" or its rootfs name selects */
json_t *ngx_http_llmsafespace_runtime_find(
    ngx_http_llmsafespace_main_conf_t *lmcf, const char *name);
json_t *ngx_http_llmsafespace_profile_find(
    ngx_http_llmsafespace_main_conf_t *lmcf, const char *name);
ngx_int_t ngx_http_llmsafespace_runtimes_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_runtimes_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_profiles_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);
ngx_int_t ngx_http_llmsafespace_profiles_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id);


#endif /* _NGX_HTTP_LLMSAFESPACE_API_H_INCLUDED_ */
