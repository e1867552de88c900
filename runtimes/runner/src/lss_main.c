/*
 * llmsafespace-runner: command line, token, process posture, start-up
 * and the signal loop.
 */

#include "lss_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

lss_conf_t  lss_conf;

extern char **environ;


static void
lss_usage(void)
{
    fprintf(stderr,
        "usage: llmsafespace-runner --listen unix:PATH|tcp:HOST:PORT\n"
        "  [--token-file PATH] [--workspace DIR] [--tmp DIR]\n"
        "  [--exec-uid UID] [--exec-gid GID] [--socket-mode OCTAL]\n"
        "  [--preload-packages a,b] [--preload-script NAME=PATH]...\n"
        "  [--languages python,javascript,bash] [--output-cap BYTES]\n"
        "  [--default-timeout SEC] [--max-timeout SEC]\n"
        "  [--max-upload BYTES] [--max-request BYTES]\n"
        "  [--max-contexts N] [--max-concurrent N] [--mem-limit BYTES]\n"
        "  [--mem-guard BYTES]\n"
        "  [--fsize-limit BYTES] [--nproc-limit N] [--nofile-limit N]\n"
        "  [--pip-find-links DIR] [--pip-index-url URL]\n"
        "  [--npm-registry URL] [--python-bin PATH] [--node-bin PATH]\n"
        "  [--zygote PATH] [--exec-env NAME=VALUE]... [--node-spare 0|1]\n"
        "the token comes from --token-file or LLMSAFESPACE_RUNNER_TOKEN\n");
}


static int
lss_read_token(void)
{
    int          fd;
    char         buf[4097], *env, *p;
    ssize_t      n;
    size_t       len;
    struct stat  st;

    env = getenv("LLMSAFESPACE_RUNNER_TOKEN");

    if (lss_conf.token_file != NULL) {
        fd = open(lss_conf.token_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            return -1;
        }

        /* executed code must not be able to read it (checked, not hoped) */
        if (fstat(fd, &st) != 0
            || st.st_uid == lss_conf.exec_uid
            || (st.st_mode & S_IROTH)
            || ((st.st_mode & S_IRGRP) && st.st_gid == lss_conf.exec_gid))
        {
            close(fd);
            fprintf(stderr, "runner: %s must not be readable by the exec "
                    "uid/gid or others (mode 0600 root)\n",
                    lss_conf.token_file);
            errno = EACCES;
            return -1;
        }
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0) {
            errno = EINVAL;
            return -1;
        }
        buf[n] = '\0';
        len = (size_t) n;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'
                           || buf[len - 1] == ' '))
        {
            buf[--len] = '\0';
        }
        lss_conf.token = strndup(buf, len);
        explicit_bzero(buf, sizeof(buf));

    } else if (env != NULL) {
        lss_conf.token = strdup(env);
    }

    /* never left where /proc/self/environ or a child could see it */
    if (env != NULL) {
        for (p = env; *p; p++) {
            *p = '\0';
        }
        unsetenv("LLMSAFESPACE_RUNNER_TOKEN");
    }

    if (lss_conf.token == NULL || lss_conf.token[0] == '\0') {
        errno = EINVAL;
        return -1;
    }
    lss_conf.token_len = strlen(lss_conf.token);

    return 0;
}


static uint64_t
lss_num(const char *s)
{
    char               *end;
    unsigned long long  v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s) {
        fprintf(stderr, "runner: not a number: %s\n", s);
        exit(2);
    }

    return (uint64_t) v;
}


static void
lss_languages(void)
{
    char  *list, *name, *save;

    list = strdup(lss_conf.languages);
    if (list == NULL) {
        exit(1);
    }

    for (name = strtok_r(list, ",", &save); name != NULL;
         name = strtok_r(NULL, ",", &save))
    {
        if (strcmp(name, "python") == 0) {
            lss_conf.lang_python = 1;
        } else if (strcmp(name, "javascript") == 0
                   || strcmp(name, "node") == 0)
        {
            lss_conf.lang_javascript = 1;
        } else if (strcmp(name, "bash") == 0) {
            lss_conf.lang_bash = 1;
        } else {
            fprintf(stderr, "runner: unknown language %s\n", name);
            exit(2);
        }
    }

    free(list);
}


