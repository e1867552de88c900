
/*
 * Copyright (C) LLMSafeSpace
 *
 * The module's skeleton: directives, configuration, the phase handlers
 * (redaction at post-read, authentication and rate limiting at access,
 * metrics at log), per-worker start and stop, and log variables.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_auth.h"
#include "ngx_http_llmsafespace_api.h"


static ngx_int_t ngx_http_llmsafespace_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_llmsafespace_init(ngx_conf_t *cf);
static void *ngx_http_llmsafespace_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_llmsafespace_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void *ngx_http_llmsafespace_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llmsafespace_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static ngx_int_t ngx_http_llmsafespace_init_process(ngx_cycle_t *cycle);
static void ngx_http_llmsafespace_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_llmsafespace_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llmsafespace_postgres(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llmsafespace_redis_down(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_llmsafespace_handler_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

static ngx_int_t ngx_http_llmsafespace_post_read_handler(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_redact(ngx_http_request_t *r,
    ngx_str_t *s, ngx_uint_t query, ngx_str_t *key);
static ngx_int_t ngx_http_llmsafespace_access_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llmsafespace_refuse(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message);
static ngx_int_t ngx_http_llmsafespace_refused_handler(
    ngx_http_request_t *r);
static void ngx_http_llmsafespace_cleanup(void *data);

static ngx_int_t ngx_http_llmsafespace_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llmsafespace_request_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llmsafespace_connection_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_llmsafespace_ctx_t *ngx_http_llmsafespace_find_ctx(
    ngx_http_request_t *r);


static ngx_conf_num_bounds_t  ngx_http_llmsafespace_audit_bounds = {
    ngx_conf_check_num_bounds, 1, 10000000
};

static ngx_conf_num_bounds_t  ngx_http_llmsafespace_keys_bounds = {
    ngx_conf_check_num_bounds, 0, 100000
};


static ngx_command_t  ngx_http_llmsafespace_commands[] = {

    { ngx_string("llmsafespace_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_keys_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_keys_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_key_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_key_cache,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_keys_per_user"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_llmsafespace_main_conf_t, keys_per_user),
      &ngx_http_llmsafespace_keys_bounds },

    { ngx_string("llmsafespace_limit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_limit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_limit_redis_down"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_redis_down,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_audit_buffer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_llmsafespace_main_conf_t, audit_buffer),
      &ngx_http_llmsafespace_audit_bounds },

    { ngx_string("llmsafespace_runtimes"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_runtimes_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_profiles"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_profiles_file,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_llmsafespace_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_auth"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llmsafespace_loc_conf_t, auth),
      NULL },

    { ngx_string("llmsafespace_json_errors"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llmsafespace_loc_conf_t, json_errors),
      NULL },

    { ngx_string("llmsafespace_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_handler_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_LLMSAFESPACE_HANDLER_API,
      NULL },

    { ngx_string("llmsafespace_runner"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llmsafespace_handler_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_LLMSAFESPACE_HANDLER_RUNNER,
      NULL },

    { ngx_string("llmsafespace_json_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llmsafespace_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("llmsafespace_sandboxes"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_sandboxes_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_egress_allow"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llmsafespace_egress_allow,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_stream_limit"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llmsafespace_stream_limit,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llmsafespace_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llmsafespace_handler_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_LLMSAFESPACE_HANDLER_HEALTH,
      NULL },

    { ngx_string("llmsafespace_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llmsafespace_handler_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_LLMSAFESPACE_HANDLER_METRICS,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_llmsafespace_module_ctx = {
    ngx_http_llmsafespace_add_variables,   /* preconfiguration */
    ngx_http_llmsafespace_init,            /* postconfiguration */

    ngx_http_llmsafespace_create_main_conf, /* create main configuration */
    ngx_http_llmsafespace_init_main_conf,  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llmsafespace_create_loc_conf, /* create location configuration */
    ngx_http_llmsafespace_merge_loc_conf   /* merge location configuration */
};


