/*
 * The local driver: each sandbox is one OCI container on this machine,
 * run by runc (security level standard) or runsc/gVisor (high).
 *
 * The bundle (config.json) is written by runtimes/oci/mkbundle, the
 * runtimes' one definition of a confined sandbox (user namespace,
 * seccomp, read-only root, tmpfs, cgroup limits, loopback-only netns);
 * this driver only chooses the per-sandbox values and runs the runtimes.
 *
 * Every artifact is named after the sandbox id, so it maps back to its
 * record: container lss-<id> under <state>/runc or <state>/runsc (our own
 * runtime roots: nobody else's containers are ever listed or removed),
 * bundle <state>/bundles/<id>, run dir <state>/sandboxes/<id>.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <unistd.h>
#include <curl/curl.h>

#include "lsc.h"


#define LSC_MAX_ARGS     96
#define LSC_UID_RANGE    65536

static const char *lsc_cgroup_controllers[] = {
    "memory", "pids", "cpu", "cpuacct", "cpu,cpuacct", "blkio", "devices",
    "freezer", "cpuset", "net_cls", "perf_event", "hugetlb", "systemd",
    "unified", NULL
};

/*
 * What the runtimes listed last, with the host pid and start time of each
 * running container's process.  Between full lists a container counts as
 * running while that very process lives: one read of /proc/<pid>/stat,
 * instead of a runc process that reads every container's state (about
 * 1 ms per container here, the largest idle cost of many warm sandboxes).
 * A create or a destroy here, or LSC_LIST_FULL_MS, makes the next list a
 * full one; containers made by others under our roots (orphans) are seen
 * then.
 */
#define LSC_LIST_FULL_MS  30000

typedef struct {
    lsc_container_t     c;
    pid_t               pid;
    unsigned long long  start;
} lsc_listed_t;

static lsc_listed_t  *lsc_listed;
static size_t         lsc_nlisted;
static int64_t        lsc_listed_ms;      /* 0: the next list is full */


static void
lsc_paths(lsc_ctx_t *ctx, const char *id, char *bundle, char *run,
    size_t len)
{
    snprintf(bundle, len, "%s/bundles/%s", ctx->state_dir, id);
    snprintf(run, len, "%s/sandboxes/%s", ctx->state_dir, id);
}


static int
lsc_write_file(const char *path, const void *data, size_t len, mode_t mode,
    uid_t uid, gid_t gid)
{
    int      fd;
    ssize_t  n;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
              mode);
    if (fd == -1) {
        return -1;
    }
    n = write(fd, data, len);
    if (n != (ssize_t) len || fchown(fd, uid, gid) == -1
        || fchmod(fd, mode) == -1)
    {
        close(fd);
        return -1;
    }
    return close(fd);
}


static int
lsc_new_token(const char *path)
{
    unsigned char  r[32];
    char           hex[65];
    size_t         i;

    if (getrandom(r, sizeof(r), 0) != (ssize_t) sizeof(r)) {
        return -1;
    }
    for (i = 0; i < sizeof(r); i++) {
        sprintf(hex + 2 * i, "%02x", r[i]);
    }
    return lsc_write_file(path, hex, 64, 0600, 0, 0);
}


/*
 * Preload scripts become files in the sandbox's run dir (mounted at
 * /run/llmsafespace, mode 0700 for the container's root: the runner can
 * read them, executions cannot).  The runner runs them in its warm
 * interpreters before /readyz answers.  With write 0, only the runner
 * arguments are made (before mkbundle); with 1, the files (after mkbundle
 * made the run dir, before the container starts).
 */
