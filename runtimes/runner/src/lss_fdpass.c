/*
 * Descriptor passing: one byte of payload and up to LSS_FDPASS_MAX
 * descriptors per message.  Received descriptors are close-on-exec.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "lss_fdpass.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>


int
lss_fd_send(int sock, const int *fds, int n)
{
    char            c, cbuf[CMSG_SPACE(LSS_FDPASS_MAX * sizeof(int))];
    struct iovec    iov;
    struct msghdr   msg;
    struct cmsghdr *cm;

    if (n < 1 || n > LSS_FDPASS_MAX) {
        errno = EINVAL;
        return -1;
    }

    memset(&msg, 0, sizeof(msg));
    memset(cbuf, 0, sizeof(cbuf));
    c = 'F';
    iov.iov_base = &c;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(n * sizeof(int));

    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, n * sizeof(int));

    return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}


/*
 * One message: its byte in *c and up to max descriptors in fds (extra
 * ones are closed), their number in *nfds.  Returns 1, 0 at EOF, -1 on
 * error.
 */
int
lss_msg_recv(int sock, char *c, int *fds, int max, int *nfds)
{
    int             n, nfd, i, extra[LSS_FDPASS_MAX];
    char            cbuf[CMSG_SPACE(LSS_FDPASS_MAX * sizeof(int))];
    struct iovec    iov;
    struct msghdr   msg;
    struct cmsghdr *cm;

    *nfds = 0;
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = c;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);

    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);

    if (n <= 0) {
        return n;
    }

    nfd = 0;
    cm = CMSG_FIRSTHDR(&msg);
    if (cm != NULL && cm->cmsg_level == SOL_SOCKET
        && cm->cmsg_type == SCM_RIGHTS)
    {
        nfd = (int) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        if (nfd > LSS_FDPASS_MAX) {
            nfd = LSS_FDPASS_MAX;
        }
        memcpy(extra, CMSG_DATA(cm), nfd * sizeof(int));
    }

    if (nfd > max) {
        for (i = max; i < nfd; i++) {
            close(extra[i]);
        }
        nfd = max;
    }
    if (nfd > 0) {
        memcpy(fds, extra, nfd * sizeof(int));
    }
    *nfds = nfd;

    return 1;
}


/* returns the number of descriptors, 0 at EOF, -1 on error */
int
lss_fd_recv(int sock, int *fds, int max)
{
    int   n, nfd;
    char  c;

    n = lss_msg_recv(sock, &c, fds, max, &nfd);
    if (n <= 0) {
        return n;
    }

    if (nfd == 0) {
        errno = EPROTO;
        return -1;
    }

    return nfd;
}
