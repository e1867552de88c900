/*
 * Requests: validation of an execute request (HTTP body or WebSocket
 * message) into an lss_exec_t, and the JSON request a zygote receives.
 */

#include "lss_runner.h"
#include "lss_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>


/*
 * Node cannot fork safely (V8 threads), so a javascript execution starts
 * node; this bootstrap reads the code from fd 3, closes it and runs it as
 * a CommonJS module of the working directory (require works as usual).
 */
static const char  lss_node_boot[] =
    "const fs=require('fs');const r=JSON.parse(fs.readFileSync(3,'utf8'));"
    "fs.closeSync(3);for(const k of Object.keys(r.env))"
    "process.env[k]=r.env[k];process.chdir(r.cwd);"
    "const M=require('module');"
    "const f=require('path').join(process.cwd(),'[execution].js');"
    "const m=new M(f,null);m.filename=f;"
    "m.paths=M._nodeModulePaths(process.cwd());"
    "process.argv=[process.argv[0]];m._compile(r.code,f);";


static int
lss_env_name_ok(const char *k)
{
    const char  *p;

    if (k[0] == '\0' || (k[0] >= '0' && k[0] <= '9') || strlen(k) > 256) {
        return 0;
    }
    for (p = k; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_'))
        {
            return 0;
        }
    }
    return 1;
}


/* the fields of an execute: over HTTP without executionId and mode
 * (its "type" says code or command), on the WebSocket without stdin
 * (sent as stdin messages; its "type" is "execute") */
static const char  *lss_exec_fields[] = {
    "type", "mode", "executionId", "language", "content", "args", "timeout",
    "env", "workingDir", "stdin", "context", NULL
};

static __thread char  lss_unknown_field[65];


/*
 * Validate a request (POST /execute body or a WebSocket execute message)
 * into ex.  Returns 400 or 422 with err and field set, or 0.
 */
