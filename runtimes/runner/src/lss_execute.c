/*
 * POST /execute and POST /packages: run to completion in the connection's
 * thread and answer with the execute-shaped result.
 */

#include "lss_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct {
    u_char  *buf[2];
    size_t   len[2];
} lss_collect_t;


void
lss_exec_id(char *buf, size_t len)
{
    u_char  rnd[12];
    size_t  i;

    if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
        memset(rnd, 0, sizeof(rnd));
    }

    snprintf(buf, len, "exec-");
    for (i = 0; i < sizeof(rnd) && 5 + i * 2 + 2 < len; i++) {
        snprintf(buf + 5 + i * 2, 3, "%02x", rnd[i]);
    }
}


/* output is bounded by the cap, so collecting it whole is bounded too */
static void
lss_collect(lss_exec_t *ex, int s, const u_char *p, size_t n)
{
    u_char         *nb;
    lss_collect_t  *col;

    col = ex->data;

    nb = realloc(col->buf[s], col->len[s] + n);
    if (nb == NULL) {
        ex->truncated = 1;
        return;
    }
    memcpy(nb + col->len[s], p, n);
    col->buf[s] = nb;
    col->len[s] += n;
}


static enum MHD_Result
lss_run_and_answer(struct MHD_Connection *c, lss_req_t *r, lss_exec_t *ex)
{
    int              i;
    char             t1[40], t2[40];
    json_t          *res;
    lss_collect_t    col;
    enum MHD_Result  rc;

    memset(&col, 0, sizeof(col));

    if (lss_exec_slot_get() != 0) {
        lss_exec_free(ex);
        return lss_http_error(c, r, 429, "rate_limited",
                              "too many concurrent executions", NULL);
    }

    lss_exec_id(ex->id, sizeof(ex->id));
    ex->on_output = lss_collect;
    ex->data = &col;

    lss_exec_run(ex);
    lss_exec_slot_put();

    if (ex->refused) {
        rc = lss_http_error(c, r, (unsigned) ex->refused,
                            ex->refused == 409 ? "conflict" : "rate_limited",
                            ex->error ? ex->error : "refused", "context");
        goto done;
    }

    if (ex->end == LSS_END_INTERNAL && ex->exit_code == -1) {
        rc = lss_http_error(c, r, 503, "unavailable",
                            ex->error ? ex->error : "execution failed",
                            NULL);
        goto done;
    }

    lss_iso_time(ex->started_ms, t1, sizeof(t1));
    lss_iso_time(ex->completed_ms, t2, sizeof(t2));

    res = json_pack("{sssssssssiso*so*sbso*}",
                    "executionId", ex->id,
                    "status", lss_exec_status(ex),
                    "startedAt", t1,
                    "completedAt", t2,
                    "exitCode", ex->exit_code,
                    "stdout", lss_utf8_json(col.buf[0], col.len[0]),
                    "stderr", lss_utf8_json(col.buf[1], col.len[1]),
                    "truncated", ex->truncated,
                    "usage", lss_exec_usage(ex));
    if (res != NULL && ex->error != NULL) {
        json_object_set_new(res, "error", json_string(ex->error));
    }

    rc = lss_http_json(c, r, 200, res);

done:

    for (i = 0; i < 2; i++) {
        free(col.buf[i]);
    }

    /* freed once the answer is out: see lss_completed() */
    r->ex = ex;

    return rc;
}


enum MHD_Result
lss_execute(struct MHD_Connection *c, lss_req_t *r, json_t *body)
{
    int          st;
    char         err[160];
    lss_exec_t  *ex;
    const char  *field;

    ex = lss_exec_new();
    if (ex == NULL) {
        json_decref(body);
        return lss_http_error(c, r, 500, "internal", "out of memory", NULL);
    }

    st = lss_exec_parse(ex, body, 0, err, sizeof(err), &field);
    json_decref(body);

    if (st != 0) {
        lss_exec_free(ex);
        return lss_http_error(c, r, (unsigned) st,
                              st == 400 ? "bad_request"
                              : st == 422 ? "validation_error" : "internal",
                              err, field);
    }

    return lss_run_and_answer(c, r, ex);
}


/*
 * Package names become argv after "--": a name can never be an option
 * and never meets a shell.  The character set still refuses whitespace
 * and control bytes so that logs and error messages stay readable.
 */
