
/*
 * Copyright (C) LLMSafeSpace
 *
 * The catalog: runtimes (runtimes/index.json, owned by the runtimes) and
 * sandbox profiles, read once at configuration time and served by
 * GET /runtimes and GET /profiles.  The sandbox and warm pool routes use
 * the lookups here to check the names a request gives.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_llmsafespace.h"
#include "ngx_http_llmsafespace_api.h"


/* the controller's limit on names (LSC_NAME_LEN, with its NUL) */
#define NGX_HTTP_LLMSAFESPACE_CATALOG_NAME  63


static char *ngx_http_llmsafespace_catalog_file(ngx_conf_t *cf,
    json_t **slot, ngx_uint_t profiles);
static const char *ngx_http_llmsafespace_catalog_check(json_t *list,
    ngx_uint_t profiles, size_t *index);
static ngx_int_t ngx_http_llmsafespace_catalog_name(const char *name);
static const char *ngx_http_llmsafespace_profile_check(json_t *profile);
static void ngx_http_llmsafespace_catalog_cleanup(void *data);
static ngx_int_t ngx_http_llmsafespace_catalog_get(ngx_http_request_t *r,
    ngx_str_t *id, ngx_uint_t profiles);
static ngx_int_t ngx_http_llmsafespace_catalog_list(ngx_http_request_t *r,
    json_t *list, const char *name, json_t *(*item)(json_t *));
static json_t *ngx_http_llmsafespace_runtime_public(json_t *runtime);
static json_t *ngx_http_llmsafespace_profile_public(json_t *profile);


/*
 * What GET /runtimes shows of a descriptor; "rootfs" and "runnerArgs" say
 * how this machine runs it and are nobody's business.
 */

static const char  *ngx_http_llmsafespace_runtime_fields[] = {
    "name", "version", "language", "languages", "description", "image",
    "preinstalledPackages", "packageManagers", "securityLevels", NULL
};




/* llmsafespace_runtimes FILE: {"runtimes": [{"name": ..., ...}, ...]} */

char *
ngx_http_llmsafespace_runtimes_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t *lmcf = conf;

    return ngx_http_llmsafespace_catalog_file(cf, &lmcf->runtimes, 0);
}


/* llmsafespace_profiles FILE: [{"name": ...}, ...] or {"profiles": [...]} */

char *
ngx_http_llmsafespace_profiles_file(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_llmsafespace_main_conf_t *lmcf = conf;

    return ngx_http_llmsafespace_catalog_file(cf, &lmcf->profiles, 1);
}


/*
 * Reads and checks a catalog file.  The list is released with the
 * configuration's pool: a reload neither leaks the old catalog nor frees
 * it under the workers still serving with it.
 */

static char *
ngx_http_llmsafespace_catalog_file(ngx_conf_t *cf, json_t **slot,
    ngx_uint_t profiles)
{
    size_t               i;
    json_t              *root, *list;
    ngx_str_t           *value, name;
    const char          *reason;
    json_error_t         err;
    ngx_pool_cleanup_t  *cln;

    if (*slot) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* taken before the document so that a failure here cannot leak it */

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a repeated key is a mistake in the file, not a choice of the last */

    root = json_load_file((char *) name.data, JSON_REJECT_DUPLICATES, &err);

    if (root == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: cannot load \"%V\": %s (line %d, column %d)",
                           &value[0], &name, err.text, err.line, err.column);
        return NGX_CONF_ERROR;
    }

    if (profiles) {
        list = json_is_array(root) ? root : json_object_get(root, "profiles");

    } else {
        list = json_object_get(root, "runtimes");
    }

    if (!json_is_array(list)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"%V\" is not %s", &value[0], &name,
                           profiles ? "an array or an object with a "
                                      "\"profiles\" array"
                                    : "an object with a \"runtimes\" array");
        json_decref(root);
        return NGX_CONF_ERROR;
    }

    reason = ngx_http_llmsafespace_catalog_check(list, profiles, &i);

    if (reason) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"%V\": %s #%uz %s", &value[0], &name,
                           profiles ? "profile" : "runtime", i + 1, reason);
        json_decref(root);
        return NGX_CONF_ERROR;
    }

    json_incref(list);
    json_decref(root);

    cln->handler = ngx_http_llmsafespace_catalog_cleanup;
    cln->data = list;

    *slot = list;

    return NGX_CONF_OK;
}