int
lss_exec_parse(lss_exec_t *ex, json_t *req, int ws, char *err,
    size_t errlen, const char **field)
{
    size_t       i, len;
    json_t      *v, *w;
    const char  *type, *lang, *k, *s;

    if (!json_is_object(req)) {
        snprintf(err, errlen, "request body must be a JSON object");
        return 400;
    }

    /* a misspelt field must not run the code without what it meant */
    json_object_foreach(req, k, v) {
        for (i = 0; lss_exec_fields[i] != NULL; i++) {
            if (strcmp(k, lss_exec_fields[i]) == 0) {
                break;
            }
        }
        if (lss_exec_fields[i] == NULL
            || (ws && strcmp(k, "stdin") == 0)
            || (!ws && (strcmp(k, "executionId") == 0
                        || strcmp(k, "mode") == 0)))
        {
            /* the caller may free req before it answers */
            snprintf(lss_unknown_field, sizeof(lss_unknown_field), "%s", k);
            *field = lss_unknown_field;
            snprintf(err, errlen, "unknown field \"%.64s\"", k);
            return 422;
        }
    }

    *field = ws ? "mode" : "type";
    v = json_object_get(req, *field);
    type = json_string_value(v);
    if (v != NULL && type == NULL) {
        snprintf(err, errlen, "%s must be a string", *field);
        return 400;
    }
    if (type == NULL) {
        type = "code";
    }

    *field = "content";
    v = json_object_get(req, "content");
    if (v != NULL && !json_is_string(v)) {
        snprintf(err, errlen, "content must be a string");
        return 400;
    }
    if (v != NULL) {
        len = json_string_length(v);
        if (memchr(json_string_value(v), '\0', len) != NULL) {
            snprintf(err, errlen, "content must not contain NUL");
            return 422;
        }
        ex->code = strdup(json_string_value(v));
    }

    if (strcmp(type, "code") == 0) {
        *field = "language";
        lang = json_string_value(json_object_get(req, "language"));
        if (lang == NULL) {
            lang = "python";
        }
        if (strcmp(lang, "python") == 0 && lss_conf.lang_python) {
            ex->kind = LSS_EXEC_CODE_PYTHON;
        } else if ((strcmp(lang, "javascript") == 0
                    || strcmp(lang, "js") == 0 || strcmp(lang, "node") == 0)
                   && lss_conf.lang_javascript)
        {
            ex->kind = LSS_EXEC_CODE_JAVASCRIPT;
        } else if ((strcmp(lang, "bash") == 0 || strcmp(lang, "sh") == 0)
                   && lss_conf.lang_bash)
        {
            ex->kind = LSS_EXEC_CODE_BASH;
        } else {
            snprintf(err, errlen, "unsupported language");
            return 422;
        }
        if (ex->code == NULL) {
            *field = "content";
            snprintf(err, errlen, "content is required");
            return 422;
        }

    } else if (strcmp(type, "command") == 0) {
        v = json_object_get(req, "args");
        if (v != NULL) {
            *field = "args";
            if (!json_is_array(v) || json_array_size(v) == 0
                || json_array_size(v) > 4096)
            {
                snprintf(err, errlen, "args must be a non-empty array");
                return 422;
            }
            json_array_foreach(v, i, w) {
                if (!json_is_string(w)
                    || memchr(json_string_value(w), '\0',
                              json_string_length(w)) != NULL)
                {
                    snprintf(err, errlen, "args must hold strings");
                    return 422;
                }
            }
            ex->kind = LSS_EXEC_ARGV;
            ex->argv = json_incref(v);
        } else if (ex->code != NULL) {
            ex->kind = LSS_EXEC_SHELL;
        } else {
            *field = "content";
            snprintf(err, errlen, "content or args is required");
            return 422;
        }

    } else {
        snprintf(err, errlen, "%s must be code or command", *field);
        return 422;
    }

    *field = "timeout";
    v = json_object_get(req, "timeout");
    if (v != NULL) {
        if (!json_is_integer(v)) {
            snprintf(err, errlen, "timeout must be an integer (seconds)");
            return 400;
        }
        if (json_integer_value(v) < 1
            || json_integer_value(v) > lss_conf.max_timeout)
        {
            snprintf(err, errlen, "timeout must be between 1 and %d",
                     lss_conf.max_timeout);
            return 422;
        }
        ex->timeout = (int) json_integer_value(v);
    }

    *field = "env";
    v = json_object_get(req, "env");
    if (v != NULL) {
        if (!json_is_object(v) || json_object_size(v) > 256) {
            snprintf(err, errlen, "env must be an object of strings");
            return 422;
        }
        json_object_foreach(v, k, w) {
            if (!json_is_string(w) || !lss_env_name_ok(k)
                || json_string_length(w) > 32768
                || memchr(json_string_value(w), '\0',
                          json_string_length(w)) != NULL)
            {
                snprintf(err, errlen, "env: invalid variable");
                return 422;
            }
        }
        ex->env = json_incref(v);
    }

    *field = "workingDir";
    v = json_object_get(req, "workingDir");
    if (v != NULL) {
        s = json_string_value(v);
        if (s == NULL || json_string_length(v) > 4096
            || strlen(s) != json_string_length(v))
        {
            snprintf(err, errlen, "workingDir must be a path");
            return 422;
        }
        if (s[0] == '/') {
            ex->cwd = strdup(s);
        } else if (asprintf(&ex->cwd, "%s/%s", lss_conf.workspace, s) < 0) {
            ex->cwd = NULL;
        }
    }

    *field = "stdin";
    v = json_object_get(req, "stdin");
    if (v != NULL && !ws) {
        if (!json_is_string(v)) {
            snprintf(err, errlen, "stdin must be a string");
            return 400;
        }
        if (json_string_length(v) > LSS_STDIN_MAX) {
            snprintf(err, errlen, "stdin is too large");
            return 422;
        }
        ex->stdin_len = json_string_length(v);
        ex->stdin_data = malloc(ex->stdin_len + 1);
        if (ex->stdin_data != NULL) {
            memcpy(ex->stdin_data, json_string_value(v), ex->stdin_len);
        }
    }

    *field = "context";
    v = json_object_get(req, "context");
    if (v != NULL && !json_is_null(v)) {
        s = json_string_value(v);
        len = s ? strlen(s) : 0;
        if (s == NULL || len == 0 || len > 64) {
            snprintf(err, errlen, "context must be a name of 1-64 chars");
            return 422;
        }
        for (i = 0; i < len; i++) {
            if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
                  || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'
                  || s[i] == '-' || s[i] == '.'))
            {
                snprintf(err, errlen, "context: letters, digits, _-. only");
                return 422;
            }
        }
        if (ex->kind != LSS_EXEC_CODE_PYTHON) {
            snprintf(err, errlen, "contexts exist for python code only");
            return 422;
        }
        ex->context = strdup(s);
    }

    *field = NULL;
    if (ex->code == NULL && ex->kind != LSS_EXEC_ARGV) {
        snprintf(err, errlen, "out of memory");
        return 500;
    }

    return 0;
}



