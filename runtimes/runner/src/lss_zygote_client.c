/*
 * The runner's side of the zygotes: start them with posix_spawn (the
 * runner is multi-threaded, so no plain fork), wait for their "ready"
 * byte, restart one that dies, and keep a few spare shepherds of each:
 * an execution is handed straight to a spare (no hop through the
 * zygote), and the zygote forks its replacement while nothing else
 * needs the CPU (see lss_zygote_send).
 */

#include "lss_runner.h"
#include "lss_fdpass.h"
#include "lss_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/wait.h>

/*
 * Python keeps two spares: one for the next execution while the zygote
 * forks the replacement of the other after an answer went out.  Each
 * costs an idle shepherd and worker (about 1.5 MiB of PSS without
 * preloads).  The exec zygote is small and forks in a fraction of that
 * time: one spare, replaced at once.
 */
#define LSS_SPARES  2
#define LSS_SPARE_WAIT  10

typedef struct {
    lss_zygote_kind_t  kind;
    pthread_mutex_t    lock;
    pthread_cond_t     cond;
    int                fd;
    int                ready;
    int                wanted;
    pid_t              pid;
    int                spares[LSS_SPARES][2];  /* shepherd, worker */
    int                nspares;
    int                target;     /* spares to keep */
    int                asked;      /* 'N' sent, no answer yet */
    unsigned           failures;   /* 'E' answers */
} lss_zygote_t;

static lss_zygote_t  lss_zygotes[LSS_ZYGOTE_N];


static pid_t
lss_zygote_spawn(lss_zygote_t *z, int *fd)
{
    int                         sv[2], argc, i, rc, devnull;
    char                       *argv[64];
    pid_t                       pid;
    posix_spawn_file_actions_t  fa;
    static char                *envp[] = { NULL };

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        return -1;
    }

    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }

    argc = 0;
    argv[argc++] = "llmsafespace-zygote";
    if (z->kind == LSS_ZYGOTE_PYTHON) {
        argv[argc++] = "--python";
        if (lss_conf.preload_packages != NULL) {
            argv[argc++] = "--preload-packages";
            argv[argc++] = lss_conf.preload_packages;
        }
        for (i = 0; i < lss_conf.npreload_scripts && argc < 60; i++) {
            argv[argc++] = "--preload-script";
            argv[argc++] = lss_conf.preload_scripts[i];
        }
    }
    if (getenv("LLMSAFESPACE_RUNNER_NO_SUBREAPER") != NULL) {
        /* tests the fallback used where subreapers are missing (gVisor) */
        argv[argc++] = "--no-subreaper";
    }
    argv[argc] = NULL;

    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, devnull, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);

    /* the zygote gets an empty environment: the token never reaches it */
    rc = posix_spawn(&pid, lss_conf.zygote_path, &fa, NULL, argv, envp);

    posix_spawn_file_actions_destroy(&fa);
    close(devnull);
    close(sv[1]);

    if (rc != 0) {
        errno = rc;
        close(sv[0]);
        return -1;
    }

    *fd = sv[0];
    return pid;
}