static const char *
ngx_http_llmsafespace_catalog_check(json_t *list, ngx_uint_t profiles,
    size_t *index)
{
    size_t       i, k;
    json_t      *item;
    const char  *name, *reason;

    json_array_foreach(list, i, item) {

        *index = i;

        if (!json_is_object(item)) {
            return "is not an object";
        }

        name = json_string_value(json_object_get(item, "name"));

        if (name == NULL) {
            return "has no string \"name\"";
        }

        /* names are looked up from URLs and request bodies */

        if (ngx_http_llmsafespace_catalog_name(name) != NGX_OK) {
            return "has a \"name\" that is not 1-63 characters of "
                   "[A-Za-z0-9._:-]";
        }

        for (k = 0; k < i; k++) {
            if (ngx_strcmp(name, json_string_value(json_object_get(
                                 json_array_get(list, k), "name")))
                == 0)
            {
                return "repeats the name of an earlier one";
            }
        }

        if (profiles) {
            reason = ngx_http_llmsafespace_profile_check(item);
            if (reason) {
                return reason;
            }
        }
    }

    return NULL;
}


/* the controller's lsc_valid_name(): runtime and profile names */

static ngx_int_t
ngx_http_llmsafespace_catalog_name(const char *name)
{
    size_t  i, n;

    n = ngx_strlen(name);

    if (n == 0 || n > NGX_HTTP_LLMSAFESPACE_CATALOG_NAME) {
        return NGX_DECLINED;
    }

    for (i = 0; i < n; i++) {
        if (!(isalnum((u_char) name[i]) || name[i] == '-' || name[i] == '_'
              || name[i] == '.' || name[i] == ':'))
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/*
 * The fields a sandbox create takes from a profile must have the types it
 * expects; the rest of a profile is shown as it is.
 */

static const char *
ngx_http_llmsafespace_profile_check(json_t *profile)
{
    json_t      *v, *na;
    const char  *level;

    v = json_object_get(profile, "securityLevel");

    if (v) {
        level = json_string_value(v);

        if (level == NULL
            || (ngx_strcmp(level, "standard") != 0
                && ngx_strcmp(level, "high") != 0))
        {
            return "has a \"securityLevel\" other than \"standard\" or "
                   "\"high\"";
        }
    }

    v = json_object_get(profile, "description");

    if (v && !json_is_string(v)) {
        return "has a \"description\" that is not a string";
    }

    na = json_object_get(profile, "networkAccess");

    if (na == NULL) {
        return NULL;
    }

    if (!json_is_object(na)) {
        return "has a \"networkAccess\" that is not an object";
    }

    v = json_object_get(na, "egress");

    if (v && !json_is_array(v)) {
        return "has a \"networkAccess.egress\" that is not an array";
    }

    v = json_object_get(na, "ingress");

    if (v && !json_is_boolean(v)) {
        return "has a \"networkAccess.ingress\" that is not a boolean";
    }

    return NULL;
}


static void
ngx_http_llmsafespace_catalog_cleanup(void *data)
{
    json_decref((json_t *) data);
}


/*
 * The controller's lsc_runtime_find(): "python:3.11" (the descriptor's
 * name), "python" (its rootfs name, or the name without its version) all
 * select the same runtime.  A descriptor without a rootfs name is one the
 * controller cannot run, so it is never selected here either.
 */

json_t *
ngx_http_llmsafespace_runtime_find(ngx_http_llmsafespace_main_conf_t *lmcf,
    const char *name)
{
    size_t       i, n;
    json_t      *rt;
    const char  *rn, *fs, *colon;

    if (lmcf->runtimes == NULL || name == NULL
        || ngx_http_llmsafespace_catalog_name(name) != NGX_OK)
    {
        return NULL;
    }

    json_array_foreach(lmcf->runtimes, i, rt) {

        rn = json_string_value(json_object_get(rt, "name"));
        fs = json_string_value(json_object_get(json_object_get(rt, "rootfs"),
                                               "name"));

        if (rn == NULL || fs == NULL
            || ngx_http_llmsafespace_catalog_name(fs) != NGX_OK)
        {
            continue;
        }

        if (ngx_strcmp(rn, name) == 0 || ngx_strcmp(fs, name) == 0) {
            return rt;
        }

        colon = ngx_strchr(rn, ':');
        n = colon ? (size_t) (colon - rn) : ngx_strlen(rn);

        if (ngx_strlen(name) == n && ngx_strncmp(rn, name, n) == 0) {
            return rt;
        }
    }

    return NULL;
}


json_t *
ngx_http_llmsafespace_profile_find(ngx_http_llmsafespace_main_conf_t *lmcf,
    const char *name)
{
    size_t   i;
    json_t  *p;

    if (lmcf->profiles == NULL || name == NULL) {
        return NULL;
    }

    json_array_foreach(lmcf->profiles, i, p) {
        if (ngx_strcmp(json_string_value(json_object_get(p, "name")), name)
            == 0)
        {
            return p;
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_llmsafespace_runtimes_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    return ngx_http_llmsafespace_catalog_list(r, lmcf->runtimes, "runtimes",
                                      ngx_http_llmsafespace_runtime_public);
}


ngx_int_t
ngx_http_llmsafespace_runtimes_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_catalog_get(r, id, 0);
}


ngx_int_t
ngx_http_llmsafespace_profiles_list(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    return ngx_http_llmsafespace_catalog_list(r, lmcf->profiles, "profiles",
                                      ngx_http_llmsafespace_profile_public);
}


ngx_int_t
ngx_http_llmsafespace_profiles_get(ngx_http_request_t *r,
    ngx_http_llmsafespace_ctx_t *ctx, ngx_str_t *id)
{
    return ngx_http_llmsafespace_catalog_get(r, id, 1);
}


static ngx_int_t
ngx_http_llmsafespace_catalog_get(ngx_http_request_t *r, ngx_str_t *id,
    ngx_uint_t profiles)
{
    u_char                             *name;
    json_t                             *item;
    ngx_http_llmsafespace_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llmsafespace_module);

    name = ngx_http_llmsafespace_api_cstr(r, id->data, id->len);
    if (name == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (profiles) {
        item = ngx_http_llmsafespace_profile_find(lmcf, (const char *) name);

    } else {
        item = ngx_http_llmsafespace_runtime_find(lmcf, (const char *) name);
    }

    if (item == NULL) {
        return ngx_http_llmsafespace_send_error(r, NGX_HTTP_NOT_FOUND,
                                                "not_found",
                                                "%s %V not found",
                                                profiles ? "profile"
                                                         : "runtime", id);
    }

    item = profiles ? ngx_http_llmsafespace_profile_public(item)
                    : ngx_http_llmsafespace_runtime_public(item);

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK, item);
}


/* {"<name>": [item(x), ...]}; no file configured: an empty list */

static ngx_int_t
ngx_http_llmsafespace_catalog_list(ngx_http_request_t *r, json_t *list,
    const char *name, json_t *(*item)(json_t *))
{
    size_t   i;
    json_t  *out, *x;

    out = json_array();
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_array_foreach(list, i, x) {
        if (json_array_append_new(out, item(x)) != 0) {
            json_decref(out);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_llmsafespace_send_object(r, NGX_HTTP_OK,
                                             json_pack("{s:o}", name, out));
}


static json_t *
ngx_http_llmsafespace_runtime_public(json_t *runtime)
{
    json_t       *out, *v;
    const char  **f;

    out = json_object();
    if (out == NULL) {
        return NULL;
    }

    for (f = ngx_http_llmsafespace_runtime_fields; *f; f++) {
        v = json_object_get(runtime, *f);

        if (v && json_object_set(out, *f, v) != 0) {
            json_decref(out);
            return NULL;
        }
    }

    return out;
}


/* a profile is public as a whole: it is what profileRef applies */

static json_t *
ngx_http_llmsafespace_profile_public(json_t *profile)
{
    return json_incref(profile);
}