/* the request a zygote needs: what to run, as whom, with which limits */
json_t *
lss_exec_zygote_request(lss_exec_t *ex, int context)
{
    int          i;
    char        *s;
    json_t      *r, *env, *lim, *argv, *v;
    const char  *k;

    r = json_object();
    env = json_array();
    lim = json_object();
    if (r == NULL || env == NULL || lim == NULL) {
        json_decref(r);
        json_decref(env);
        json_decref(lim);
        return NULL;
    }

    json_object_set_new(r, "uid", json_integer(lss_conf.exec_uid));
    json_object_set_new(r, "gid", json_integer(lss_conf.exec_gid));
    json_object_set_new(r, "cwd", json_string(ex->cwd ? ex->cwd
                                                      : lss_conf.workspace));

    json_array_append_new(env,
                          json_string("PATH=/usr/local/bin:/usr/bin:/bin"));
    if (asprintf(&s, "HOME=%s", lss_conf.workspace) > 0) {
        json_array_append_new(env, json_string(s));
        free(s);
    }
    json_array_append_new(env, json_string("LANG=C.UTF-8"));
    for (i = 0; i < lss_conf.nexec_env; i++) {
        /* operator-set (CA bundle, proxy): never anything secret */
        json_array_append_new(env, json_string(lss_conf.exec_env[i]));
    }
    if (ex->kind == LSS_EXEC_CODE_JAVASCRIPT
        && asprintf(&s, "NODE_PATH=%s/.packages/node/node_modules",
                    lss_conf.workspace) > 0)
    {
        json_array_append_new(env, json_string(s));
        free(s);
    }
    json_object_foreach(ex->env, k, v) {
        if (asprintf(&s, "%s=%s", k, json_string_value(v)) > 0) {
            json_array_append_new(env, json_string(s));
            free(s);
        }
    }
    json_object_set_new(r, "env", env);

    if (!context) {
        json_object_set_new(lim, "cpu", json_integer(ex->timeout + 1));
    }
    json_object_set_new(lim, "data", json_integer(lss_conf.mem_limit));

    /* V8 reserves far more address space than it uses: not for node */
    if (lss_conf.data_ignored && ex->kind != LSS_EXEC_CODE_JAVASCRIPT) {
        json_object_set_new(lim, "as", json_integer(lss_conf.mem_limit));
    }
    json_object_set_new(lim, "nofile", json_integer(lss_conf.nofile_limit));
    json_object_set_new(lim, "nproc", json_integer(lss_conf.nproc_limit));
    json_object_set_new(lim, "fsize", json_integer(lss_conf.fsize_limit));
    json_object_set_new(r, "limits", lim);

    if (asprintf(&s, "%s/.packages/python", lss_conf.workspace) > 0) {
        json_object_set_new(r, "pypath", json_string(s));
        free(s);
    }

    argv = NULL;

    switch (ex->kind) {
    case LSS_EXEC_CODE_PYTHON:
        json_object_set_new(r, "python", json_true());
        if (context) {
            json_object_set_new(r, "context", json_true());
        } else {
            json_object_set_new(r, "code", json_string(ex->code));
        }
        break;
    case LSS_EXEC_CODE_JAVASCRIPT:
        argv = json_pack("[sss]", lss_conf.node_bin, "-e", lss_node_boot);
        break;
    case LSS_EXEC_CODE_BASH:
        argv = json_pack("[sss]", "/bin/bash", "--noprofile", "/dev/fd/3");
        break;
    case LSS_EXEC_SHELL:
        argv = json_pack("[sss]", "/bin/sh", "-c", ex->code);
        break;
    case LSS_EXEC_ARGV:
        argv = json_incref(ex->argv);
        break;
    }

    if (argv != NULL) {
        json_object_set_new(r, "argv", argv);
    }

    return r;
}
