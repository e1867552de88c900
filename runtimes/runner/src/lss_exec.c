/*
 * One execution seen from the runner: the request handed to a zygote (or
 * a context), the pipes read with poll(2) in the calling thread, the
 * output cap, the deadline, cancellation and the final result.
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

#define LSS_READ_CHUNK  65536
#define LSS_DRAIN_MS    2000
#define LSS_STDIN_MAX   (8 * 1024 * 1024)

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

static pthread_mutex_t  lss_exec_lock = PTHREAD_MUTEX_INITIALIZER;
static lss_exec_t      *lss_execs;
static int              lss_exec_running;


lss_exec_t *
lss_exec_new(void)
{
    lss_exec_t  *ex;

    ex = calloc(1, sizeof(lss_exec_t));
    if (ex == NULL) {
        return NULL;
    }

    pthread_mutex_init(&ex->lock, NULL);
    ex->stdin_fd = -1;
    ex->cancel_fd = -1;
    ex->timeout = lss_conf.default_timeout;

    return ex;
}


void
lss_exec_free(lss_exec_t *ex)
{
    if (ex == NULL) {
        return;
    }

    free(ex->code);
    free(ex->cwd);
    free(ex->stdin_data);
    free(ex->context);
    free(ex->error);
    json_decref(ex->argv);
    json_decref(ex->env);
    if (ex->cancel_fd >= 0) {
        close(ex->cancel_fd);
    }
    pthread_mutex_destroy(&ex->lock);
    free(ex);
}


int
lss_exec_slot_get(void)
{
    int  ok;

    pthread_mutex_lock(&lss_exec_lock);
    ok = lss_exec_running < lss_conf.max_concurrent;
    if (ok) {
        lss_exec_running++;
    }
    pthread_mutex_unlock(&lss_exec_lock);

    return ok ? 0 : -1;
}


void
lss_exec_slot_put(void)
{
    pthread_mutex_lock(&lss_exec_lock);
    lss_exec_running--;
    pthread_mutex_unlock(&lss_exec_lock);
}


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


static int
lss_memfd(const char *name, const char *data, size_t len)
{
    int      fd;
    ssize_t  n;
    size_t   off;

    fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }

    for (off = 0; off < len; off += (size_t) n) {
        n = write(fd, data + off, len - off);
        if (n <= 0) {
            close(fd);
            return -1;
        }
    }
    lseek(fd, 0, SEEK_SET);

    return fd;
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


static int
lss_send_kill(int fd)
{
    return send(fd, "k", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -1;
}


static void
lss_registry_add(lss_exec_t *ex)
{
    pthread_mutex_lock(&lss_exec_lock);
    ex->next = lss_execs;
    lss_execs = ex;
    pthread_mutex_unlock(&lss_exec_lock);
}


static void
lss_registry_del(lss_exec_t *ex)
{
    lss_exec_t  **pp;

    pthread_mutex_lock(&lss_exec_lock);
    for (pp = &lss_execs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ex) {
            *pp = ex->next;
            break;
        }
    }
    pthread_mutex_unlock(&lss_exec_lock);
}


void
lss_exec_cancel(lss_exec_t *ex, lss_end_t why)
{
    uint64_t  one;

    one = 1;
    pthread_mutex_lock(&ex->lock);
    if (ex->end == LSS_END_NONE) {
        ex->end = why;
    }
    if (ex->cancel_fd >= 0) {
        (void) !write(ex->cancel_fd, &one, sizeof(one));
    }
    pthread_mutex_unlock(&ex->lock);
}


/* after a cancel: wait (bounded) until no execution runs */
void
lss_exec_wait_idle(int ms)
{
    int  busy, i;

    for (i = 0; i < ms / 5; i++) {
        pthread_mutex_lock(&lss_exec_lock);
        busy = lss_execs != NULL;
        pthread_mutex_unlock(&lss_exec_lock);
        if (!busy) {
            return;
        }
        usleep(5000);
    }
}


void
lss_exec_cancel_all(void)
{
    lss_exec_t  *ex;

    pthread_mutex_lock(&lss_exec_lock);
    for (ex = lss_execs; ex != NULL; ex = ex->next) {
        lss_exec_cancel(ex, LSS_END_CANCELLED);
    }
    pthread_mutex_unlock(&lss_exec_lock);
}