static int
lsc_preload(lsc_ctx_t *ctx, lsc_sandbox_t *sb, lsc_pool_t *pool,
    const char *run, int write, char **argv, int *argc,
    char (*bufs)[LSC_PATH_LEN])
{
    size_t       i;
    json_t      *s;
    const char  *name, *content;
    char         path[LSC_PATH_LEN + 128];
    uid_t        uid;
    int          nb;

    nb = 0;
    if (!write && pool->packages[0] != '\0') {
        argv[(*argc)++] = "--runner-arg=--preload-packages";
        snprintf(bufs[nb], LSC_PATH_LEN, "--runner-arg=%s", pool->packages);
        argv[(*argc)++] = bufs[nb++];
    }

    uid = strcmp(sb->level, "high") == 0
          ? 0 : (uid_t) (ctx->uid_base + (int64_t) sb->slot * LSC_UID_RANGE);

    json_array_foreach(pool->scripts, i, s) {
        if (i >= LSC_MAX_SCRIPTS) {
            break;
        }
        name = json_string_value(json_object_get(s, "name"));
        content = json_string_value(json_object_get(s, "content"));
        if (!write) {
            argv[(*argc)++] = "--runner-arg=--preload-script";
            snprintf(bufs[nb], LSC_PATH_LEN,
                     "--runner-arg=%s=/run/llmsafespace/preload-%s",
                     name, name);
            argv[(*argc)++] = bufs[nb++];
            continue;
        }
        snprintf(path, sizeof(path), "%s/preload-%s", run, name);
        unlink(path);
        if (lsc_write_file(path, content, strlen(content), 0400, uid, uid)
            != 0)
        {
            lsc_log("error", "%s: %s: %s", sb->id, path, strerror(errno));
            return -1;
        }
    }
    return 0;
}