ngx_module_t  ngx_http_llmsafespace_module = {
    NGX_MODULE_V1,
    &ngx_http_llmsafespace_module_ctx,     /* module context */
    ngx_http_llmsafespace_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_llmsafespace_init_process,    /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_llmsafespace_exit_process,    /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


#define NGX_HTTP_LLMSAFESPACE_VAR_KEY_ID      0
#define NGX_HTTP_LLMSAFESPACE_VAR_USER        1
#define NGX_HTTP_LLMSAFESPACE_VAR_USER_ID     2
#define NGX_HTTP_LLMSAFESPACE_VAR_SANDBOX_ID  3
#define NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_URL  4
#define NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_TOKEN  5


static ngx_http_variable_t  ngx_http_llmsafespace_vars[] = {

    { ngx_string("llmsafespace_key_id"), NULL,
      ngx_http_llmsafespace_variable, NGX_HTTP_LLMSAFESPACE_VAR_KEY_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_user"), NULL,
      ngx_http_llmsafespace_variable, NGX_HTTP_LLMSAFESPACE_VAR_USER,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_user_id"), NULL,
      ngx_http_llmsafespace_variable, NGX_HTTP_LLMSAFESPACE_VAR_USER_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_sandbox_id"), NULL,
      ngx_http_llmsafespace_variable, NGX_HTTP_LLMSAFESPACE_VAR_SANDBOX_ID,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_runner_url"), NULL,
      ngx_http_llmsafespace_variable, NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_URL,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_runner_token"), NULL,
      ngx_http_llmsafespace_variable,
      NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_TOKEN,
      NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_NOHASH, 0 },

    { ngx_string("llmsafespace_runner_connection"), NULL,
      ngx_http_llmsafespace_connection_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llmsafespace_request"), NULL,
      ngx_http_llmsafespace_request_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_llmsafespace_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llmsafespace_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt                *h;
    ngx_http_core_main_conf_t          *cmcf;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    lmcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_llmsafespace_module);

    /*
     * A phase runs its handlers last added first: the raw path check may
     * answer at once, so it goes after the request line is redacted.
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llmsafespace_path_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llmsafespace_post_read_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llmsafespace_access_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llmsafespace_log_handler;

    if (ngx_http_llmsafespace_metrics_init_zone(cf, lmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_auth_init(cf, lmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_llmsafespace_error_filter_init(cf);
}


static void *
ngx_http_llmsafespace_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llmsafespace_main_conf_t));
    if (lmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     lmcf->redis.addr = NULL;
     *     lmcf->pg.conninfo = { 0, NULL };
     *     lmcf->keys_file = { 0, NULL };
     *     lmcf->file_keys = NULL;
     *     lmcf->key_cache = NULL;
     *     lmcf->metrics = NULL;
     */

    lmcf->key_ttl = NGX_CONF_UNSET;
    lmcf->key_stale = NGX_CONF_UNSET;
    lmcf->keys_per_user = NGX_CONF_UNSET_UINT;
    lmcf->limit_redis_down = NGX_CONF_UNSET_UINT;
    lmcf->audit_buffer = NGX_CONF_UNSET_UINT;
    lmcf->stream_limit = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&lmcf->limit_zones, cf->pool, 4,
                       sizeof(ngx_http_llmsafespace_limit_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return lmcf;
}


static char *
ngx_http_llmsafespace_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    ngx_conf_init_value(lmcf->key_ttl, 60);
    ngx_conf_init_value(lmcf->key_stale, 600);
    ngx_conf_init_uint_value(lmcf->keys_per_user, 20);
    ngx_conf_init_uint_value(lmcf->limit_redis_down,
                             NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_LOCAL);
    ngx_conf_init_uint_value(lmcf->audit_buffer, 10000);
    ngx_conf_init_uint_value(lmcf->stream_limit, 32);

    if (ngx_http_llmsafespace_streams_init_conf(cf, lmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_llmsafespace_limit_init_main_conf(cf, lmcf) != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (lmcf->pg.conninfo.len && lmcf->keys_file.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llmsafespace_keys_file\" and "
                           "\"llmsafespace_postgres\" are exclusive: "
                           "keys come from one or the other");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_llmsafespace_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    llcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llmsafespace_loc_conf_t));
    if (llcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     llcf->handler = NGX_HTTP_LLMSAFESPACE_HANDLER_NONE;
     *     llcf->limit[] = NULL;
     *     llcf->limit_set = 0;
     */

    llcf->auth = NGX_CONF_UNSET;
    llcf->json_errors = NGX_CONF_UNSET;
    llcf->max_body_size = NGX_CONF_UNSET_SIZE;

    return llcf;
}


static char *
ngx_http_llmsafespace_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_llmsafespace_loc_conf_t *prev = parent;
    ngx_http_llmsafespace_loc_conf_t *conf = child;

    ngx_uint_t                          i;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (!conf->limit_set) {
        for (i = 0; i < NGX_HTTP_LLMSAFESPACE_CLASS_N; i++) {
            conf->limit[i] = prev->limit[i];
        }

        conf->limit_set = prev->limit_set;
    }

    /* the API always authenticates and always answers errors in JSON */

    if (conf->handler == NGX_HTTP_LLMSAFESPACE_HANDLER_API) {

        if (conf->auth == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"llmsafespace_auth off\" cannot be used "
                               "with \"llmsafespace_api\"");
            return NGX_CONF_ERROR;
        }

        conf->auth = 1;
        ngx_conf_init_value(conf->json_errors, 1);
    }

    if (conf->handler == NGX_HTTP_LLMSAFESPACE_HANDLER_RUNNER) {
        ngx_conf_init_value(conf->json_errors, 1);
    }

    ngx_conf_merge_value(conf->auth, prev->auth, 0);
    ngx_conf_merge_value(conf->json_errors, prev->json_errors, 0);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              1024 * 1024);

    if (conf->auth) {
        lmcf = ngx_http_conf_get_module_main_conf(cf,
                                               ngx_http_llmsafespace_module);

        if (lmcf->pg.conninfo.len == 0 && lmcf->keys_file.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "API key authentication needs "
                               "\"llmsafespace_postgres\" or "
                               "\"llmsafespace_keys_file\"");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llmsafespace_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    if (lmcf->redis.addr) {
        return "is duplicate";
    }

    return ngx_http_llmsafespace_redis_parse(cf, &lmcf->redis);
}


