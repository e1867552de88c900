/*
 * The private protocol between the runner and its zygotes.
 *
 * The zygote socket (SOCK_SEQPACKET) carries one-byte messages: 'R'
 * from the zygote once it is ready; 'N' from the runner asking for a
 * spare, answered with a message carrying the sockets of a new idle
 * shepherd and of its idle worker (SCM_RIGHTS), or 'E' when the fork
 * failed.
 *
 * An execution is handed over with one message to each, carrying only
 * file descriptors.  The worker's: a memfd holding the request as JSON,
 * the execution's stdin, stdout and stderr, and an optional extra
 * descriptor that becomes its fd 3.  The shepherd's: the same memfd and
 * the control socket of the execution.  Passing the request in a memfd
 * keeps the messages small whatever the size of the code.  The runner
 * builds both from one array indexed by LSS_FD_*.
 *
 * The shepherd of an execution answers on the control socket with one
 * lss_result_t once the worker and every descendant are dead.  Any byte
 * (or EOF) the runner sends on the control socket means "kill now".
 */

#ifndef LSS_PROTO_H
#define LSS_PROTO_H

#include <stdint.h>

#define LSS_FD_REQ      0
#define LSS_FD_STDIN    1
#define LSS_FD_STDOUT   2
#define LSS_FD_STDERR   3
#define LSS_FD_CTL      4
#define LSS_FD_EXTRA    5
#define LSS_FD_MAX      6

/* the shepherd's message */
#define LSS_SH_REQ      0
#define LSS_SH_CTL      1

#define LSS_RESULT_EXITED    1
#define LSS_RESULT_SIGNALED  2
#define LSS_RESULT_FAILED    3

typedef struct {
    int32_t   kind;
    int32_t   code;
    int64_t   cpu_us;
    int64_t   maxrss_kb;
} lss_result_t;

/* the reply of a context after each execution: its exit code */
typedef struct {
    int32_t   code;
} lss_ctx_reply_t;

#endif /* LSS_PROTO_H */