static int
lsc_local_create(lsc_ctx_t *ctx, lsc_sandbox_t *sb, lsc_pool_t *pool)
{
    json_t              *rt;
    const char          *fs, *runtime;
    char                *argv[LSC_MAX_ARGS];
    char                 bundle[LSC_PATH_LEN], run[LSC_PATH_LEN];
    char                 rootfs[LSC_PATH_LEN + 64], token[LSC_PATH_LEN + 16];
    char                 cid[LSC_ID_LEN + 8];
    char                 log[LSC_PATH_LEN + 32], mark[LSC_PATH_LEN + 16];
    char                 root[LSC_PATH_LEN + 16];
    char                 pbufs[2 + LSC_MAX_SCRIPTS][LSC_PATH_LEN];
    char                *extra[2 + 2 * LSC_MAX_SCRIPTS];
    int                  argc, high, rc, first, k, egress;
    lsc_mkbundle_buf_t   mb;

    rt = lsc_runtime_find(ctx, sb->runtime);
    if (rt == NULL) {
        lsc_log("error", "%s: unknown runtime %s", sb->id, sb->runtime);
        return -1;
    }
    lsc_listed_ms = 0;
    fs = json_string_value(json_object_get(json_object_get(rt, "rootfs"),
                                           "name"));
    high = strcmp(sb->level, "high") == 0;
    runtime = high ? "runsc" : "runc";

    lsc_paths(ctx, sb->id, bundle, run, sizeof(bundle));
    snprintf(rootfs, sizeof(rootfs), "%s/%s", ctx->rootfs_dir, fs);
    snprintf(token, sizeof(token), "%s/token", bundle);
    snprintf(log, sizeof(log), "%s/container.log", bundle);
    snprintf(mark, sizeof(mark), "%s/runtime", bundle);
    snprintf(cid, sizeof(cid), "lss-%s", sb->id);

    if (mkdir(bundle, 0700) == -1 && errno != EEXIST) {
        lsc_log("error", "%s: %s", bundle, strerror(errno));
        return -1;
    }
    unlink(token);
    unlink(mark);
    if (lsc_new_token(token) != 0
        || lsc_write_file(mark, runtime, strlen(runtime), 0600, 0, 0) != 0)
    {
        lsc_log("error", "%s: cannot write the token", sb->id);
        return -1;
    }

    argc = lsc_mkbundle_argv(ctx, sb, rt, high,
                             ctx->uid_base
                             + (int64_t) sb->slot * LSC_UID_RANGE,
                             cid, rootfs, bundle, run, token, &mb, argv);

    first = argc;
    if (pool != NULL) {
        lsc_preload(ctx, sb, pool, run, 0, argv, &argc, pbufs);
    }
    argv[argc] = NULL;

    /* the runner arguments beyond the runtime's, without the prefix */
    for (k = first; k < argc; k++) {
        extra[k - first] = argv[k] + sizeof("--runner-arg=") - 1;
    }
    if (lsc_bundle_write(ctx, sb, rt, fs, high, bundle, run, token, extra,
                         argc - first) != 0
        && lsc_spawn(argv, NULL, 0, log) != 0)
    {
        lsc_log("error", "%s: mkbundle failed (see %s)", sb->id, log);
        return -1;
    }
    /* the run dir exists now, owned by the container's root */
    if (pool != NULL
        && lsc_preload(ctx, sb, pool, run, 1, NULL, NULL, NULL) != 0)
    {
        return -1;
    }
    /* granted egress: a link and its allowlist (lsc_net.c) */
    egress = lsc_net_setup(ctx, sb, pool, bundle, run);
    if (egress < 0) {
        return -1;
    }

    argc = 0;
    if (high) {
        snprintf(root, sizeof(root), "%s/runsc", ctx->state_dir);
        argv[argc++] = ctx->mkbundle;
        argv[argc++] = "cgroup-exec";
        argv[argc++] = "--bundle";
        argv[argc++] = bundle;
        argv[argc++] = "--";
        if (egress) {
            argv[argc++] = (char *) lsc_net_runsc_exec(ctx);
        }
        argv[argc++] = "runsc";
        argv[argc++] = "--root";
        argv[argc++] = root;
        argv[argc++] = "--ignore-cgroups";
        argv[argc++] = "--oci-seccomp";
        argv[argc++] = egress ? "--network=sandbox" : "--network=none";
        argv[argc++] = "--host-uds=create";
        /* the shared default refuses the runner's chmod of its socket;
         * nothing outside changes the run dir while the sandbox runs */
        argv[argc++] = "--file-access-mounts=exclusive";
        argv[argc++] = "run";
        argv[argc++] = "--detach";
        argv[argc++] = "--bundle";
        argv[argc++] = bundle;
        argv[argc++] = cid;
    } else {
        snprintf(root, sizeof(root), "%s/runc", ctx->state_dir);
        argv[argc++] = "runc";
        argv[argc++] = "--root";
        argv[argc++] = root;
        argv[argc++] = "run";
        argv[argc++] = "--detach";
        argv[argc++] = "--bundle";
        argv[argc++] = bundle;
        argv[argc++] = cid;
    }
    argv[argc] = NULL;

    rc = lsc_spawn(argv, NULL, 0, log);
    if (rc != 0) {
        lsc_log("error", "%s: %s run exited %d (see %s)", sb->id, runtime,
                rc, log);
        return -1;
    }
    return 0;
}


static void
lsc_runtime_delete(lsc_ctx_t *ctx, const char *runtime, const char *cid)
{
    char   root[LSC_PATH_LEN + 16];
    char  *argv[8];

    snprintf(root, sizeof(root), "%s/%s", ctx->state_dir, runtime);
    argv[0] = (char *) runtime;
    argv[1] = "--root";
    argv[2] = root;
    argv[3] = "delete";
    argv[4] = "--force";
    argv[5] = (char *) cid;
    argv[6] = NULL;
    lsc_spawn(argv, NULL, 0, "/dev/null");
}


/* whether the runtime keeps state for this container id in our root */
static int
lsc_runtime_has(lsc_ctx_t *ctx, const char *runtime, const char *cid)
{
    char  path[LSC_PATH_LEN + 3 * LSC_ID_LEN];

    if (strcmp(runtime, "runc") == 0) {
        snprintf(path, sizeof(path), "%s/runc/%s", ctx->state_dir, cid);

    } else {
        /* runsc names its files "<id>_sandbox:<id>.state" and ".lock" */
        snprintf(path, sizeof(path), "%s/runsc/%s_sandbox:%s.state",
                 ctx->state_dir, cid, cid);
        if (access(path, F_OK) == 0 || errno != ENOENT) {
            return 1;
        }
        snprintf(path, sizeof(path), "%s/runsc/%s_sandbox:%s.lock",
                 ctx->state_dir, cid, cid);
    }
    return access(path, F_OK) == 0 || errno != ENOENT;
}


