/*
 * The verbs a controller needs, waited for (lsc_kube_call): get, list
 * (one page), create, update (PUT, the way to write status with a
 * resourceVersion precondition), JSON merge patch and delete.  Strategic
 * merge patch is deliberately absent: the API server refuses it (415) on
 * custom resources, and its list semantics differ per field.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "lsc.h"
#include "lsc_kube.h"


#define LSC_KUBE_PATH_LEN  2048


const lsc_kube_gvr_t  lsc_kube_configmaps = {
    "", "v1", "configmaps", "ConfigMap", 1
};

const lsc_kube_gvr_t  lsc_kube_events = {
    "events.k8s.io", "v1", "events", "Event", 1
};


/*
 * A name or namespace goes into a URL path: only what Kubernetes names
 * may hold (DNS subdomains, plus ':' of RBAC names), starting with an
 * alphanumeric, so nothing can climb out of the path or add a query.
 */
int
lsc_kube_valid_name(const char *s, size_t max)
{
    size_t  i, n;
    char    c;

    if (s == NULL) {
        return 0;
    }
    n = strlen(s);
    if (n == 0 || n >= max) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
              || (c >= 'A' && c <= 'Z')
              || (i > 0 && (c == '-' || c == '.' || c == ':' || c == '_'))))
        {
            return 0;
        }
    }
    return 1;
}


/*
 * /api/v1/namespaces/NS/PLURAL/NAME/SUB or /apis/GROUP/VERSION/...;
 * ns NULL or "" for all namespaces (or a cluster-scoped kind), name NULL
 * for the collection.  -1: invalid name or too long.
 */
int
lsc_kube_path(char *buf, size_t len, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, const char *sub)
{
    size_t  n;

    if (ns != NULL && *ns == '\0') {
        ns = NULL;
    }
    if ((ns != NULL && (!gvr->namespaced || !lsc_kube_valid_name(ns, 64)))
        || (name != NULL && !lsc_kube_valid_name(name, 254))
        || (sub != NULL && (name == NULL || !lsc_kube_valid_name(sub, 32))))
    {
        return -1;
    }
    if (gvr->group[0] == '\0') {
        n = snprintf(buf, len, "/api/%s", gvr->version);
    } else {
        n = snprintf(buf, len, "/apis/%s/%s", gvr->group, gvr->version);
    }
    if (ns != NULL && n < len) {
        n += snprintf(buf + n, len - n, "/namespaces/%s", ns);
    }
    if (n < len) {
        n += snprintf(buf + n, len - n, "/%s", gvr->plural);
    }
    if (name != NULL && n < len) {
        n += snprintf(buf + n, len - n, "/%s", name);
    }
    if (sub != NULL && n < len) {
        n += snprintf(buf + n, len - n, "/%s", sub);
    }
    return n < len ? 0 : -1;
}


static lsc_kube_rc_e
lsc_kube_bad(lsc_kube_status_t *st, const char *what)
{
    if (st != NULL) {
        memset(st, 0, sizeof(*st));
        snprintf(st->message, sizeof(st->message), "%s", what);
    }
    return LSC_KUBE_EARG;
}


lsc_kube_rc_e
lsc_kube_get(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *name, json_t **out, lsc_kube_status_t *st)
{
    char  path[LSC_KUBE_PATH_LEN];

    if (name == NULL
        || lsc_kube_path(path, sizeof(path), gvr, ns, name, NULL) != 0)
    {
        return lsc_kube_bad(st, "invalid namespace or name");
    }
    return lsc_kube_call(kc, "GET", path, NULL, NULL, out, st);
}


/* appends "&key=escaped value" (or "?..." first) */
static int
lsc_kube_query(char *buf, size_t len, const char *key, const char *value)
{
    char    *esc;
    size_t   n;
    int      rc;

    esc = curl_easy_escape(NULL, value, 0);
    if (esc == NULL) {
        return -1;
    }
    n = strlen(buf);
    rc = snprintf(buf + n, len - n, "%c%s=%s",
                  strchr(buf, '?') ? '&' : '?', key, esc);
    curl_free(esc);
    return (rc < 0 || (size_t) rc >= len - n) ? -1 : 0;
}


/*
 * One page: limit 0 for no limit, cont the previous page's
 * metadata.continue.  resourceVersion is left unset: the answer is a
 * consistent read, never older than what this controller saw before.
 */
lsc_kube_rc_e
lsc_kube_list(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *selector, int limit, const char *cont, json_t **out,
    lsc_kube_status_t *st)
{
    char  path[LSC_KUBE_PATH_LEN], num[16];
    int   rc;

    if (lsc_kube_path(path, sizeof(path), gvr, ns, NULL, NULL) != 0) {
        return lsc_kube_bad(st, "invalid namespace");
    }
    rc = 0;
    if (selector != NULL && *selector != '\0') {
        rc |= lsc_kube_query(path, sizeof(path), "labelSelector", selector);
    }
    if (limit > 0) {
        snprintf(num, sizeof(num), "%d", limit);
        rc |= lsc_kube_query(path, sizeof(path), "limit", num);
    }
    if (cont != NULL && *cont != '\0') {
        rc |= lsc_kube_query(path, sizeof(path), "continue", cont);
    }
    if (rc != 0) {
        return lsc_kube_bad(st, "selector or continue too long");
    }
    return lsc_kube_call(kc, "GET", path, NULL, NULL, out, st);
}


