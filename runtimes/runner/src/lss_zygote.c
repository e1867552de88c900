/*
 * llmsafespace-zygote: started by the runner (as root, empty environment,
 * the runner's socket on fd 3).  With --python it initialises an
 * interpreter once so that an execution costs a fork, not a start.
 * Without it, it only launches programs (commands, bash, node), which
 * keeps exec'd executions under the same shepherd and confinement code.
 *
 * On the runner's socket: 'R' once ready; then for every 'N' from the
 * runner, a spare shepherd (its socket) or 'E'.
 */

#include "lss_zygote.h"
#include "lss_proto.h"
#include "lss_fdpass.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define LSS_ZYGOTE_FD  3

void PyOS_BeforeFork(void);
void PyOS_AfterFork_Parent(void);


static void lss_zygote_spare(int python, int sfd);


int
main(int argc, char **argv)
{
    int             opt, python, nscripts, sfd, n, i, nfds;
    int             fds[LSS_FD_MAX];
    char            c, *packages, *scripts[16];
    sigset_t        set;
    struct pollfd   pfd[2];
    struct signalfd_siginfo  si;

    static const struct option  opts[] = {
        { "python", no_argument, NULL, 'p' },
        { "preload-packages", required_argument, NULL, 'P' },
        { "preload-script", required_argument, NULL, 'S' },
        { "no-subreaper", no_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 }
    };

    python = 0;
    packages = NULL;
    nscripts = 0;

    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            python = 1;
            break;
        case 'P':
            packages = optarg;
            break;
        case 'N':
            lss_no_subreaper = 1;
            break;
        case 'S':
            if (nscripts < 16) {
                scripts[nscripts++] = optarg;
            }
            break;
        default:
            return 2;
        }
    }

    lss_runner_pid = getppid();

    /* the zygote holds nothing secret, but nobody needs to read it */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);

    /* preloads run from a directory executed code cannot write */
    if (chdir("/") != 0) {
        return 1;
    }
    umask(022);

    /*
     * jansson draws its hash seed from /dev/urandom on first use: once
     * here rather than in every worker (requests come from the runner).
     */
    json_object_seed(0);

    if (lss_seccomp_init() != 0) {
        fprintf(stderr, "zygote: cannot build the seccomp filter\n");
        return 1;
    }

    if (python && lss_py_init(packages, scripts, nscripts) != 0) {
        fprintf(stderr, "zygote: python initialisation failed\n");
        return 1;
    }

    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        return 1;
    }

    if (send(LSS_ZYGOTE_FD, "R", 1, MSG_NOSIGNAL) != 1) {
        return 1;
    }

    pfd[0].fd = LSS_ZYGOTE_FD;
    pfd[0].events = POLLIN;
    pfd[1].fd = sfd;
    pfd[1].events = POLLIN;

    for ( ;; ) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return 1;
        }

        if (pfd[1].revents & POLLIN) {
            while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                /* drain */
            }
            while (waitpid(-1, NULL, WNOHANG) > 0) {
                /* shepherds */
            }
        }

        if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            continue;
        }

        n = lss_msg_recv(LSS_ZYGOTE_FD, &c, fds, LSS_FD_MAX, &nfds);
        if (n == 0) {
            /* the runner is gone */
            return 0;
        }
        if (n < 0) {
            continue;
        }
        for (i = 0; i < nfds; i++) {
            close(fds[i]);
        }

        if (c == 'N') {
            lss_zygote_spare(python, sfd);
        }
    }
}


/*
 * Fork a shepherd with its idle worker and give the runner the sockets
 * they wait on: the runner hands an execution to them directly, so that
 * this (single-threaded) process forking the next one never delays an
 * execution.  'E' says the fork failed.
 */
static void
lss_zygote_spare(int python, int sfd)
{
    int  socks[2];

    if (python) {
        PyOS_BeforeFork();
    }

    if (lss_shepherd_spawn(socks, python, LSS_ZYGOTE_FD, sfd) < 0) {
        socks[0] = -1;
    }

    if (python) {
        PyOS_AfterFork_Parent();
    }

    if (socks[0] < 0) {
        (void) !send(LSS_ZYGOTE_FD, "E", 1, MSG_NOSIGNAL);
        return;
    }

    (void) lss_fd_send(LSS_ZYGOTE_FD, socks, 2);
    close(socks[0]);
    close(socks[1]);
}


/* the whole content of a descriptor (a memfd or a regular file) */
char *
lss_read_fd(int fd)
{
    char        *buf;
    ssize_t      n;
    size_t       len;
    struct stat  st;

    if (fstat(fd, &st) != 0 || st.st_size < 0
        || st.st_size > 64 * 1024 * 1024)
    {
        return NULL;
    }

    buf = malloc((size_t) st.st_size + 1);
    if (buf == NULL) {
        return NULL;
    }

    len = 0;
    while (len < (size_t) st.st_size) {
        n = pread(fd, buf + len, (size_t) st.st_size - len, (off_t) len);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            break;
        }
        len += (size_t) n;
    }
    buf[len] = '\0';

    return buf;
}


/* the request is a memfd: no stdio, no dup */
json_t *
lss_request_read(int fd)
{
    char          *buf;
    json_t        *req;
    json_error_t   err;

    buf = lss_read_fd(fd);
    if (buf == NULL) {
        return NULL;
    }

    req = json_loads(buf, 0, &err);
    free(buf);

    if (req == NULL) {
        fprintf(stderr, "zygote: bad request: %s\n", err.text);
    }

    return req;
}