/*
 * Idempotent and restartable: each step tolerates what an interrupted
 * earlier run left, and the bundle, which the cgroup step needs, goes
 * last.
 */
static int
lsc_local_destroy(lsc_ctx_t *ctx, const char *id)
{
    char         bundle[LSC_PATH_LEN], run[LSC_PATH_LEN];
    char         cid[LSC_ID_LEN + 8], mark[LSC_PATH_LEN + 16];
    char         cfg[LSC_PATH_LEN + 16], cg[LSC_PATH_LEN];
    char        *runtime, *argv[6];
    const char  **c;
    int          fresh;

    if (!lsc_valid_id(id)) {
        return -1;
    }
    lsc_listed_ms = 0;
    lsc_paths(ctx, id, bundle, run, sizeof(bundle));
    snprintf(cid, sizeof(cid), "lss-%s", id);
    snprintf(mark, sizeof(mark), "%s/runtime", bundle);
    snprintf(cfg, sizeof(cfg), "%s/config.json", bundle);

    /*
     * The bundle is made before any runtime call and removed only after
     * them: without it and without the runtimes' own state for the id,
     * there is nothing to ask them to delete.  This spares a fresh
     * sandbox two runtime processes (tens of milliseconds) on its start.
     */
    fresh = access(bundle, F_OK) == -1 && errno == ENOENT
            && !lsc_runtime_has(ctx, "runc", cid)
            && !lsc_runtime_has(ctx, "runsc", cid);

    runtime = fresh ? NULL : lsc_read_file(mark, 16);
    if (!fresh && (runtime == NULL || strcmp(runtime, "runsc") != 0)) {
        lsc_runtime_delete(ctx, "runc", cid);
    }
    if (!fresh && (runtime == NULL || strcmp(runtime, "runc") != 0)) {
        lsc_runtime_delete(ctx, "runsc", cid);
        if (access(cfg, R_OK) == 0) {
            argv[0] = ctx->mkbundle;
            argv[1] = "cgroup-remove";
            argv[2] = "--bundle";
            argv[3] = bundle;
            argv[4] = NULL;
            lsc_spawn(argv, NULL, 0, "/dev/null");
        }
    }
    free(runtime);

    /* what runc or the cgroup step may have left after a crash */
    for (c = lsc_cgroup_controllers; *c != NULL; c++) {
        snprintf(cg, sizeof(cg), "/sys/fs/cgroup/%s/llmsafespace/%s", *c,
                 cid);
        rmdir(cg);
        snprintf(cg, sizeof(cg), "/sys/fs/cgroup/%s/llmsafespace/%s-runsc",
                 *c, cid);
        rmdir(cg);
    }

    if (lsc_net_teardown(ctx, id) != 0) {
        return -1;
    }

    snprintf(cg, sizeof(cg), "%s/routes/%s", ctx->state_dir, id);
    if (unlink(cg) == -1 && errno != ENOENT) {
        lsc_log("error", "%s: %s", cg, strerror(errno));
        return -1;
    }

    if (lsc_rmtree(run) != 0 || lsc_rmtree(bundle) != 0) {
        lsc_log("error", "%s: cannot remove its directories: %s", id,
                strerror(errno));
        return -1;
    }
    return 0;
}