/*
 * The object as sent: a shallow copy with apiVersion and kind from gvr
 * when it has none (custom resources are refused without them).
 */
static json_t *
lsc_kube_typed(const lsc_kube_gvr_t *gvr, json_t *obj)
{
    json_t  *copy;
    char     api[128];

    if (!json_is_object(obj)) {
        return NULL;
    }
    copy = json_copy(obj);
    if (copy == NULL) {
        return NULL;
    }
    if (json_object_get(copy, "apiVersion") == NULL) {
        if (gvr->group[0] == '\0') {
            snprintf(api, sizeof(api), "%s", gvr->version);
        } else {
            snprintf(api, sizeof(api), "%s/%s", gvr->group, gvr->version);
        }
        json_object_set_new(copy, "apiVersion", json_string(api));
    }
    if (json_object_get(copy, "kind") == NULL) {
        json_object_set_new(copy, "kind", json_string(gvr->kind));
    }
    return copy;
}


/* a whole object as a body, with its apiVersion and kind filled in */
static lsc_kube_rc_e
lsc_kube_send_typed(lsc_kube_t *kc, const char *method, const char *path,
    const lsc_kube_gvr_t *gvr, json_t *obj, json_t **out,
    lsc_kube_status_t *st)
{
    json_t         *typed;
    lsc_kube_rc_e   rc;

    typed = lsc_kube_typed(gvr, obj);
    if (typed == NULL) {
        return lsc_kube_bad(st, "not an object");
    }
    rc = lsc_kube_call(kc, method, path, NULL, typed, out, st);
    json_decref(typed);
    return rc;
}


lsc_kube_rc_e
lsc_kube_create(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    json_t *obj, json_t **out, lsc_kube_status_t *st)
{
    char  path[LSC_KUBE_PATH_LEN];

    if (lsc_kube_path(path, sizeof(path), gvr, ns, NULL, NULL) != 0) {
        return lsc_kube_bad(st, "invalid namespace");
    }
    return lsc_kube_send_typed(kc, "POST", path, gvr, obj, out, st);
}


/*
 * PUT: the whole object (or its status with sub "status").  The
 * object's metadata.resourceVersion makes it conditional: a stale one is
 * LSC_KUBE_ECONFLICT, and the caller re-reads and decides again.
 */
lsc_kube_rc_e
lsc_kube_update(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *name, const char *sub, json_t *obj, json_t **out,
    lsc_kube_status_t *st)
{
    char  path[LSC_KUBE_PATH_LEN];

    if (name == NULL
        || lsc_kube_path(path, sizeof(path), gvr, ns, name, sub) != 0)
    {
        return lsc_kube_bad(st, "invalid namespace or name");
    }
    return lsc_kube_send_typed(kc, "PUT", path, gvr, obj, out, st);
}


/*
 * RFC 7386 merge patch (null removes a key; arrays are replaced whole).
 * A metadata.resourceVersion in the patch makes it conditional too.
 */
lsc_kube_rc_e
lsc_kube_merge_patch(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr,
    const char *ns, const char *name, const char *sub, json_t *patch,
    json_t **out, lsc_kube_status_t *st)
{
    char  path[LSC_KUBE_PATH_LEN];

    if (name == NULL || !json_is_object(patch)
        || lsc_kube_path(path, sizeof(path), gvr, ns, name, sub) != 0)
    {
        return lsc_kube_bad(st, "invalid namespace, name or patch");
    }
    return lsc_kube_call(kc, "PATCH", path, "application/merge-patch+json",
                         patch, out, st);
}


lsc_kube_rc_e
lsc_kube_delete(lsc_kube_t *kc, const lsc_kube_gvr_t *gvr, const char *ns,
    const char *name, const lsc_kube_delete_opts_t *o, lsc_kube_status_t *st)
{
    char            path[LSC_KUBE_PATH_LEN];
    json_t         *body, *pre;
    lsc_kube_rc_e   rc;

    if (name == NULL
        || lsc_kube_path(path, sizeof(path), gvr, ns, name, NULL) != 0)
    {
        return lsc_kube_bad(st, "invalid namespace or name");
    }
    body = json_pack("{s:s, s:s}", "apiVersion", "v1",
                     "kind", "DeleteOptions");
    pre = json_object();
    if (body == NULL || pre == NULL) {
        json_decref(body);
        json_decref(pre);
        return lsc_kube_bad(st, "out of memory");
    }
    if (o != NULL && o->uid != NULL) {
        json_object_set_new(pre, "uid", json_string(o->uid));
    }
    if (o != NULL && o->resource_version != NULL) {
        json_object_set_new(pre, "resourceVersion",
                            json_string(o->resource_version));
    }
    if (json_object_size(pre) > 0) {
        json_object_set(body, "preconditions", pre);
    }
    json_decref(pre);
    if (o != NULL && o->propagation != NULL) {
        json_object_set_new(body, "propagationPolicy",
                            json_string(o->propagation));
    }
    rc = lsc_kube_call(kc, "DELETE", path, NULL, body, NULL, st);
    json_decref(body);
    return rc;
}