/* with z->lock held: ask for spares up to the target */
static void
lss_zygote_fill(lss_zygote_t *z)
{
    while (z->ready && z->nspares + z->asked < z->target) {
        if (send(z->fd, "N", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1) {
            return;
        }
        z->asked++;
    }
}


static void *
lss_spare_node(void *arg)
{
    (void) arg;

    lss_spare_fill();

    return NULL;
}


static void *
lss_zygote_monitor(void *arg)
{
    int            fd, delay, spare[2], nfds;
    char           c;
    pid_t          pid;
    ssize_t        n;
    pthread_t      t;
    lss_zygote_t  *z;

    z = arg;
    delay = 0;

    for ( ;; ) {
        if (delay) {
            sleep((unsigned) delay);
        }
        delay = delay ? (delay < 8 ? delay * 2 : 8) : 1;

        pid = lss_zygote_spawn(z, &fd);
        if (pid < 0) {
            lss_log("zygote %d: spawn %s failed: %s", z->kind,
                    lss_conf.zygote_path, strerror(errno));
            continue;
        }

        n = recv(fd, &c, 1, 0);
        if (n != 1 || c != 'R') {
            lss_log("zygote %d (pid %d) failed to start", z->kind, pid);
            close(fd);
            continue;
        }

        pthread_mutex_lock(&z->lock);
        z->fd = fd;
        z->pid = pid;
        z->ready = 1;
        lss_zygote_fill(z);
        pthread_mutex_unlock(&z->lock);

        lss_log("zygote %s ready (pid %d)",
                z->kind == LSS_ZYGOTE_PYTHON ? "python" : "exec", pid);
        delay = 0;

        if (z->kind == LSS_ZYGOTE_EXEC
            && pthread_create(&t, NULL, lss_spare_node, NULL) == 0)
        {
            /* not here: this thread is the one that receives spares */
            pthread_detach(t);
        }

        /* spares and failures until EOF: the zygote died */
        for ( ;; ) {
            n = lss_msg_recv(fd, &c, spare, 2, &nfds);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                break;
            }

            pthread_mutex_lock(&z->lock);
            if (z->asked > 0) {
                z->asked--;
            }
            if (nfds == 2 && z->nspares < z->target) {
                z->spares[z->nspares][0] = spare[0];
                z->spares[z->nspares][1] = spare[1];
                z->nspares++;
                nfds = 0;
            } else if (nfds == 0 && c == 'E') {
                z->failures++;
            }
            pthread_cond_broadcast(&z->cond);
            pthread_mutex_unlock(&z->lock);

            while (nfds > 0) {
                close(spare[--nfds]);
            }
        }

        pthread_mutex_lock(&z->lock);
        z->ready = 0;
        z->fd = -1;
        z->asked = 0;
        close(fd);
        /* their shepherds die with the zygote (parent-death signal) */
        while (z->nspares > 0) {
            z->nspares--;
            close(z->spares[z->nspares][0]);
            close(z->spares[z->nspares][1]);
        }
        pthread_cond_broadcast(&z->cond);
        pthread_mutex_unlock(&z->lock);

        lss_log("zygote %d (pid %d) exited, restarting", z->kind, pid);
        delay = 1;
    }

    return NULL;
}


int
lss_zygotes_start(void)
{
    int                 i;
    pthread_t           t;
    pthread_condattr_t  ca;

    for (i = 0; i < LSS_ZYGOTE_N; i++) {
        lss_zygotes[i].kind = (lss_zygote_kind_t) i;
        lss_zygotes[i].fd = -1;
        pthread_mutex_init(&lss_zygotes[i].lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&lss_zygotes[i].cond, &ca);
        pthread_condattr_destroy(&ca);
    }

    lss_zygotes[LSS_ZYGOTE_PYTHON].wanted = lss_conf.lang_python;
    lss_zygotes[LSS_ZYGOTE_PYTHON].target = LSS_SPARES;
    lss_zygotes[LSS_ZYGOTE_EXEC].target = 1;
    lss_zygotes[LSS_ZYGOTE_EXEC].wanted = 1;

    for (i = 0; i < LSS_ZYGOTE_N; i++) {
        if (!lss_zygotes[i].wanted) {
            continue;
        }
        if (pthread_create(&t, NULL, lss_zygote_monitor, &lss_zygotes[i])
            != 0)
        {
            return -1;
        }
        pthread_detach(t);
    }

    return 0;
}


int
lss_zygotes_ready(void)
{
    int  i, ok;

    ok = 1;
    for (i = 0; i < LSS_ZYGOTE_N; i++) {
        pthread_mutex_lock(&lss_zygotes[i].lock);
        if (lss_zygotes[i].wanted && !lss_zygotes[i].ready) {
            ok = 0;
        }
        pthread_mutex_unlock(&lss_zygotes[i].lock);
    }

    return ok;
}


/*
 * With z->lock held and a spare at least: the index of the one to use.
 * A worker shuts its socket down for writing once its after-fork work,
 * warm-up and early confinement are done (POLLRDHUP here; POLLHUP when
 * it died).  A spare is handed out as soon as it is forked, and an
 * execution given to a worker still warming up would wait for it (a
 * millisecond or more when the CPUs are busy): so the oldest ready
 * spare, else the oldest.  A dead one is taken too: its send fails and
 * the caller takes another.
 */