/* the start time of a live, non-zombie process, or 0 */
static unsigned long long
lsc_proc_start(pid_t pid)
{
    char                path[64], buf[1024], *p;
    int                 fd, i;
    ssize_t             len;
    unsigned long long  start;

    if (pid <= 0) {
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return 0;
    }
    len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0) {
        return 0;
    }
    buf[len] = '\0';

    /* after the name: state is field 3, starttime field 22 */
    p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X') {
        return 0;
    }
    p += 2;
    for (i = 3; i < 22 && p != NULL; i++) {
        p = strchr(p, ' ');
        if (p != NULL) {
            p++;
        }
    }
    if (p == NULL) {
        return 0;
    }
    start = strtoull(p, NULL, 10);
    return start;
}


static int
lsc_parse_list(const char *text, int high, lsc_listed_t **out, size_t *n)
{
    json_t        *list, *c;
    size_t         i;
    const char    *id, *st;
    lsc_listed_t  *p, *e;

    list = json_loads(text, JSON_DECODE_ANY, NULL);
    if (list == NULL) {
        return -1;
    }
    json_array_foreach(list, i, c) {
        id = json_string_value(json_object_get(c, "id"));
        st = json_string_value(json_object_get(c, "status"));
        if (id == NULL || strncmp(id, "lss-", 4) != 0
            || !lsc_valid_id(id + 4))
        {
            continue;
        }
        p = realloc(*out, (*n + 1) * sizeof(lsc_listed_t));
        if (p == NULL) {
            json_decref(list);
            return -1;
        }
        *out = p;
        e = &p[*n];
        snprintf(e->c.id, sizeof(e->c.id), "%s", id);
        e->c.high = high;
        if (st == NULL) {
            e->c.state = LSC_C_OTHER;
        } else if (strcmp(st, "running") == 0) {
            e->c.state = LSC_C_RUNNING;
        } else if (strcmp(st, "stopped") == 0) {
            e->c.state = LSC_C_STOPPED;
        } else {
            e->c.state = LSC_C_OTHER;
        }
        e->pid = (pid_t) json_integer_value(json_object_get(c, "pid"));
        e->start = e->c.state == LSC_C_RUNNING ? lsc_proc_start(e->pid) : 0;
        (*n)++;
    }
    json_decref(list);
    return 0;
}


static int
lsc_dir_empty(const char *path)
{
    DIR            *d;
    struct dirent  *e;
    int             empty;

    d = opendir(path);
    if (d == NULL) {
        return 1;
    }
    empty = 1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            empty = 0;
            break;
        }
    }
    closedir(d);
    return empty;
}


static int
lsc_local_list(lsc_ctx_t *ctx, lsc_container_t **out, size_t *n)
{
    char           root[LSC_PATH_LEN + 16];
    char          *argv[7], *text;
    int            rc, high;
    size_t         i, nl;
    int64_t        now;
    lsc_listed_t  *l;

    now = lsc_now_ms();
    if (lsc_listed_ms == 0 || now - lsc_listed_ms >= LSC_LIST_FULL_MS) {
        l = NULL;
        nl = 0;
        for (high = 0; high <= 1; high++) {
            snprintf(root, sizeof(root), "%s/%s", ctx->state_dir,
                     high ? "runsc" : "runc");
            /* a runtime never used leaves no root: nothing to ask it */
            if (lsc_dir_empty(root)) {
                continue;
            }
            argv[0] = high ? "runsc" : "runc";
            argv[1] = "--root";
            argv[2] = root;
            argv[3] = "list";
            argv[4] = high ? "-format" : "--format";
            argv[5] = "json";
            argv[6] = NULL;
            text = NULL;
            rc = lsc_spawn(argv, &text, 4 << 20, NULL);
            if (rc != 0 || text == NULL
                || lsc_parse_list(text, high, &l, &nl) != 0)
            {
                lsc_log("error", "%s list failed (%d)", argv[0], rc);
                free(text);
                free(l);
                return -1;
            }
            free(text);
        }
        free(lsc_listed);
        lsc_listed = l;
        lsc_nlisted = nl;
        lsc_listed_ms = now;

    } else {
        /* the same containers; a running one whose process ended stopped */
        for (i = 0; i < lsc_nlisted; i++) {
            l = &lsc_listed[i];
            if (l->c.state == LSC_C_RUNNING
                && (l->start == 0 || lsc_proc_start(l->pid) != l->start))
            {
                l->c.state = LSC_C_STOPPED;
            }
        }
    }

    *n = 0;
    *out = malloc((lsc_nlisted + 1) * sizeof(lsc_container_t));
    if (*out == NULL) {
        return -1;
    }
    for (i = 0; i < lsc_nlisted; i++) {
        (*out)[i] = lsc_listed[i].c;
    }
    *n = lsc_nlisted;
    return 0;
}