static int
lss_package_name_ok(const char *s)
{
    size_t  len;

    len = strlen(s);
    if (len == 0 || len > 214 || s[0] == '-') {
        return 0;
    }

    for ( ; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')
              || (*s >= '0' && *s <= '9') || strchr("._-@/=<>!~+:[],^*", *s)))
        {
            return 0;
        }
    }

    return 1;
}


enum MHD_Result
lss_packages(struct MHD_Connection *c, lss_req_t *r, json_t *body)
{
    size_t       i;
    char        *s;
    json_t      *pkgs, *v, *argv, *env;
    lss_exec_t  *ex;
    const char  *mgr;

    pkgs = json_object_get(body, "packages");
    mgr = json_string_value(json_object_get(body, "manager"));
    if (mgr == NULL) {
        mgr = "pip";
    }

    if (!json_is_array(pkgs) || json_array_size(pkgs) == 0
        || json_array_size(pkgs) > 64)
    {
        json_decref(body);
        return lss_http_error(c, r, 422, "validation_error",
                              "packages must be a list of 1-64 names",
                              "packages");
    }

    json_array_foreach(pkgs, i, v) {
        if (!json_is_string(v) || !lss_package_name_ok(json_string_value(v))
            || strlen(json_string_value(v)) != json_string_length(v))
        {
            json_decref(body);
            return lss_http_error(c, r, 422, "validation_error",
                                  "invalid package name", "packages");
        }
    }

    argv = json_array();
    env = json_object();
    ex = lss_exec_new();
    if (argv == NULL || env == NULL || ex == NULL) {
        json_decref(argv);
        json_decref(env);
        json_decref(body);
        lss_exec_free(ex);
        return lss_http_error(c, r, 500, "internal", "out of memory", NULL);
    }

    if (strcmp(mgr, "pip") == 0) {
        json_array_append_new(argv, json_string(lss_conf.python_bin));
        json_array_append_new(argv, json_string("-m"));
        json_array_append_new(argv, json_string("pip"));
        json_array_append_new(argv, json_string("install"));
        json_array_append_new(argv, json_string("--no-input"));
        json_array_append_new(argv,
                              json_string("--disable-pip-version-check"));
        json_array_append_new(argv, json_string("--no-cache-dir"));
        json_array_append_new(argv, json_string("--upgrade"));
        json_array_append_new(argv, json_string("--target"));
        if (asprintf(&s, "%s/.packages/python", lss_conf.workspace) > 0) {
            json_array_append_new(argv, json_string(s));
            free(s);
        }
        if (lss_conf.pip_find_links != NULL) {
            json_array_append_new(argv, json_string("--no-index"));
            json_array_append_new(argv, json_string("--find-links"));
            json_array_append_new(argv, json_string(lss_conf.pip_find_links));
        } else if (lss_conf.pip_index_url != NULL) {
            json_array_append_new(argv, json_string("--index-url"));
            json_array_append_new(argv, json_string(lss_conf.pip_index_url));
        }

    } else if (strcmp(mgr, "npm") == 0) {
        json_array_append_new(argv, json_string("npm"));
        json_array_append_new(argv, json_string("install"));
        json_array_append_new(argv, json_string("--no-audit"));
        json_array_append_new(argv, json_string("--no-fund"));
        json_array_append_new(argv, json_string("--no-update-notifier"));
        json_array_append_new(argv, json_string("--prefix"));
        if (asprintf(&s, "%s/.packages/node", lss_conf.workspace) > 0) {
            json_array_append_new(argv, json_string(s));
            free(s);
        }
        if (lss_conf.npm_registry != NULL) {
            json_array_append_new(argv, json_string("--registry"));
            json_array_append_new(argv, json_string(lss_conf.npm_registry));
        }
        if (asprintf(&s, "%s/.npm-cache", lss_conf.tmp) > 0) {
            json_object_set_new(env, "npm_config_cache", json_string(s));
            free(s);
        }

    } else {
        json_decref(argv);
        json_decref(env);
        json_decref(body);
        lss_exec_free(ex);
        return lss_http_error(c, r, 422, "validation_error",
                              "manager must be pip or npm", "manager");
    }

    json_array_append_new(argv, json_string("--"));
    json_array_extend(argv, pkgs);
    json_decref(body);

    ex->kind = LSS_EXEC_ARGV;
    ex->argv = argv;
    ex->env = env;
    ex->timeout = lss_conf.max_timeout;

    return lss_run_and_answer(c, r, ex);
}
