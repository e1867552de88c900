/*
 * Passing descriptors over a SOCK_SEQPACKET socket (SCM_RIGHTS), shared
 * by the runner and the zygote.
 */

#ifndef LSS_FDPASS_H
#define LSS_FDPASS_H

#define LSS_FDPASS_MAX  8

int lss_fd_send(int sock, const int *fds, int n);
int lss_fd_recv(int sock, int *fds, int max);
int lss_msg_recv(int sock, char *c, int *fds, int max, int *nfds);

#endif /* LSS_FDPASS_H */
