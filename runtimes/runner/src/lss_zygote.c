/*
 * llmsafespace-zygote: started by the runner (as root, empty environment,
 * the runner's socket on fd 3).  With --python it initialises an
 * interpreter once so that an execution costs a fork, not a start.
 * Without it, it only launches programs (commands, bash, node), which
 * keeps exec'd executions under the same shepherd and confinement code.
 */

#include "lss_zygote.h"
#include "lss_proto.h"

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


static json_t *lss_zygote_request(int fd);


int
main(int argc, char **argv)
{
    int             c, python, nscripts, sfd, n, i, nfd;
    int             fds[LSS_FD_MAX], rfds[LSS_FD_MAX];
    char           *packages, *scripts[16], cbuf[CMSG_SPACE(sizeof(rfds))];
    char            dummy;
    pid_t           pid;
    json_t         *req;
    sigset_t        set;
    struct iovec    iov;
    struct msghdr   msg;
    struct cmsghdr *cm;
    struct pollfd   pfd[2];
    struct signalfd_siginfo  si;

    static const struct option  opts[] = {
        { "python", no_argument, NULL, 'p' },
        { "preload-packages", required_argument, NULL, 'P' },
        { "preload-script", required_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 }
    };

    python = 0;
    packages = NULL;
    nscripts = 0;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            python = 1;
            break;
        case 'P':
            packages = optarg;
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

    /* the zygote holds nothing secret, but nobody needs to read it */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);

    /* preloads run from a directory executed code cannot write */
    if (chdir("/") != 0) {
        return 1;
    }
    umask(022);

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

        memset(&msg, 0, sizeof(msg));
        iov.iov_base = &dummy;
        iov.iov_len = 1;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof(cbuf);

        n = recvmsg(LSS_ZYGOTE_FD, &msg, MSG_CMSG_CLOEXEC);
        if (n <= 0) {
            /* the runner is gone */
            return 0;
        }

        nfd = 0;
        cm = CMSG_FIRSTHDR(&msg);
        if (cm != NULL && cm->cmsg_level == SOL_SOCKET
            && cm->cmsg_type == SCM_RIGHTS)
        {
            nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            if (nfd > LSS_FD_MAX) {
                nfd = LSS_FD_MAX;
            }
            memcpy(rfds, CMSG_DATA(cm), nfd * sizeof(int));
        }

        if (nfd < LSS_FD_CTL + 1) {
            for (i = 0; i < nfd; i++) {
                close(rfds[i]);
            }
            continue;
        }

        for (i = 0; i < LSS_FD_MAX; i++) {
            fds[i] = i < nfd ? rfds[i] : -1;
        }

        req = lss_zygote_request(fds[LSS_FD_REQ]);

        if (req != NULL) {
            if (python) {
                PyOS_BeforeFork();
            }

            pid = fork();

            if (pid == 0) {
                close(LSS_ZYGOTE_FD);
                close(sfd);
                sigprocmask(SIG_UNBLOCK, &set, NULL);
                close(fds[LSS_FD_REQ]);
                lss_shepherd(req, fds, python
                             && json_object_get(req, "python") != NULL);
            }

            if (python) {
                PyOS_AfterFork_Parent();
            }

            json_decref(req);
        }

        /* a failed fork closes the control socket: the runner sees EOF */
        for (i = 0; i < nfd; i++) {
            close(fds[i]);
        }
    }
}


static json_t *
lss_zygote_request(int fd)
{
    FILE          *f;
    json_t        *req;
    json_error_t   err;

    f = fdopen(dup(fd), "re");
    if (f == NULL) {
        return NULL;
    }
    rewind(f);
    req = json_loadf(f, 0, &err);
    fclose(f);

    if (req == NULL) {
        fprintf(stderr, "zygote: bad request: %s\n", err.text);
    }

    return req;
}