static char *
ngx_http_llmsafespace_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    if (lmcf->pg.conninfo.len) {
        return "is duplicate";
    }

    return ngx_http_llmsafespace_pg_parse(cf, &lmcf->pg);
}


static char *
ngx_http_llmsafespace_redis_down(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf = conf;

    ngx_str_t  *value;

    if (lmcf->limit_redis_down != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "local") == 0) {
        lmcf->limit_redis_down = NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_LOCAL;

    } else if (ngx_strcmp(value[1].data, "refuse") == 0) {
        lmcf->limit_redis_down = NGX_HTTP_LLMSAFESPACE_LIMIT_REDIS_REFUSE;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llmsafespace_limit_redis_down: invalid value "
                           "\"%V\", expected \"local\" or \"refuse\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llmsafespace_handler_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_loc_conf_t *llcf = conf;

    ngx_str_t                          *value;
    ngx_http_core_srv_conf_t          **server;
    ngx_http_core_loc_conf_t           *clcf;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    if (llcf->handler != NGX_HTTP_LLMSAFESPACE_HANDLER_NONE) {
        return "conflicts with another llmsafespace handler in this location";
    }

    llcf->handler = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    switch (cmd->offset) {

    case NGX_HTTP_LLMSAFESPACE_HANDLER_API:
        clcf->handler = ngx_http_llmsafespace_api_handler;

        lmcf = ngx_http_conf_get_module_main_conf(cf,
                                               ngx_http_llmsafespace_module);

        if (lmcf->api_servers == NULL) {
            lmcf->api_servers = ngx_array_create(cf->pool, 2,
                                         sizeof(ngx_http_core_srv_conf_t *));
            if (lmcf->api_servers == NULL) {
                return NGX_CONF_ERROR;
            }
        }

        server = ngx_array_push(lmcf->api_servers);
        if (server == NULL) {
            return NGX_CONF_ERROR;
        }

        *server = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

        ngx_str_set(&llcf->runner_location, "@llmsafespace_runner");

        if (cf->args->nelts == 2) {
            value = cf->args->elts;

            if (ngx_strncmp(value[1].data, "runner=@", 8) != 0
                || value[1].len < 9)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"llmsafespace_api\": invalid "
                                   "parameter \"%V\", expected "
                                   "\"runner=@name\"", &value[1]);
                return NGX_CONF_ERROR;
            }

            llcf->runner_location.data = value[1].data + 7;
            llcf->runner_location.len = value[1].len - 7;
        }

        break;

    case NGX_HTTP_LLMSAFESPACE_HANDLER_RUNNER:
        /* proxy_pass is the content handler: only mark the location */
        if (clcf->named == 0) {
            return "must be used in a named location (\"location @name\")";
        }

        break;

    case NGX_HTTP_LLMSAFESPACE_HANDLER_HEALTH:
        clcf->handler = ngx_http_llmsafespace_health_handler;
        break;

    default: /* NGX_HTTP_LLMSAFESPACE_HANDLER_METRICS */
        clcf->handler = ngx_http_llmsafespace_metrics_handler;
        break;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_llmsafespace_init_process(ngx_cycle_t *cycle)
{
    ngx_http_conf_ctx_t                *ctx;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    ctx = (ngx_http_conf_ctx_t *) ngx_get_conf(cycle->conf_ctx,
                                               ngx_http_module);
    if (ctx == NULL) {
        return NGX_OK;
    }

    lmcf = ctx->main_conf[ngx_http_llmsafespace_module.ctx_index];

    if (lmcf->redis.addr
        && ngx_http_llmsafespace_redis_init_process(cycle, &lmcf->redis)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (lmcf->pg.conninfo.len
        && ngx_http_llmsafespace_pg_init_process(cycle, &lmcf->pg)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_audit_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_llmsafespace_metrics_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_llmsafespace_auth_init_process(cycle, lmcf);
}


static void
ngx_http_llmsafespace_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llmsafespace_metrics_exit_process(cycle);
    ngx_http_llmsafespace_auth_exit_process(cycle);
    ngx_http_llmsafespace_inflight_exit_process(cycle);
    ngx_http_llmsafespace_audit_exit_process(cycle);
    ngx_http_llmsafespace_pg_exit_process(cycle);
    ngx_http_llmsafespace_redis_exit_process(cycle);
}


ngx_http_llmsafespace_ctx_t *
ngx_http_llmsafespace_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_llmsafespace_find_ctx(r);
    if (ctx) {
        return ctx;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llmsafespace_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    ctx->request = r;
    ctx->route_class = NGX_HTTP_LLMSAFESPACE_CLASS_DEFAULT;

    cln->handler = ngx_http_llmsafespace_cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_llmsafespace_module);

    return ctx;
}