/*
 * Stdin from a client is queued (bounded) and written by the execution's
 * own loop when the pipe has room: a slow reader never blocks the
 * WebSocket, and bytes sent before the process started are kept.
 */
int
lss_exec_stdin(lss_exec_t *ex, const char *p, size_t len, int eof)
{
    char      *nb;
    uint64_t   one;

    one = 1;
    pthread_mutex_lock(&ex->lock);

    if (ex->stdin_closed || ex->stdin_eof
        || ex->stdin_len - ex->stdin_off + len > LSS_STDIN_MAX)
    {
        pthread_mutex_unlock(&ex->lock);
        return -1;
    }

    if (len > 0) {
        if (ex->stdin_off > 0) {
            memmove(ex->stdin_data, ex->stdin_data + ex->stdin_off,
                    ex->stdin_len - ex->stdin_off);
            ex->stdin_len -= ex->stdin_off;
            ex->stdin_off = 0;
        }
        nb = realloc(ex->stdin_data, ex->stdin_len + len);
        if (nb == NULL) {
            pthread_mutex_unlock(&ex->lock);
            return -1;
        }
        memcpy(nb + ex->stdin_len, p, len);
        ex->stdin_data = nb;
        ex->stdin_len += len;
    }

    if (eof) {
        ex->stdin_eof = 1;
    }

    if (ex->cancel_fd >= 0) {
        (void) !write(ex->cancel_fd, &one, sizeof(one));
    }

    pthread_mutex_unlock(&ex->lock);
    return 0;
}


/* with ex->lock held: move queued stdin into the pipe, close at EOF */
static void
lss_exec_stdin_flush(lss_exec_t *ex)
{
    ssize_t  n;

    while (ex->stdin_fd >= 0 && ex->stdin_off < ex->stdin_len) {
        n = write(ex->stdin_fd, ex->stdin_data + ex->stdin_off,
                  ex->stdin_len - ex->stdin_off);
        if (n < 0) {
            if (errno == EAGAIN) {
                return;
            }
            /* the reader is gone: drop what is queued */
            ex->stdin_off = ex->stdin_len;
            break;
        }
        ex->stdin_off += (size_t) n;
    }

    if (ex->stdin_fd >= 0 && ex->stdin_eof
        && ex->stdin_off >= ex->stdin_len)
    {
        close(ex->stdin_fd);
        ex->stdin_fd = -1;
        ex->stdin_closed = 1;
    }
}


static void
lss_exec_deliver(lss_exec_t *ex, int s, const u_char *p, size_t n, int *kill)
{
    size_t  room;

    room = lss_conf.output_cap - ex->out_bytes[s];
    if (n > room) {
        n = room;
        ex->truncated = 1;
        *kill = 1;
        pthread_mutex_lock(&ex->lock);
        if (ex->end == LSS_END_NONE) {
            ex->end = LSS_END_OUTPUT_CAP;
        }
        pthread_mutex_unlock(&ex->lock);
    }

    ex->out_bytes[s] += n;
    if (n > 0 && ex->on_output != NULL) {
        ex->on_output(ex, s, p, n);
    }
}


typedef struct {
    int      in;
    int      out;
    int      err;
    int      ctl;
    int      code;     /* javascript: where the code goes (fd 3's pipe) */
    int64_t  born_ms;
} lss_proc_t;

static pthread_mutex_t  lss_spare_lock = PTHREAD_MUTEX_INITIALIZER;
static lss_proc_t       lss_spare;
static int              lss_spare_ok;


static void
lss_proc_close(lss_proc_t *pr)
{
    if (pr->in >= 0) close(pr->in);
    if (pr->out >= 0) close(pr->out);
    if (pr->err >= 0) close(pr->err);
    if (pr->ctl >= 0) close(pr->ctl);
    if (pr->code >= 0) close(pr->code);
    pr->in = pr->out = pr->err = pr->ctl = pr->code = -1;
}


/*
 * Start the process of a non-context execution through a zygote and
 * keep the runner's ends of its pipes.
 */