static size_t
lsc_discard(void *p, size_t size, size_t n, void *data)
{
    (void) p;
    (void) data;
    return size * n;
}


/*
 * The run dir is writable by the sandbox's root: the runner.sock there
 * could be replaced by a symlink to any host socket (Redis, PostgreSQL, a
 * container runtime), and whoever connects to that path would follow it.
 * So the route never names it.  Once it is checked to be a socket (not a
 * symlink, fd-relative), it is hard-linked into <state>/routes/<id>, a
 * directory only the host writes; the link keeps naming the runner's
 * socket whatever the sandbox later does in its run dir.
 */
/*
 * --socket-group: the gateway's workers need not run as root.  The pinned
 * link (not the run dir, which the sandbox's root owns) gets the group
 * and mode 0660: the path is in <state>/routes, which only the host
 * writes, and was checked to be a socket, so nothing can have put another
 * file there.  The inode is the runner's socket: its owner, the sandbox's
 * root, could drop the group's bits again, which only locks itself out.
 */
static int
lsc_local_share(lsc_ctx_t *ctx, int dfd, const char *name)
{
    if (ctx->socket_gid < 0) {
        return 0;
    }
    if (fchownat(dfd, name, (uid_t) -1, (gid_t) ctx->socket_gid,
                 AT_SYMLINK_NOFOLLOW) != 0
        || fchmodat(dfd, name, 0660, 0) != 0)
    {
        lsc_log("error", "%s: cannot give the socket its group: %s", name,
                strerror(errno));
        return -1;
    }
    return 0;
}


static int
lsc_local_pin(lsc_ctx_t *ctx, const char *id, const char *pin)
{
    char         run[LSC_PATH_LEN];
    struct stat  st;
    int          dfd, rc;

    if (lstat(pin, &st) == 0) {
        if (S_ISSOCK(st.st_mode)) {
            return lsc_local_share(ctx, AT_FDCWD, pin);
        }
        unlink(pin);
        return -1;
    }

    snprintf(run, sizeof(run), "%s/sandboxes/%s", ctx->state_dir, id);
    dfd = open(run, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd == -1) {
        return -1;
    }
    rc = -1;
    if (fstatat(dfd, "runner.sock", &st, AT_SYMLINK_NOFOLLOW) == 0
        && S_ISSOCK(st.st_mode)
        && linkat(dfd, "runner.sock", AT_FDCWD, pin, 0) == 0)
    {
        /* swapped between the check and the link: not a socket now */
        if (lstat(pin, &st) == 0 && S_ISSOCK(st.st_mode)) {
            rc = lsc_local_share(ctx, AT_FDCWD, pin);
        } else {
            unlink(pin);
        }
    }
    close(dfd);
    return rc;
}


static int
lsc_local_inspect(lsc_ctx_t *ctx, const lsc_sandbox_t *sb)
{
    CURL               *c;
    struct curl_slist  *h;
    char                sock[LSC_PATH_LEN + 128], tokpath[LSC_PATH_LEN + 64];
    char                hdr[256], *token;
    long                status;
    CURLcode            rc;
    struct stat         st;
    size_t              n;

    lsc_redis_socket_path(ctx, sb->id, sock, sizeof(sock));
    if (lsc_local_pin(ctx, sb->id, sock) != 0 || lstat(sock, &st) == -1) {
        return 0;
    }
    snprintf(tokpath, sizeof(tokpath), "%s/bundles/%s/token",
             ctx->state_dir, sb->id);
    token = lsc_read_file(tokpath, 128);
    if (token == NULL) {
        return -1;
    }
    n = strlen(token);
    while (n > 0 && token[n - 1] == '\n') {
        token[--n] = '\0';
    }
    snprintf(hdr, sizeof(hdr), "X-LLMSafeSpace-Runner-Token: %s", token);
    free(token);

    c = curl_easy_init();
    if (c == NULL) {
        return -1;
    }
    h = curl_slist_append(NULL, hdr);
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);
    curl_easy_setopt(c, CURLOPT_URL, "http://runner/readyz");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 500L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, lsc_discard);
    rc = curl_easy_perform(c);
    status = 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status == 200 ? 1 : 0;
}