static char *
lss_default_zygote(void)
{
    char     self[PATH_MAX], *slash, *path;
    ssize_t  n;

    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        return strdup("/usr/local/bin/llmsafespace-zygote");
    }
    self[n] = '\0';
    slash = strrchr(self, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    if (asprintf(&path, "%s/llmsafespace-zygote", self) < 0) {
        return NULL;
    }

    return path;
}


/*
 * Whether RLIMIT_DATA is enforced here: a child limits itself to 16 MiB
 * and maps 256 MiB of private memory (counted as data since Linux 4.7,
 * never touched).  gVisor 20221219 lets it through, and a memory bomb
 * there takes the whole sandbox down; executions then get RLIMIT_AS too.
 */
static int
lss_data_limit_ignored(void)
{
    int            st;
    void          *p;
    pid_t          pid;
    struct rlimit  rl;

    pid = fork();
    if (pid == 0) {
        rl.rlim_cur = 16 << 20;
        rl.rlim_max = 16 << 20;
        if (setrlimit(RLIMIT_DATA, &rl) != 0) {
            _exit(2);
        }
        p = mmap(NULL, 256 << 20, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        _exit(p == MAP_FAILED ? 0 : 1);
    }
    if (pid < 0) {
        return 0;
    }

    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            return 0;
        }
    }

    return WIFEXITED(st) && WEXITSTATUS(st) == 1;
}


