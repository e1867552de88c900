/*
 * The runner's side of the zygotes: start them with posix_spawn (the
 * runner is multi-threaded, so no plain fork), wait for their "ready"
 * byte, restart one that dies, and hand requests to them.
 */

#include "lss_runner.h"
#include "lss_fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

typedef struct {
    lss_zygote_kind_t  kind;
    pthread_mutex_t    lock;
    int                fd;
    int                ready;
    int                wanted;
    pid_t              pid;
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


static void *
lss_zygote_monitor(void *arg)
{
    int            fd, delay;
    char           c;
    pid_t          pid;
    ssize_t        n;
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
        pthread_mutex_unlock(&z->lock);

        lss_log("zygote %s ready (pid %d)",
                z->kind == LSS_ZYGOTE_PYTHON ? "python" : "exec", pid);
        delay = 0;

        if (z->kind == LSS_ZYGOTE_EXEC) {
            lss_spare_fill();
        }

        /* the zygote never writes again: EOF means it died */
        while ((n = recv(fd, &c, 1, 0)) > 0 || (n < 0 && errno == EINTR)) {
            /* nothing */
        }

        pthread_mutex_lock(&z->lock);
        z->ready = 0;
        z->fd = -1;
        close(fd);
        pthread_mutex_unlock(&z->lock);

        lss_log("zygote %d (pid %d) exited, restarting", z->kind, pid);
        delay = 1;
    }

    return NULL;
}


int
lss_zygotes_start(void)
{
    int        i;
    pthread_t  t;

    for (i = 0; i < LSS_ZYGOTE_N; i++) {
        lss_zygotes[i].kind = (lss_zygote_kind_t) i;
        lss_zygotes[i].fd = -1;
        pthread_mutex_init(&lss_zygotes[i].lock, NULL);
    }

    lss_zygotes[LSS_ZYGOTE_PYTHON].wanted = lss_conf.lang_python;
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


int
lss_zygote_send(lss_zygote_kind_t kind, int *fds, int nfds)
{
    int            rc;
    lss_zygote_t  *z;

    z = &lss_zygotes[kind];

    pthread_mutex_lock(&z->lock);
    if (!z->ready) {
        pthread_mutex_unlock(&z->lock);
        errno = EAGAIN;
        return -1;
    }
    rc = lss_fd_send(z->fd, fds, nfds);
    pthread_mutex_unlock(&z->lock);

    return rc;
}


/* the runner is a subreaper: orphans of a dead zygote end up here */
void
lss_reap_children(void)
{
    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* nothing */
    }
}
