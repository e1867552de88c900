/*
 * The zygote side: a small root process that forks one shepherd per
 * execution; the shepherd forks the worker that confines itself and runs
 * the code.
 */

#ifndef LSS_ZYGOTE_H
#define LSS_ZYGOTE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/types.h>
#include <jansson.h>

/* lss_confine.c */
void lss_confine_early(void);
int lss_confine(json_t *req, int *fds);
int lss_seccomp_init(void);
char **lss_env_build(json_t *req);

/* lss_shepherd.c */
extern int    lss_no_subreaper;
extern pid_t  lss_runner_pid;

pid_t lss_shepherd_spawn(int *socks, int python, int close1, int close2);
void lss_exec_argv(json_t *req) __attribute__((noreturn));

/* lss_zygote.c */
json_t *lss_request_read(int fd);
char *lss_read_fd(int fd);

/* lss_python.c */
int lss_py_init(const char *packages, char **scripts, int nscripts);
void lss_py_after_fork(void);
void lss_py_run(json_t *req, int *fds) __attribute__((noreturn));
void lss_py_context(json_t *req, int *fds) __attribute__((noreturn));

/* worker failure before user code ran */
void lss_die(const char *what) __attribute__((noreturn));

#endif /* LSS_ZYGOTE_H */
