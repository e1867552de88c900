/*
 * One execution seen from the runner: the pipes read with poll(2) in the
 * calling thread, stdin, the output cap, the deadline, cancellation and
 * the final result; the registry of running executions.
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

static pthread_mutex_t  lss_exec_lock = PTHREAD_MUTEX_INITIALIZER;
static lss_exec_t      *lss_execs;
static int              lss_execs_n;
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
    ex->ctl_fd = -1;
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
    if (ex->ctl_fd >= 0) {
        close(ex->ctl_fd);
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
    lss_memguard_running(++lss_execs_n);
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
            lss_memguard_running(--lss_execs_n);
            break;
        }
    }
    pthread_mutex_unlock(&lss_exec_lock);
}


/* 1 when this call gave the execution its end, 0 when it had one */
int
lss_exec_cancel(lss_exec_t *ex, lss_end_t why)
{
    int       set;
    uint64_t  one;

    one = 1;
    set = 0;
    pthread_mutex_lock(&ex->lock);
    if (ex->end == LSS_END_NONE) {
        ex->end = why;
        set = 1;
    }
    if (ex->cancel_fd >= 0) {
        (void) !write(ex->cancel_fd, &one, sizeof(one));
    }
    pthread_mutex_unlock(&ex->lock);

    return set;
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


/* ends every running execution not ended yet; how many it ended */
int
lss_exec_end_all(lss_end_t why)
{
    int          n;
    lss_exec_t  *ex;

    n = 0;
    pthread_mutex_lock(&lss_exec_lock);
    for (ex = lss_execs; ex != NULL; ex = ex->next) {
        n += lss_exec_cancel(ex, why);
    }
    pthread_mutex_unlock(&lss_exec_lock);

    return n;
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

    lss_memguard_admit();

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
    if (ex->end == LSS_END_MEMORY && ex->error == NULL) {
        ex->error = strdup("the sandbox reached its memory limit: "
                           "the execution was ended");
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
    if (ctl[1] >= 0) close(ctl[1]);

    /*
     * The shepherd exits when the control socket closes (its exit tears
     * a copy of the zygote's address space down, ~0.25 ms of CPU): the
     * socket is kept until lss_exec_free(), which callers reach once the
     * answer is out, so that this does not slow the answer down.
     */
    ex->ctl_fd = ctl[0];

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
