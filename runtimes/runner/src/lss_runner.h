/*
 * llmsafespace-runner: the daemon inside every sandbox.
 * Shared types and declarations of the runner process (not the zygote).
 */

#ifndef LSS_RUNNER_H
#define LSS_RUNNER_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <pthread.h>
#include <jansson.h>

#define LSS_MAX_PRELOAD_SCRIPTS  16
#define LSS_TOKEN_HEADER         "X-LLMSafeSpace-Runner-Token"


typedef struct {
    char        *listen;
    char        *token_file;
    char        *workspace;
    char        *tmp;
    char        *zygote_path;
    char        *preload_packages;
    char        *preload_scripts[LSS_MAX_PRELOAD_SCRIPTS];
    int          npreload_scripts;
    char        *exec_env[LSS_MAX_PRELOAD_SCRIPTS];
    int          nexec_env;
    char        *languages;
    char        *pip_find_links;
    char        *pip_index_url;
    char        *npm_registry;
    char        *python_bin;
    char        *node_bin;
    uid_t        exec_uid;
    gid_t        exec_gid;
    mode_t       socket_mode;
    size_t       output_cap;
    int          default_timeout;
    int          max_timeout;
    uint64_t     max_upload;
    size_t       max_request;
    int          max_contexts;
    int          max_concurrent;
    uint64_t     mem_limit;
    uint64_t     mem_guard;    /* the sandbox's budget, 0: none */
    uint64_t     fsize_limit;
    int          nproc_limit;
    int          nofile_limit;
    int          node_spare;
    int          fs_helper;    /* file operations through the helper */
    int          data_ignored; /* RLIMIT_DATA not enforced: add AS */

    /* runtime state */
    char        *token;
    size_t       token_len;
    int          workspace_fd;
    int          tmp_fd;
    int          lang_python;
    int          lang_javascript;
    int          lang_bash;
} lss_conf_t;

extern lss_conf_t  lss_conf;


/* lss_log.c */
void lss_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int64_t lss_now_ms(void);
void lss_iso_time(int64_t ms, char *buf, size_t len);


/* lss_utf8.c: make arbitrary bytes safe for a JSON string */
size_t lss_utf8_complete(const u_char *p, size_t len);
json_t *lss_utf8_json(const u_char *p, size_t len);


/* lss_zygote_client.c: the runner's side of the zygotes */
typedef enum {
    LSS_ZYGOTE_PYTHON = 0,
    LSS_ZYGOTE_EXEC,
    LSS_ZYGOTE_N
} lss_zygote_kind_t;

int lss_zygotes_start(void);
int lss_zygotes_ready(void);
int lss_zygote_send(lss_zygote_kind_t kind, int *fds, int nfds);
void lss_zygotes_refill(void);
void lss_reap_children(void);


/* lss_exec.c: one execution seen from the runner */
typedef enum {
    LSS_EXEC_CODE_PYTHON = 0,
    LSS_EXEC_CODE_JAVASCRIPT,
    LSS_EXEC_CODE_BASH,
    LSS_EXEC_SHELL,
    LSS_EXEC_ARGV
} lss_exec_kind_t;

typedef enum {
    LSS_END_NONE = 0,
    LSS_END_EXITED,
    LSS_END_TIMEOUT,
    LSS_END_CANCELLED,
    LSS_END_OUTPUT_CAP,
    LSS_END_MEMORY,
    LSS_END_INTERNAL
} lss_end_t;

typedef struct lss_exec_s  lss_exec_t;
typedef struct lss_context_s  lss_context_t;

typedef void (*lss_output_pt)(lss_exec_t *ex, int stream, const u_char *p,
    size_t len);

struct lss_exec_s {
    char              id[64];
    lss_exec_kind_t   kind;
    char             *code;
    json_t           *argv;        /* array of strings, LSS_EXEC_ARGV */
    json_t           *env;         /* object of strings */
    char             *cwd;
    char             *stdin_data;  /* pending bytes, written by the loop */
    size_t            stdin_len;
    size_t            stdin_off;
    int               stdin_open;  /* keep stdin open for the stream */
    int               stdin_eof;   /* close once the pending bytes went */
    int               stdin_closed;
    int               timeout;     /* seconds */
    char             *context;     /* name or NULL */