/*
 * Internal and named redirects clear r->ctx, but the identity, the rate
 * limit verdict and the runner chosen must survive them (the runner
 * location is entered by a named redirect): the context is found again
 * through its pool cleanup, as ngx_http_realip_module does.
 */

static ngx_http_llmsafespace_ctx_t *
ngx_http_llmsafespace_find_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t           *cln;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    if (ctx) {
        return ctx;
    }

    if (r != r->main) {
        return NULL;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_llmsafespace_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_llmsafespace_module);
            return ctx;
        }
    }

    return NULL;
}


/*
 * The request's pool is going away: whatever it still waits for must not
 * call back into it.
 */

static void
ngx_http_llmsafespace_cleanup(void *data)
{
    ngx_http_llmsafespace_ctx_t  *ctx = data;

    if (ctx->redis_cmd) {
        ngx_http_llmsafespace_redis_cancel(ctx->redis_cmd);
        ctx->redis_cmd = NULL;
    }

    if (ctx->pg_query) {
        ngx_http_llmsafespace_pg_cancel(ctx->pg_query);
        ctx->pg_query = NULL;
    }

    if (ctx->body) {
        json_decref(ctx->body);
        ctx->body = NULL;
    }

    if (ctx->wait_event.timer_set) {
        ngx_del_timer(&ctx->wait_event);
    }
}


