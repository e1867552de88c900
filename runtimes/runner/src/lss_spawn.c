/*
 * Starting the process of an execution through a zygote, and the spare
 * node kept started and confined for the next javascript execution.
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


int
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


static pthread_mutex_t  lss_spare_lock = PTHREAD_MUTEX_INITIALIZER;
static lss_proc_t       lss_spare;
static int              lss_spare_ok;


void
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
int
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


int
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
int
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