    /* set while running */
    pthread_mutex_t   lock;
    int               stdin_fd;
    int               cancel_fd;   /* eventfd: cancel request */
    int               ctl_fd;      /* to the shepherd, until freed */
    lss_end_t         end;
    int               exit_code;
    int64_t           started_ms;
    int64_t           completed_ms;
    int64_t           cpu_ms;
    int64_t           maxrss_kb;
    size_t            out_bytes[2];
    int               truncated;
    int               running;
    char             *error;       /* internal reason */
    int               refused;     /* HTTP status when refused early */
    lss_context_t    *ctx;

    lss_output_pt     on_output;
    void             *data;
    lss_exec_t       *next;        /* registry link */
};

#define LSS_STDIN_MAX  (8 * 1024 * 1024)

lss_exec_t *lss_exec_new(void);
void lss_exec_free(lss_exec_t *ex);
int lss_exec_run(lss_exec_t *ex);
int lss_exec_cancel(lss_exec_t *ex, lss_end_t why);
int lss_exec_stdin(lss_exec_t *ex, const char *p, size_t len, int eof);
void lss_exec_cancel_all(void);
int lss_exec_end_all(lss_end_t why);
void lss_exec_wait_idle(int ms);
void lss_spare_fill(void);
const char *lss_exec_status(lss_exec_t *ex);
json_t *lss_exec_usage(lss_exec_t *ex);
int lss_exec_slot_get(void);
void lss_exec_slot_put(void);
json_t *lss_exec_zygote_request(lss_exec_t *ex, int context);
int lss_exec_parse(lss_exec_t *ex, json_t *req, int ws, char *err,
    size_t errlen, const char **field);


/* lss_memguard.c: the sandbox's memory budget (gVisor) */
/* end_all: how executions are ended (lss_exec_end_all), given by the
 * caller so that the guard and the executions do not call each other */
int lss_memguard_start(int (*end_all)(lss_end_t why));
void lss_memguard_running(int n);
void lss_memguard_admit(void);


/* lss_spawn.c: a process through a zygote; the spare node */
typedef struct {
    int      in;
    int      out;
    int      err;
    int      ctl;
    int      code;     /* javascript: where the code goes (fd 3's pipe) */
    int64_t  born_ms;
} lss_proc_t;

int lss_memfd(const char *name, const char *data, size_t len);
void lss_proc_close(lss_proc_t *pr);
int lss_exec_spawn(lss_exec_t *ex, lss_proc_t *pr);
int lss_spare_take(lss_proc_t *pr);
int lss_node_send(lss_exec_t *ex, int fd);


/* lss_context.c: named, long-lived Python interpreters */
int lss_context_run(lss_exec_t *ex, int *fds);
void lss_context_done(lss_exec_t *ex, int killed);
int lss_context_delete(const char *name);
void lss_context_delete_all(void);


/* lss_path.c: fd-relative file access inside the workspace */
int lss_path_clean(const char *raw, int decode, char *out, size_t outlen);
int lss_path_open(const char *rel, int flags, mode_t mode);
int lss_path_parent(const char *rel, const char **name);
void lss_fs_enter(void);
void lss_fs_leave(void);
void lss_fs_own(int fd);
int lss_remove_tree(int dirfd, const char *name, int depth);


/* lss_fsops.c: file operations with the exec uid's identity */
int lss_fsh_wanted(void);
int lss_fsh_main(void);
int lss_fsop_open(const char *rel, int flags, mode_t mode);
int lss_fsop_mkdir(const char *rel);
int lss_fsop_delete(const char *rel, int recursive);
int lss_fsop_create_tmp(const char *rel, char *tmp, size_t len);
int lss_fsop_commit(const char *rel, const char *tmp);
int lss_fsop_unlink_tmp(const char *rel, const char *tmp);
void lss_fsop_reset(int *removed, int *failed);


/* lss_http.c */
int lss_http_start(void);
void lss_http_stop(void);

#endif /* LSS_RUNNER_H */