/*
 * Resumes a request that an asynchronous step suspended.  Called from
 * Redis or PostgreSQL event handlers, i.e. outside of the request's own
 * events, so posted subrequests must be run here.
 */

void
ngx_http_llmsafespace_wake(ngx_http_request_t *r)
{
    ngx_connection_t             *c;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    c = r->connection;

    if (ctx == NULL || !ctx->waiting) {
        return;
    }

    ctx->waiting = 0;
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


/*
 * A key in the query (ngx_http_llmsafespace_token_arg() says which
 * argument that is) is taken here, before anything logs the request, and
 * then redacted from the request line ($request, the error log's
 * "request:"), the raw URI ($request_uri), the arguments ($args, $arg_*,
 * and what proxy_pass sends on) and a Referer pointing at such a URL:
 * whatever the route, and whether or not the key is accepted there, only
 * ctx->query_key holds it.
 */

static ngx_int_t
ngx_http_llmsafespace_post_read_handler(ngx_http_request_t *r)
{
    ngx_str_t                     key;
    ngx_http_llmsafespace_ctx_t  *ctx;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    /* "referrer:" of the error log, $http_referer: may be a URL of ours */

    if (r->headers_in.referer
        && ngx_http_llmsafespace_redact(r, &r->headers_in.referer->value, 1,
                                        NULL)
           == NGX_ERROR)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_strlchr(r->request_line.data,
                    r->request_line.data + r->request_line.len, '?')
        == NULL)
    {
        return NGX_DECLINED;
    }

    /*
     * Each string is redacted on its own: nginx's arguments are not always
     * all that follows the line's first '?' (one after a '#' is not an
     * argument to nginx, and so no key, but still logged).
     */

    ngx_str_null(&key);

    if (ngx_http_llmsafespace_redact(r, &r->args, 0, &key) == NGX_ERROR
        || ngx_http_llmsafespace_redact(r, &r->request_line, 1, NULL)
           == NGX_ERROR
        || ngx_http_llmsafespace_redact(r, &r->unparsed_uri, 1, NULL)
           == NGX_ERROR)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (key.data) {
        ctx = ngx_http_llmsafespace_get_ctx(r);
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->query_key = key;
    }

    return NGX_DECLINED;
}


/*
 * Replaces s with a copy in which the value of each key argument reads
 * "REDACTED".  The arguments start after the first '?' (query) or at
 * once; a value ends at '&' or ' ' (the request line goes on with
 * " HTTP/1.1").  The first value found, as it was, goes to *key.
 * NGX_DECLINED: s holds no key argument, and is left as it is.
 */

static ngx_int_t
ngx_http_llmsafespace_redact(ngx_http_request_t *r, ngx_str_t *s,
    ngx_uint_t query, ngx_str_t *key)
{
    u_char      *p, *last, *start, *value, *copy, *dst;
    size_t       len;
    ngx_uint_t   n;

    p = s->data;
    last = p + s->len;

    if (query) {
        p = ngx_strlchr(p, last, '?');
        if (p == NULL) {
            return NGX_DECLINED;
        }

        p++;
    }

    start = p;
    n = 0;

    for ( /* void */ ; p < last; p++) {
        if ((p == start || p[-1] == '&')
            && ngx_http_llmsafespace_token_arg(p, last))
        {
            n++;
        }
    }

    if (n == 0) {
        return NGX_DECLINED;
    }

    copy = ngx_pnalloc(r->pool, s->len + n * (sizeof("REDACTED") - 1));
    if (copy == NULL) {
        return NGX_ERROR;
    }

    p = start;
    dst = ngx_cpymem(copy, s->data, p - s->data);

    while (p < last) {

        if (p == start || p[-1] == '&') {
            len = ngx_http_llmsafespace_token_arg(p, last);

            if (len) {
                dst = ngx_cpymem(dst, p, len);
                p += len;
                value = p;

                while (p < last && *p != '&' && *p != ' ') {
                    p++;
                }

                if (p > value) {
                    if (key && key->data == NULL) {
                        key->data = value;
                        key->len = p - value;
                    }

                    dst = ngx_cpymem(dst, "REDACTED",
                                     sizeof("REDACTED") - 1);
                }

                continue;
            }
        }

        *dst++ = *p++;
    }

    s->data = copy;
    s->len = dst - copy;

    return NGX_OK;
}