/*
 * The last line of the container's log (runtime and runner stderr),
 * reduced to printable ASCII: it becomes the record's message, and the
 * runner's output is not trusted to be anything in particular.
 */
static void
lsc_local_diagnose(lsc_ctx_t *ctx, const char *id, char *buf, size_t len)
{
    char    path[LSC_PATH_LEN + 64], *text, *line, *p;
    size_t  n, i;

    buf[0] = '\0';
    snprintf(path, sizeof(path), "%s/bundles/%s/container.log",
             ctx->state_dir, id);
    text = lsc_read_file(path, 64 * 1024);
    if (text == NULL) {
        return;
    }
    n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r')) {
        text[--n] = '\0';
    }
    line = strrchr(text, '\n');
    line = line ? line + 1 : text;
    for (i = 0, p = line; *p != '\0' && i + 1 < len; p++) {
        buf[i++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
    }
    buf[i] = '\0';
    free(text);
}


static int
lsc_scan(const char *dir, char ***ids, size_t *n)
{
    DIR            *d;
    struct dirent  *e;
    char          **p;
    size_t          i;

    d = opendir(dir);
    if (d == NULL) {
        return errno == ENOENT ? 0 : -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (!lsc_valid_id(e->d_name)) {
            continue;
        }
        for (i = 0; i < *n; i++) {
            if (strcmp((*ids)[i], e->d_name) == 0) {
                break;
            }
        }
        if (i < *n) {
            continue;
        }
        p = realloc(*ids, (*n + 1) * sizeof(char *));
        if (p == NULL) {
            closedir(d);
            return -1;
        }
        *ids = p;
        p[*n] = strdup(e->d_name);
        if (p[*n] == NULL) {
            closedir(d);
            return -1;
        }
        (*n)++;
    }
    closedir(d);
    return 0;
}


static int
lsc_local_artifacts(lsc_ctx_t *ctx, char ***ids, size_t *n)
{
    char  path[LSC_PATH_LEN + 16];

    *ids = NULL;
    *n = 0;
    snprintf(path, sizeof(path), "%s/bundles", ctx->state_dir);
    if (lsc_scan(path, ids, n) != 0) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/routes", ctx->state_dir);
    if (lsc_scan(path, ids, n) != 0) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/sandboxes", ctx->state_dir);
    return lsc_scan(path, ids, n);
}


/*
 * At start, under the lock: <state>/routes, the one directory the gateway
 * reaches runners through, is root:GROUP 0750 with --socket-group (only
 * the group may even look up a route's socket), else root 0711 as
 * before.  Sockets pinned by an earlier run get the group now, so a
 * restart with the option serves the sandboxes it adopts.
 */
int
lsc_local_prepare(lsc_ctx_t *ctx)
{
    char            path[LSC_PATH_LEN + 16];
    int             dfd, rc;
    DIR            *d;
    struct dirent  *e;
    struct stat     st;

    snprintf(path, sizeof(path), "%s/routes", ctx->state_dir);
    dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd == -1) {
        lsc_log("error", "%s: %s", path, strerror(errno));
        return -1;
    }
    if (fchown(dfd, 0, ctx->socket_gid < 0 ? 0 : (gid_t) ctx->socket_gid)
        != 0
        || fchmod(dfd, ctx->socket_gid < 0 ? 0711 : 0750) != 0)
    {
        lsc_log("error", "%s: %s", path, strerror(errno));
        close(dfd);
        return -1;
    }
    if (ctx->socket_gid < 0) {
        close(dfd);
        return 0;
    }

    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return -1;
    }
    rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (lsc_valid_id(e->d_name)
            && fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0
            && S_ISSOCK(st.st_mode)
            && lsc_local_share(ctx, dfd, e->d_name) != 0)
        {
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}