static int
lss_exec_spawn(lss_exec_t *ex, lss_proc_t *pr)
{
    int      in[2], out[2], err[2], ctl[2], code[2], fds[LSS_FD_MAX];
    int      i, nfds, rc;
    char    *req_s, *script;
    size_t   clen;
    json_t  *req;

    in[0] = in[1] = out[0] = out[1] = err[0] = err[1] = -1;
    ctl[0] = ctl[1] = code[0] = code[1] = -1;
    for (i = 0; i < LSS_FD_MAX; i++) {
        fds[i] = -1;
    }
    rc = -1;

    req = lss_exec_zygote_request(ex, 0);
    req_s = req ? json_dumps(req, JSON_COMPACT) : NULL;

    if (req_s == NULL
        || pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0
        || pipe2(err, O_CLOEXEC) != 0
        || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0)
    {
        goto done;
    }

    fcntl(in[1], F_SETFL, O_NONBLOCK);

    fds[LSS_FD_REQ] = lss_memfd("lss-req", req_s, strlen(req_s));
    fds[LSS_FD_STDIN] = in[0];
    fds[LSS_FD_STDOUT] = out[1];
    fds[LSS_FD_STDERR] = err[1];
    fds[LSS_FD_CTL] = ctl[1];
    in[0] = out[1] = err[1] = ctl[1] = -1;
    nfds = LSS_FD_CTL + 1;

    /*
     * The script reaches the interpreter on fd 3: no argv size limit,
     * nothing on disk.  Bash gets a memfd and closes it first thing;
     * node gets a pipe (so that a spare can wait on it) and its
     * bootstrap closes it right after reading.
     */
    if (ex->kind == LSS_EXEC_CODE_BASH) {
        clen = strlen(ex->code);
        script = malloc(clen + 16);
        if (script == NULL) {
            goto done;
        }
        memcpy(script, "exec 3<&-; ", 11);
        memcpy(script + 11, ex->code, clen + 1);
        fds[LSS_FD_EXTRA] = lss_memfd("lss-code", script, clen + 11);
        free(script);
        nfds = LSS_FD_EXTRA + 1;

    } else if (ex->kind == LSS_EXEC_CODE_JAVASCRIPT) {
        if (pipe2(code, O_CLOEXEC) != 0) {
            goto done;
        }
        fds[LSS_FD_EXTRA] = code[0];
        code[0] = -1;
        nfds = LSS_FD_EXTRA + 1;
    }

    for (i = 0; i < nfds; i++) {
        if (fds[i] < 0) {
            goto done;
        }
    }

    if (lss_zygote_send(ex->kind == LSS_EXEC_CODE_PYTHON
                        ? LSS_ZYGOTE_PYTHON : LSS_ZYGOTE_EXEC,
                        fds, nfds) != 0)
    {
        ex->error = strdup("no zygote available");
        goto done;
    }

    pr->in = in[1];
    pr->out = out[0];
    pr->err = err[0];
    pr->ctl = ctl[0];
    pr->code = code[1];
    pr->born_ms = lss_now_ms();
    in[1] = out[0] = err[0] = ctl[0] = code[1] = -1;
    rc = 0;

done:

    for (i = 0; i < LSS_FD_MAX; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    for (i = 0; i < 2; i++) {
        if (in[i] >= 0) close(in[i]);
        if (out[i] >= 0) close(out[i]);
        if (err[i] >= 0) close(err[i]);
        if (ctl[i] >= 0) close(ctl[i]);
        if (code[i] >= 0) close(code[i]);
    }
    free(req_s);
    json_decref(req);

    return rc;
}


/*
 * Node cannot fork safely once started (V8 threads), so instead of a
 * zygote a spare node, already started and confined, waits on fd 3 for
 * its code; it is replaced as soon as it is taken.
 */
void
lss_spare_fill(void)
{
    lss_exec_t  *ex;

    if (!lss_conf.lang_javascript || !lss_conf.node_spare) {
        return;
    }

    pthread_mutex_lock(&lss_spare_lock);

    if (!lss_spare_ok) {
        ex = lss_exec_new();
        if (ex != NULL) {
            ex->kind = LSS_EXEC_CODE_JAVASCRIPT;
            ex->timeout = lss_conf.max_timeout;
            if (lss_exec_spawn(ex, &lss_spare) == 0) {
                lss_spare_ok = 1;
            }
            lss_exec_free(ex);
        }
    }

    pthread_mutex_unlock(&lss_spare_lock);
}


static int
lss_spare_take(lss_proc_t *pr)
{
    int            ok;
    struct pollfd  pfd;

    pthread_mutex_lock(&lss_spare_lock);

    ok = lss_spare_ok;
    if (ok) {
        /* a spare that died or wrote anything is not used */
        pfd.fd = lss_spare.ctl;
        pfd.events = POLLIN;
        if (poll(&pfd, 1, 0) != 0) {
            ok = 0;
        }
        pfd.fd = lss_spare.out;
        if (ok && poll(&pfd, 1, 0) != 0) {
            ok = 0;
        }
        pfd.fd = lss_spare.err;
        if (ok && poll(&pfd, 1, 0) != 0) {
            ok = 0;
        }

        if (ok) {
            *pr = lss_spare;
        } else {
            lss_proc_close(&lss_spare);
        }
        lss_spare_ok = 0;
        lss_spare.in = lss_spare.out = lss_spare.err = -1;
        lss_spare.ctl = lss_spare.code = -1;
    }

    pthread_mutex_unlock(&lss_spare_lock);

    return ok ? 0 : -1;
}


/* the request node's bootstrap reads on fd 3: code, env, cwd */
static int
lss_node_send(lss_exec_t *ex, int fd)
{
    int      rc;
    char    *s;
    size_t   off, len;
    ssize_t  n;
    json_t  *j;

    j = json_pack("{ssso*ss}", "code", ex->code,
                  "env", ex->env ? json_incref(ex->env) : json_object(),
                  "cwd", ex->cwd ? ex->cwd : lss_conf.workspace);
    s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s == NULL) {
        return -1;
    }

    rc = 0;
    len = strlen(s);
    for (off = 0; off < len; off += (size_t) n) {
        n = write(fd, s + off, len - off);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                n = 0;
                continue;
            }
            rc = -1;
            break;
        }
    }
    free(s);

    return rc;
}