/*
 * Authentication, then rate limiting.  Either may wait for PostgreSQL or
 * Redis: the handler then returns NGX_AGAIN, the phase engine stops, and
 * ngx_http_llmsafespace_wake() runs the phases again, which calls this
 * handler again to pick up where it left.
 */

static ngx_int_t
ngx_http_llmsafespace_access_handler(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_http_llmsafespace_ctx_t       *ctx;
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    if (!llcf->auth || r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_llmsafespace_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->error_status) {
        /* refused earlier, the content phase answers */
        return NGX_OK;
    }

    if (!ctx->auth_done) {

        if (llcf->handler == NGX_HTTP_LLMSAFESPACE_HANDLER_API) {
            ngx_http_llmsafespace_api_classify(r, ctx);
        }

        rc = ngx_http_llmsafespace_authenticate(r, ctx);

        if (rc == NGX_AGAIN) {
            ctx->waiting = 1;
            return NGX_AGAIN;
        }

        ctx->auth_done = 1;

        if (rc != NGX_OK) {
            ngx_http_llmsafespace_metrics_auth_failure();

            return ngx_http_llmsafespace_refuse(r, ctx, rc,
                                                ctx->error_code,
                                                (char *)
                                                ctx->error_message.data);
        }

        ctx->authenticated = 1;
        ctx->limit_rc = NGX_DONE;
    }

    if (!ctx->limit_done) {

        if (ctx->limit_rc == NGX_DONE) {
            rc = ngx_http_llmsafespace_limit_check(r);

            if (rc == NGX_AGAIN) {
                ctx->limit_rc = NGX_AGAIN;
                ctx->waiting = 1;
                return NGX_AGAIN;
            }

        } else if (ctx->limit_rc == NGX_AGAIN) {
            /* woken before the limiter answered: keep waiting */
            ctx->waiting = 1;
            return NGX_AGAIN;

        } else {
            rc = ctx->limit_rc;
        }

        ctx->limit_done = 1;

        switch (rc) {

        case NGX_DECLINED:
            break;

        case NGX_OK:
            if (ngx_http_llmsafespace_set_limit_headers(r, &ctx->limit, 0)
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            break;

        case NGX_HTTP_TOO_MANY_REQUESTS:
            if (ngx_http_llmsafespace_set_limit_headers(r, &ctx->limit, 1)
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            return ngx_http_llmsafespace_refuse(r, ctx, rc, "rate_limited",
                                                "rate limit exceeded");

        case NGX_HTTP_SERVICE_UNAVAILABLE:
            return ngx_http_llmsafespace_refuse(r, ctx, rc, "unavailable",
                                                "rate limiter unavailable");

        default:
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A refused request is answered by the content phase, so the answer is the
 * JSON error body whatever content handler the location has (proxy_pass
 * included) and access handlers never send a response themselves.
 */

static ngx_int_t
ngx_http_llmsafespace_refuse(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message)
{
    size_t  len;

    ctx->error_status = status;

    if (code == NULL) {
        code = ngx_http_llmsafespace_error_code(status);
    }

    ctx->error_code = code;

    if (message == NULL || ctx->error_message.data == (u_char *) message) {
        /* already in ctx->error_message, or a default below */

    } else {
        len = ngx_strlen(message);
        ctx->error_message.data = ngx_pnalloc(r->pool, len + 1);
        if (ctx->error_message.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(ctx->error_message.data, message, len + 1);
        ctx->error_message.len = len;
    }

    if (ctx->error_message.data == NULL) {
        ngx_str_set(&ctx->error_message, "request refused");
    }

    r->content_handler = ngx_http_llmsafespace_refused_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_refused_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_table_elt_t              *h;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llmsafespace_module);
    if (ctx == NULL || ctx->error_status == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->error_status == NGX_HTTP_UNAUTHORIZED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "WWW-Authenticate");
        ngx_str_set(&h->value, "Bearer realm=\"llmsafespace\"");
        r->headers_out.www_authenticate = h;
    }

    if (ctx->error_status == NGX_HTTP_TOO_MANY_REQUESTS) {
        return ngx_http_llmsafespace_send_error_details(r,
                   ctx->error_status, ctx->error_code, &ctx->error_message,
                   json_pack("{s:I, s:I, s:I}",
                             "limit", (json_int_t) ctx->limit.limit,
                             "reset", (json_int_t) ctx->limit.reset,
                             "retryAfter",
                             (json_int_t) ctx->limit.retry_after));
    }

    return ngx_http_llmsafespace_send_error(r, ctx->error_status,
                                            ctx->error_code, "%V",
                                            &ctx->error_message);
}


static ngx_int_t
ngx_http_llmsafespace_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                         status;
    ngx_http_llmsafespace_ctx_t       *ctx;
    ngx_http_llmsafespace_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llmsafespace_module);

    if (!llcf->auth && llcf->handler != NGX_HTTP_LLMSAFESPACE_HANDLER_API
        && llcf->handler != NGX_HTTP_LLMSAFESPACE_HANDLER_RUNNER)
    {
        return NGX_OK;
    }

    ctx = ngx_http_llmsafespace_find_ctx(r);

    status = r->err_status ? r->err_status : r->headers_out.status;

    ngx_http_llmsafespace_metrics_request(
        ctx ? ctx->route_class : NGX_HTTP_LLMSAFESPACE_CLASS_DEFAULT, status);

    /* every authenticated mutation leaves a record, refused ones too */

    if (ctx && ctx->authenticated
        && (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH
                         |NGX_HTTP_DELETE)))
    {
        ngx_http_llmsafespace_audit(r, ctx->audit_action, &ctx->audit_object,
                                    status);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llmsafespace_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                    *s;
    ngx_http_llmsafespace_ctx_t  *ctx;

    ctx = ngx_http_llmsafespace_find_ctx(r->main);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_URL:
        s = &ctx->runner_url;
        break;

    case NGX_HTTP_LLMSAFESPACE_VAR_RUNNER_TOKEN:
        s = &ctx->runner_token;
        break;

    case NGX_HTTP_LLMSAFESPACE_VAR_KEY_ID:
        s = &ctx->identity.key_id;
        break;

    case NGX_HTTP_LLMSAFESPACE_VAR_USER:
        s = &ctx->identity.user_name;
        break;

    case NGX_HTTP_LLMSAFESPACE_VAR_USER_ID:
        s = &ctx->identity.user_id;
        break;

    default: /* NGX_HTTP_LLMSAFESPACE_VAR_SANDBOX_ID */
        s = &ctx->sandbox_id;
        break;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}


/* the request line as logged: the post-read handler already redacted it */

static ngx_int_t
ngx_http_llmsafespace_request_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    if (r->main->request_line.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = r->main->request_line.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = r->main->request_line.data;

    return NGX_OK;
}


/* "upgrade" on a WebSocket handshake, else empty (the header is omitted) */

static ngx_int_t
ngx_http_llmsafespace_connection_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    if (r->headers_in.upgrade == NULL) {
        v->len = 0;
        v->data = (u_char *) "";
        return NGX_OK;
    }

    v->len = sizeof("upgrade") - 1;
    v->data = (u_char *) "upgrade";

    return NGX_OK;
}