static int
lss_spare_pick(lss_zygote_t *z)
{
    int            i;
    struct pollfd  pfd;

    for (i = 0; i < z->nspares; i++) {
        pfd.fd = z->spares[i][1];
        pfd.events = POLLRDHUP;
        if (poll(&pfd, 1, 0) == 1) {
            return i;
        }
    }

    return 0;
}


/*
 * Hand an execution (fds indexed by LSS_FD_*: request, stdio, control
 * socket, extra) to a spare: its part to the worker first (the critical
 * path), then the shepherd's.  When that was the last spare the zygote
 * is asked for one at once; otherwise the replacement is asked for by
 * lss_zygotes_refill() once the answer is out, so that making it (two
 * forks of the interpreter and its warm-up: more than a millisecond of
 * CPU) does not compete for the CPU with the execution or its answer.
 */
int
lss_zygote_send(lss_zygote_kind_t kind, int *fds, int nfds)
{
    int              sp[2], wfds[5], sfds[2], nw, tries, rc, k;
    unsigned         failures;
    lss_zygote_t    *z;
    struct timespec  ts;

    if (nfds < LSS_FD_CTL + 1 || nfds > LSS_FD_MAX) {
        errno = EINVAL;
        return -1;
    }

    nw = 0;
    wfds[nw++] = fds[LSS_FD_REQ];
    wfds[nw++] = fds[LSS_FD_STDIN];
    wfds[nw++] = fds[LSS_FD_STDOUT];
    wfds[nw++] = fds[LSS_FD_STDERR];
    if (nfds > LSS_FD_EXTRA) {
        wfds[nw++] = fds[LSS_FD_EXTRA];
    }
    sfds[LSS_SH_REQ] = fds[LSS_FD_REQ];
    sfds[LSS_SH_CTL] = fds[LSS_FD_CTL];

    z = &lss_zygotes[kind];
    rc = -1;

    for (tries = 0; tries < 3 && rc != 0; tries++) {
        pthread_mutex_lock(&z->lock);

        failures = z->failures;
        while (z->ready && z->nspares == 0) {
            if (z->asked == 0) {
                if (z->failures != failures) {
                    /* the zygote cannot fork (pids exhausted?) */
                    break;
                }
                lss_zygote_fill(z);
                if (z->asked == 0) {
                    break;
                }
            }
            /* bounded: a zygote that neither answers nor dies is broken */
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += LSS_SPARE_WAIT;
            if (pthread_cond_timedwait(&z->cond, &z->lock, &ts) == ETIMEDOUT
                && z->nspares == 0)
            {
                lss_log("zygote %d: no spare after %d s", z->kind,
                        LSS_SPARE_WAIT);
                break;
            }
        }

        if (!z->ready || z->nspares == 0) {
            pthread_mutex_unlock(&z->lock);
            errno = EAGAIN;
            return -1;
        }

        k = lss_spare_pick(z);
        sp[0] = z->spares[k][0];
        sp[1] = z->spares[k][1];
        z->nspares--;
        memmove(&z->spares[k], &z->spares[k + 1],
                (z->nspares - k) * sizeof(z->spares[0]));

        if (z->nspares == 0) {
            lss_zygote_fill(z);
        }

        pthread_mutex_unlock(&z->lock);

        /*
         * A worker that died (with its zygote) refuses its part: take
         * another spare; closing this one's sockets ends its shepherd.
         * A shepherd that refuses its part has died after its worker got
         * the execution: the worker dies with it (parent-death signal)
         * and the runner sees its control socket closed.
         */
        rc = lss_fd_send(sp[1], wfds, nw);
        if (rc == 0) {
            (void) lss_fd_send(sp[0], sfds, 2);
        }
        close(sp[0]);
        close(sp[1]);
    }

    return rc;
}


/* an answer is out: replace the spares taken */
void
lss_zygotes_refill(void)
{
    int  i;

    for (i = 0; i < LSS_ZYGOTE_N; i++) {
        pthread_mutex_lock(&lss_zygotes[i].lock);
        lss_zygote_fill(&lss_zygotes[i]);
        pthread_mutex_unlock(&lss_zygotes[i].lock);
    }
}


/* the runner is a subreaper: orphans of a dead zygote end up here */
void
lss_reap_children(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* nothing */
    }
}