int
lss_exec_run(lss_exec_t *ex)
{
    int             in[2], out[2], err[2], ctl[2], fds[LSS_FD_MAX];
    int             i, rc, kill_now, killed, got_result, open_out, open_err;
    int             res_fd, kill_fd, timeout, s;
    char           *req_s;
    u_char         *buf;
    ssize_t         n;
    lss_proc_t      pr;
    int64_t         deadline, now, drain_until;
    uint64_t        ev;
    json_t         *req;
    lss_result_t    res;
    lss_ctx_reply_t reply;
    struct pollfd   pfd[6];

    in[0] = in[1] = out[0] = out[1] = err[0] = err[1] = -1;
    ctl[0] = ctl[1] = -1;
    for (i = 0; i < LSS_FD_MAX; i++) {
        fds[i] = -1;
    }
    req = NULL;
    req_s = NULL;
    rc = -1;
    memset(&pr, 0, sizeof(pr));
    pr.in = pr.out = pr.err = pr.ctl = pr.code = -1;

    buf = malloc(LSS_READ_CHUNK);
    if (buf == NULL) {
        return -1;
    }

    pthread_mutex_lock(&ex->lock);
    ex->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_unlock(&ex->lock);

    if (ex->cancel_fd < 0) {
        goto failed;
    }

    ex->started_ms = lss_now_ms();
    ex->running = 1;
    lss_registry_add(ex);

    res_fd = -1;
    kill_fd = -1;

    if (ex->context != NULL) {
        if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0
            || pipe2(err, O_CLOEXEC) != 0)
        {
            goto failed;
        }
        fcntl(in[1], F_SETFL, O_NONBLOCK);

        /* the context runs it: code goes in the per-execution request */
        req = json_pack("{ss}", "code", ex->code);
        req_s = req ? json_dumps(req, JSON_COMPACT) : NULL;
        fds[0] = req_s ? lss_memfd("lss-req", req_s, strlen(req_s)) : -1;
        fds[1] = in[0];
        fds[2] = out[1];
        fds[3] = err[1];
        in[0] = out[1] = err[1] = -1;
        if (fds[0] < 0) {
            goto failed;
        }
        if (lss_context_run(ex, fds) != 0) {
            goto failed;
        }
        res_fd = fds[4];
        kill_fd = fds[5];
        fds[4] = fds[5] = -1;

    } else {
        if (ex->kind != LSS_EXEC_CODE_JAVASCRIPT || lss_spare_take(&pr) != 0)
        {
            if (lss_exec_spawn(ex, &pr) != 0) {
                goto failed;
            }
        }

        if (ex->kind == LSS_EXEC_CODE_JAVASCRIPT) {
            lss_spare_fill();
            if (lss_node_send(ex, pr.code) != 0) {
                ex->error = strdup("node did not take the code");
                goto failed;
            }
            close(pr.code);
            pr.code = -1;
        }

        in[1] = pr.in;
        out[0] = pr.out;
        err[0] = pr.err;
        ctl[0] = pr.ctl;
        pr.in = pr.out = pr.err = pr.ctl = -1;
        res_fd = ctl[0];
        kill_fd = ctl[0];
    }

    /* only the zygote's copies remain: EOF comes when the tree is gone */
    for (i = 0; i < LSS_FD_MAX; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }

    pthread_mutex_lock(&ex->lock);
    ex->stdin_fd = in[1];
    in[1] = -1;
    if (!ex->stdin_open) {
        ex->stdin_eof = 1;
    }
    lss_exec_stdin_flush(ex);
    pthread_mutex_unlock(&ex->lock);

    deadline = lss_now_ms() + (int64_t) ex->timeout * 1000;
    drain_until = 0;
    open_out = 1;
    open_err = 1;
    got_result = 0;
    killed = 0;
    kill_now = 0;

    while (open_out || open_err || !got_result) {
        now = lss_now_ms();

        if (!killed && ex->end == LSS_END_NONE && now >= deadline) {
            pthread_mutex_lock(&ex->lock);
            if (ex->end == LSS_END_NONE) {
                ex->end = LSS_END_TIMEOUT;
            }
            pthread_mutex_unlock(&ex->lock);
            kill_now = 1;
        }

        /* cancelled (maybe before it started), capped or timed out */
        if (!killed && !got_result && ex->end != LSS_END_NONE) {
            kill_now = 1;
        }

        if (kill_now && !killed) {
            lss_send_kill(kill_fd);
            killed = 1;
            drain_until = now + LSS_DRAIN_MS;
        }

        if (got_result && drain_until == 0) {
            /* a context may leave a background process holding a pipe */
            drain_until = now + (ex->context ? 200 : LSS_DRAIN_MS);
        }
        if (drain_until && now >= drain_until && got_result) {
            break;
        }

        timeout = killed || got_result ? 50 : (int) (deadline - now);
        if (timeout < 0) {
            timeout = 0;
        }

        pfd[0].fd = open_out ? out[0] : -1;
        pfd[0].events = POLLIN;
        pfd[1].fd = open_err ? err[0] : -1;
        pfd[1].events = POLLIN;
        pfd[2].fd = got_result ? -1 : res_fd;
        pfd[2].events = POLLIN;
        pfd[3].fd = ex->cancel_fd;
        pfd[3].events = POLLIN;
        pfd[4].fd = -1;
        pfd[4].events = POLLOUT;
        pthread_mutex_lock(&ex->lock);
        if (ex->stdin_off < ex->stdin_len) {
            pfd[4].fd = ex->stdin_fd;
        }
        pthread_mutex_unlock(&ex->lock);

        if (poll(pfd, 5, timeout) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }

        if (pfd[3].revents & POLLIN) {
            /* woken: a cancel, or stdin to write */
            (void) !read(ex->cancel_fd, &ev, sizeof(ev));
            pthread_mutex_lock(&ex->lock);
            if (ex->end != LSS_END_NONE) {
                kill_now = 1;
            }
            lss_exec_stdin_flush(ex);
            pthread_mutex_unlock(&ex->lock);
        }

        if (pfd[4].revents & (POLLOUT | POLLERR | POLLHUP)) {
            pthread_mutex_lock(&ex->lock);
            lss_exec_stdin_flush(ex);
            pthread_mutex_unlock(&ex->lock);
        }

        for (s = 0; s < 2; s++) {
            if (!(pfd[s].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            n = read(s == 0 ? out[0] : err[0], buf, LSS_READ_CHUNK);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            if (n <= 0) {
                if (s == 0) {
                    open_out = 0;
                } else {
                    open_err = 0;
                }
                continue;
            }
            lss_exec_deliver(ex, s, buf, (size_t) n, &kill_now);
        }

        if (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            got_result = 1;

            if (ex->context != NULL) {
                /* from inside the sandbox: only a bare int is accepted */
                n = recv(res_fd, &reply, sizeof(reply), MSG_DONTWAIT);
                if (n == sizeof(reply)) {
                    ex->exit_code = reply.code & 0xff;
                } else {
                    ex->exit_code = 137;
                    if (ex->end == LSS_END_NONE) {
                        ex->end = LSS_END_INTERNAL;
                        ex->error = strdup("the context died");
                    }
                }
                ex->end = ex->end == LSS_END_NONE ? LSS_END_EXITED : ex->end;
                continue;
            }

            n = recv(res_fd, &res, sizeof(res), MSG_DONTWAIT);
            if (n != sizeof(res) || res.kind == LSS_RESULT_FAILED) {
                ex->exit_code = -1;
                if (ex->end == LSS_END_NONE) {
                    ex->end = LSS_END_INTERNAL;
                    ex->error = strdup("the execution could not start");
                }
                continue;
            }
            ex->exit_code = res.kind == LSS_RESULT_SIGNALED
                            ? 128 + res.code : res.code;
            ex->cpu_ms = res.cpu_us / 1000;
            ex->maxrss_kb = res.maxrss_kb;
            if (ex->end == LSS_END_NONE) {
                ex->end = LSS_END_EXITED;
            }
        }
    }

    rc = 0;

    if (ex->context != NULL) {
        lss_context_done(ex, killed);
    }

failed:

    ex->completed_ms = lss_now_ms();
    if (ex->started_ms == 0) {
        ex->started_ms = ex->completed_ms;
    }
    if (rc != 0 && ex->end == LSS_END_NONE) {
        ex->end = LSS_END_INTERNAL;
        if (ex->error == NULL) {
            ex->error = strdup(strerror(errno));
        }
    }

    if (ex->running) {
        lss_registry_del(ex);
        ex->running = 0;
    }

    pthread_mutex_lock(&ex->lock);
    if (ex->stdin_fd >= 0) {
        close(ex->stdin_fd);
        ex->stdin_fd = -1;
    }
    ex->stdin_closed = 1;
    pthread_mutex_unlock(&ex->lock);

    for (i = 0; i < LSS_FD_MAX; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    if (in[0] >= 0) close(in[0]);
    if (in[1] >= 0) close(in[1]);
    if (out[0] >= 0) close(out[0]);
    if (out[1] >= 0) close(out[1]);
    if (err[0] >= 0) close(err[0]);
    if (err[1] >= 0) close(err[1]);
    if (ctl[0] >= 0) close(ctl[0]);
    if (ctl[1] >= 0) close(ctl[1]);

    lss_proc_close(&pr);
    free(req_s);
    json_decref(req);
    free(buf);

    return rc;
}


const char *
lss_exec_status(lss_exec_t *ex)
{
    switch (ex->end) {
    case LSS_END_TIMEOUT:
        return "timeout";
    case LSS_END_CANCELLED:
        return "cancelled";
    case LSS_END_EXITED:
        return ex->exit_code == 0 ? "completed" : "failed";
    default:
        return "failed";
    }
}


json_t *
lss_exec_usage(lss_exec_t *ex)
{
    return json_pack("{sIsIsI}",
                     "cpuTimeMs", (json_int_t) ex->cpu_ms,
                     "wallTimeMs",
                     (json_int_t) (ex->completed_ms - ex->started_ms),
                     "maxRssKb", (json_int_t) ex->maxrss_kb);
}