/*
 * container.log holds the runtime's and the runner's stderr for the
 * sandbox's whole life, and the runner logs every request: past
 * --log-max it is copied to container.log.1 (the previous copy goes) and
 * emptied.  The writers hold it with O_APPEND, so they go on at its new
 * end; what they write between the copy and the truncation is lost.
 */
static void
lsc_local_tidy(lsc_ctx_t *ctx, const char *id)
{
    char         log[LSC_PATH_LEN + 32], old[LSC_PATH_LEN + 48];
    int          in, out;
    off_t        left;
    ssize_t      n;
    struct stat  st;

    snprintf(log, sizeof(log), "%s/bundles/%s/container.log",
             ctx->state_dir, id);
    if (stat(log, &st) == -1 || st.st_size <= ctx->log_max) {
        return;
    }
    snprintf(old, sizeof(old), "%s.1", log);

    in = open(log, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (in == -1) {
        return;
    }
    out = open(old, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
               0600);
    if (out == -1) {
        lsc_log("error", "%s: %s", old, strerror(errno));
        close(in);
        return;
    }
    for (left = st.st_size; left > 0; left -= n) {
        n = copy_file_range(in, NULL, out, NULL, (size_t) left, 0);
        if (n <= 0) {
            break;
        }
    }
    if (left > 0) {
        lsc_log("error", "%s: copy failed: %s", log, strerror(errno));
    } else if (ftruncate(in, 0) == -1) {
        lsc_log("error", "%s: %s", log, strerror(errno));
    }
    close(out);
    close(in);
}


/* the sandbox's cgroup in one hierarchy; runsc's Sentry has its own */
static void
lsc_local_cgroup(const lsc_sandbox_t *sb, const char *hierarchy,
    const char *file, char *path, size_t len)
{
    snprintf(path, len, "/sys/fs/cgroup/%s/llmsafespace/lss-%s%s/%s",
             hierarchy, sb->id,
             strcmp(sb->level, "high") == 0 ? "-runsc" : "", file);
}


static int
lsc_local_cpu_usage(lsc_ctx_t *ctx, const lsc_sandbox_t *sb, uint64_t *ns)
{
    char                 path[LSC_PATH_LEN], buf[32], *end;
    int                  fd;
    ssize_t              n;
    unsigned long long   v;

    (void) ctx;
    lsc_local_cgroup(sb, "cpuacct", "cpuacct.usage", path, sizeof(path));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    v = strtoull(buf, &end, 10);
    if (end == buf || (*end != '\n' && *end != '\0')) {
        return -1;
    }
    *ns = v;
    return 0;
}


static int
lsc_local_cpu_weight(lsc_ctx_t *ctx, const lsc_sandbox_t *sb, int shares)
{
    char  path[LSC_PATH_LEN], buf[16];
    int   fd, len, rc;

    (void) ctx;
    lsc_local_cgroup(sb, "cpu", "cpu.shares", path, sizeof(path));
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }
    len = snprintf(buf, sizeof(buf), "%d", shares);
    rc = write(fd, buf, (size_t) len) == len ? 0 : -1;
    close(fd);
    return rc;
}


const lsc_driver_t  lsc_local_driver = {
    "local",
    lsc_local_create,
    lsc_local_destroy,
    lsc_local_list,
    lsc_local_inspect,
    lsc_local_diagnose,
    lsc_local_artifacts,
    lsc_local_tidy,
    lsc_local_cpu_usage,
    lsc_local_cpu_weight,
};
