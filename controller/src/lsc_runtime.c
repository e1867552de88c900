/*
 * The runtime index (runtimes/index.json, owned by the runtimes): which
 * runtimes exist, the rootfs each runs from and the runner arguments it
 * needs.  A request naming a runtime not listed here is refused.
 */

#include <string.h>

#include "lsc.h"


int
lsc_runtimes_load(lsc_ctx_t *ctx)
{
    json_t        *root, *list;
    json_error_t   err;

    root = json_load_file(ctx->runtimes_file, 0, &err);
    if (root == NULL) {
        lsc_log("error", "%s: %s (line %d)", ctx->runtimes_file, err.text,
                err.line);
        return -1;
    }
    list = json_object_get(root, "runtimes");
    if (!json_is_array(list)) {
        lsc_log("error", "%s: no \"runtimes\" array", ctx->runtimes_file);
        json_decref(root);
        return -1;
    }
    json_incref(list);
    json_decref(root);
    json_decref(ctx->runtimes);
    ctx->runtimes = list;
    return 0;
}


/*
 * "python:3.11" (the descriptor's name), "python" (its rootfs name or the
 * name without the version) all select the same runtime.
 */
json_t *
lsc_runtime_find(lsc_ctx_t *ctx, const char *name)
{
    size_t       i, n;
    json_t      *rt;
    const char  *rn, *fs, *colon;

    if (name == NULL || !lsc_valid_name(name, LSC_NAME_LEN)) {
        return NULL;
    }

    json_array_foreach(ctx->runtimes, i, rt) {
        rn = json_string_value(json_object_get(rt, "name"));
        fs = json_string_value(json_object_get(
                 json_object_get(rt, "rootfs"), "name"));
        if (rn == NULL || fs == NULL || !lsc_valid_name(fs, LSC_NAME_LEN)) {
            continue;
        }
        if (strcmp(rn, name) == 0 || strcmp(fs, name) == 0) {
            return rt;
        }
        colon = strchr(rn, ':');
        n = colon ? (size_t) (colon - rn) : strlen(rn);
        if (strlen(name) == n && strncmp(rn, name, n) == 0) {
            return rt;
        }
    }
    return NULL;
}