int
main(int argc, char **argv)
{
    int        c, sig, fs_helper_mode;
    sigset_t   set;

    enum {
        O_LISTEN = 256, O_TOKEN_FILE, O_WORKSPACE, O_TMP, O_EXEC_UID,
        O_EXEC_GID, O_PRELOAD_PACKAGES, O_PRELOAD_SCRIPT, O_LANGUAGES,
        O_OUTPUT_CAP, O_DEFAULT_TIMEOUT, O_MAX_TIMEOUT, O_MAX_UPLOAD,
        O_MAX_CONTEXTS, O_MAX_CONCURRENT, O_SOCKET_MODE, O_MAX_REQUEST,
        O_MEM_LIMIT, O_MEM_GUARD, O_FSIZE_LIMIT, O_NPROC_LIMIT, O_NOFILE_LIMIT,
        O_PIP_FIND_LINKS, O_PIP_INDEX_URL, O_NPM_REGISTRY, O_PYTHON_BIN,
        O_NODE_BIN, O_ZYGOTE, O_EXEC_ENV, O_NODE_SPARE, O_FS_HELPER, O_HELP
    };

    static const struct option  opts[] = {
        { "listen", required_argument, NULL, O_LISTEN },
        { "token-file", required_argument, NULL, O_TOKEN_FILE },
        { "workspace", required_argument, NULL, O_WORKSPACE },
        { "tmp", required_argument, NULL, O_TMP },
        { "exec-uid", required_argument, NULL, O_EXEC_UID },
        { "exec-gid", required_argument, NULL, O_EXEC_GID },
        { "preload-packages", required_argument, NULL, O_PRELOAD_PACKAGES },
        { "preload-script", required_argument, NULL, O_PRELOAD_SCRIPT },
        { "languages", required_argument, NULL, O_LANGUAGES },
        { "output-cap", required_argument, NULL, O_OUTPUT_CAP },
        { "default-timeout", required_argument, NULL, O_DEFAULT_TIMEOUT },
        { "max-timeout", required_argument, NULL, O_MAX_TIMEOUT },
        { "max-upload", required_argument, NULL, O_MAX_UPLOAD },
        { "max-request", required_argument, NULL, O_MAX_REQUEST },
        { "max-contexts", required_argument, NULL, O_MAX_CONTEXTS },
        { "max-concurrent", required_argument, NULL, O_MAX_CONCURRENT },
        { "socket-mode", required_argument, NULL, O_SOCKET_MODE },
        { "mem-limit", required_argument, NULL, O_MEM_LIMIT },
        { "mem-guard", required_argument, NULL, O_MEM_GUARD },
        { "fsize-limit", required_argument, NULL, O_FSIZE_LIMIT },
        { "nproc-limit", required_argument, NULL, O_NPROC_LIMIT },
        { "nofile-limit", required_argument, NULL, O_NOFILE_LIMIT },
        { "pip-find-links", required_argument, NULL, O_PIP_FIND_LINKS },
        { "pip-index-url", required_argument, NULL, O_PIP_INDEX_URL },
        { "npm-registry", required_argument, NULL, O_NPM_REGISTRY },
        { "python-bin", required_argument, NULL, O_PYTHON_BIN },
        { "node-bin", required_argument, NULL, O_NODE_BIN },
        { "zygote", required_argument, NULL, O_ZYGOTE },
        { "exec-env", required_argument, NULL, O_EXEC_ENV },
        { "node-spare", required_argument, NULL, O_NODE_SPARE },
        { "fs-helper", no_argument, NULL, O_FS_HELPER },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 }
    };

    fs_helper_mode = 0;
    lss_conf.workspace = "/workspace";
    lss_conf.tmp = "/tmp";
    lss_conf.exec_uid = 1000;
    lss_conf.exec_gid = 1000;
    lss_conf.socket_mode = 0660;
    lss_conf.languages = "python,javascript,bash";
    lss_conf.output_cap = 1024 * 1024;
    lss_conf.default_timeout = 30;
    lss_conf.max_timeout = 300;
    lss_conf.max_upload = 1024ULL * 1024 * 1024;
    lss_conf.max_request = 8 * 1024 * 1024;
    lss_conf.max_contexts = 8;
    lss_conf.max_concurrent = 16;
    lss_conf.mem_limit = 2048ULL * 1024 * 1024;
    lss_conf.fsize_limit = 1024ULL * 1024 * 1024;
    lss_conf.nproc_limit = 256;
    lss_conf.nofile_limit = 1024;
    lss_conf.python_bin = "/usr/bin/python3";
    lss_conf.node_bin = "/usr/bin/node";
    lss_conf.node_spare = 1;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: lss_conf.listen = optarg; break;
        case O_TOKEN_FILE: lss_conf.token_file = optarg; break;
        case O_WORKSPACE: lss_conf.workspace = optarg; break;
        case O_TMP: lss_conf.tmp = optarg; break;
        case O_EXEC_UID: lss_conf.exec_uid = (uid_t) lss_num(optarg); break;
        case O_EXEC_GID: lss_conf.exec_gid = (gid_t) lss_num(optarg); break;
        case O_PRELOAD_PACKAGES: lss_conf.preload_packages = optarg; break;
        case O_PRELOAD_SCRIPT:
            if (lss_conf.npreload_scripts == LSS_MAX_PRELOAD_SCRIPTS) {
                fprintf(stderr, "runner: too many preload scripts\n");
                return 2;
            }
            lss_conf.preload_scripts[lss_conf.npreload_scripts++] = optarg;
            break;
        case O_LANGUAGES: lss_conf.languages = optarg; break;
        case O_OUTPUT_CAP: lss_conf.output_cap = lss_num(optarg); break;
        case O_DEFAULT_TIMEOUT:
            lss_conf.default_timeout = (int) lss_num(optarg);
            break;
        case O_MAX_TIMEOUT: lss_conf.max_timeout = (int) lss_num(optarg);
            break;
        case O_MAX_UPLOAD: lss_conf.max_upload = lss_num(optarg); break;
        case O_MAX_REQUEST: lss_conf.max_request = lss_num(optarg); break;
        case O_MAX_CONTEXTS: lss_conf.max_contexts = (int) lss_num(optarg);
            break;
        case O_MAX_CONCURRENT:
            lss_conf.max_concurrent = (int) lss_num(optarg);
            break;
        case O_SOCKET_MODE:
            lss_conf.socket_mode = (mode_t) strtoul(optarg, NULL, 8);
            break;
        case O_MEM_LIMIT: lss_conf.mem_limit = lss_num(optarg); break;
        case O_MEM_GUARD: lss_conf.mem_guard = lss_num(optarg); break;
        case O_FSIZE_LIMIT: lss_conf.fsize_limit = lss_num(optarg); break;
        case O_NPROC_LIMIT: lss_conf.nproc_limit = (int) lss_num(optarg);
            break;
        case O_NOFILE_LIMIT: lss_conf.nofile_limit = (int) lss_num(optarg);
            break;
        case O_PIP_FIND_LINKS: lss_conf.pip_find_links = optarg; break;
        case O_PIP_INDEX_URL: lss_conf.pip_index_url = optarg; break;
        case O_NPM_REGISTRY: lss_conf.npm_registry = optarg; break;
        case O_PYTHON_BIN: lss_conf.python_bin = optarg; break;
        case O_NODE_BIN: lss_conf.node_bin = optarg; break;
        case O_ZYGOTE: lss_conf.zygote_path = optarg; break;
        case O_NODE_SPARE: lss_conf.node_spare = (int) lss_num(optarg);
            break;
        case O_FS_HELPER: fs_helper_mode = 1; break;
        case O_EXEC_ENV:
            if (lss_conf.nexec_env == LSS_MAX_PRELOAD_SCRIPTS
                || strchr(optarg, '=') == NULL)
            {
                fprintf(stderr, "runner: bad or too many --exec-env\n");
                return 2;
            }
            lss_conf.exec_env[lss_conf.nexec_env++] = optarg;
            break;
        case O_HELP: lss_usage(); return 0;
        default: lss_usage(); return 2;
        }
    }

    if (fs_helper_mode) {
        /* started for a runner whose kernel ignores setfsuid (lss_fsops.c) */
        lss_conf.workspace_fd = open(lss_conf.workspace,
                                     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        lss_conf.tmp_fd = open(lss_conf.tmp,
                               O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (lss_conf.workspace_fd < 0 || lss_conf.tmp_fd < 0
            || lss_conf.exec_uid == 0 || lss_conf.exec_gid == 0)
        {
            return 1;
        }
        return lss_fsh_main();
    }

    if (lss_conf.listen == NULL || optind != argc) {
        lss_usage();
        return 2;
    }

    if (lss_conf.exec_uid == 0 || lss_conf.exec_gid == 0) {
        fprintf(stderr, "runner: --exec-uid/--exec-gid must not be 0\n");
        return 2;
    }

    if (lss_conf.default_timeout < 1
        || lss_conf.max_timeout < lss_conf.default_timeout
        || lss_conf.max_concurrent < 1 || lss_conf.output_cap < 1)
    {
        fprintf(stderr, "runner: inconsistent limits\n");
        return 2;
    }

    lss_languages();

    if (lss_read_token() != 0) {
        fprintf(stderr, "runner: no usable token (--token-file or "
                "LLMSAFESPACE_RUNNER_TOKEN): %s\n", strerror(errno));
        return 2;
    }

    if (lss_conf.zygote_path == NULL) {
        lss_conf.zygote_path = lss_default_zygote();
    }

    /*
     * Executed code runs as another uid, but a non-dumpable runner also
     * keeps /proc/<runner>/{environ,mem,fd} root-only whatever the uid.
     */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    /* orphans of a dead zygote or shepherd come to us, not to init */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);

    /* the fs-identity threads must not keep root's supplementary groups */
    if (getuid() == 0 && setgroups(0, NULL) != 0) {
        lss_log("setgroups: %s", strerror(errno));
        return 1;
    }

    lss_conf.workspace_fd = open(lss_conf.workspace,
                                 O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    lss_conf.tmp_fd = open(lss_conf.tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lss_conf.workspace_fd < 0 || lss_conf.tmp_fd < 0) {
        lss_log("workspace %s / tmp %s: %s", lss_conf.workspace,
                lss_conf.tmp, strerror(errno));
        return 1;
    }

    umask(022);
    signal(SIGPIPE, SIG_IGN);

    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    /*
     * The zygotes first: the interpreter's start is the longest step
     * before the runner is ready (over 100 ms under gVisor), and the
     * probes below (a fork among them) need not delay it.  Nothing that
     * reads their results runs before the HTTP server does.
     */
    if (lss_zygotes_start() != 0) {
        return 1;
    }

    lss_conf.fs_helper = lss_fsh_wanted();

    lss_conf.data_ignored = lss_data_limit_ignored();
    if (lss_conf.data_ignored) {
        lss_log("RLIMIT_DATA is not enforced here: executions get "
                "RLIMIT_AS as well");
    }

    if (lss_memguard_start(lss_exec_end_all) != 0) {
        return 1;
    }

    if (lss_http_start() != 0) {
        return 1;
    }

    for ( ;; ) {
        if (sigwait(&set, &sig) != 0) {
            continue;
        }

        if (sig == SIGCHLD) {
            lss_reap_children();
            continue;
        }

        if (sig == SIGTERM || sig == SIGINT) {
            lss_log("signal %d: stopping", sig);
            break;
        }
    }

    lss_exec_cancel_all();
    lss_context_delete_all();
    lss_http_stop();

    return 0;
}
