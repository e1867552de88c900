/*
 * Per-sandbox OCI bundles without a process per sandbox.
 *
 * runtimes/oci/mkbundle is the one definition of a confined sandbox, but
 * it is a Python program: starting it costs more than `runc run -d`
 * itself (120-190 ms on a loaded 2-core machine).  So it runs once per
 * runtime, container runtime and set of limits (every sandbox of a pool
 * shares one), and what it writes is the template.  Each sandbox's
 * config.json is that template with only the per-sandbox names put in
 * the places mkbundle puts them: cgroup path, run dir mount source, user
 * namespace host ids, and the preload arguments appended to the runner's.
 * Everything mkbundle derives from the limits stays its own.  The tests
 * compare the result with mkbundle's output for the same arguments.  A
 * template without the expected shape is not used (the caller runs
 * mkbundle per sandbox instead).
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lsc.h"


#define LSC_RUN_DIR        "/run/llmsafespace"
#define LSC_MAX_TEMPLATES  32
#define LSC_KEY_LEN        (LSC_NAME_LEN + 64)


typedef struct {
    char     key[LSC_KEY_LEN];
    json_t  *cfg;                    /* NULL: failed, do not retry */
} lsc_template_t;


static lsc_template_t  lsc_templates[LSC_MAX_TEMPLATES];
static size_t          lsc_ntemplates, lsc_next;


/*
 * mkbundle's arguments for one sandbox's bundle, as its limits and runtime
 * ask: the same for a template and for a sandbox's own bundle (the
 * fallback), so that both describe one confinement.  Returns argc;
 * argv needs room for 22 + 24 entries and the caller's own after them.
 */
int
lsc_mkbundle_argv(lsc_ctx_t *ctx, const lsc_sandbox_t *sb, json_t *rt,
    int high, int64_t uid, const char *cid, const char *rootfs,
    const char *bundle, const char *run, const char *token,
    lsc_mkbundle_buf_t *buf, char **argv)
{
    int      argc;
    size_t   i;
    json_t  *v;

    snprintf(buf->uid, sizeof(buf->uid), "%lld", (long long) uid);
    snprintf(buf->mem, sizeof(buf->mem), "%lld", (long long) sb->memory);
    snprintf(buf->pids, sizeof(buf->pids), "%d", sb->pids);
    snprintf(buf->cpus, sizeof(buf->cpus), "%.3f", sb->cpus);

    argc = 0;
    argv[argc++] = ctx->mkbundle;
    argv[argc++] = "--rootfs";
    argv[argc++] = (char *) rootfs;
    argv[argc++] = "--bundle";
    argv[argc++] = (char *) bundle;
    argv[argc++] = "--run-dir";
    argv[argc++] = (char *) run;
    argv[argc++] = "--token-file";
    argv[argc++] = (char *) token;
    argv[argc++] = "--runtime";
    argv[argc++] = high ? "runsc" : "runc";
    argv[argc++] = "--id";
    argv[argc++] = (char *) cid;
    argv[argc++] = "--uid-base";
    argv[argc++] = buf->uid;
    argv[argc++] = "--memory";
    argv[argc++] = buf->mem;
    argv[argc++] = "--pids";
    argv[argc++] = buf->pids;
    argv[argc++] = "--cpus";
    argv[argc++] = buf->cpus;
    json_array_foreach(json_object_get(rt, "runnerArgs"), i, v) {
        if (i >= 24 || !json_is_string(v)) {
            break;
        }
        snprintf(buf->rargs[i], LSC_PATH_LEN, "--runner-arg=%s",
                 json_string_value(v));
        argv[argc++] = buf->rargs[i];
    }
    argv[argc] = NULL;
    return argc;
}


static json_t *
lsc_template_make(lsc_ctx_t *ctx, const char *fs, json_t *rt, int high,
    lsc_sandbox_t *sb)
{
    char                 dir[LSC_PATH_LEN + 64], bundle[LSC_PATH_LEN + 80];
    char                 run[LSC_PATH_LEN + 100], token[LSC_PATH_LEN + 100];
    char                 rootfs[LSC_PATH_LEN + 64];
    char                 cfgpath[LSC_PATH_LEN + 100];
    char                *argv[64];
    int                  fd;
    json_t              *cfg;
    json_error_t         err;
    lsc_mkbundle_buf_t   buf;

    snprintf(dir, sizeof(dir), "%s/templates", ctx->state_dir);
    if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
        return NULL;
    }
    snprintf(bundle, sizeof(bundle), "%s/%s-%s", dir, fs,
             high ? "runsc" : "runc");
    snprintf(run, sizeof(run), "%s-run", bundle);
    snprintf(token, sizeof(token), "%s-token", bundle);
    snprintf(rootfs, sizeof(rootfs), "%s/%s", ctx->rootfs_dir, fs);

    lsc_rmtree(bundle);
    lsc_rmtree(run);
    unlink(token);
    fd = open(token, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        return NULL;
    }
    close(fd);

    lsc_mkbundle_argv(ctx, sb, rt, high, ctx->uid_base, "lss-template",
                      rootfs, bundle, run, token, &buf, argv);

    cfg = NULL;
    if (lsc_spawn(argv, NULL, 0, NULL) == 0) {
        snprintf(cfgpath, sizeof(cfgpath), "%s/config.json", bundle);
        cfg = json_load_file(cfgpath, 0, &err);
    }
    lsc_rmtree(bundle);
    lsc_rmtree(run);
    unlink(token);
    return cfg;
}


static json_t *
lsc_template(lsc_ctx_t *ctx, const char *fs, json_t *rt, int high,
    lsc_sandbox_t *sb)
{
    char             key[LSC_KEY_LEN];
    size_t           i;
    lsc_template_t  *t;

    snprintf(key, sizeof(key), "%s/%d/%lld/%d/%.3f", fs, high,
             (long long) sb->memory, sb->pids, sb->cpus);
    for (i = 0; i < lsc_ntemplates; i++) {
        if (strcmp(lsc_templates[i].key, key) == 0) {
            return lsc_templates[i].cfg;
        }
    }

    /* full: the oldest goes */
    if (lsc_ntemplates < LSC_MAX_TEMPLATES) {
        t = &lsc_templates[lsc_ntemplates++];
    } else {
        t = &lsc_templates[lsc_next];
        lsc_next = (lsc_next + 1) % LSC_MAX_TEMPLATES;
        json_decref(t->cfg);
    }
    snprintf(t->key, sizeof(t->key), "%s", key);
    t->cfg = lsc_template_make(ctx, fs, rt, high, sb);
    if (t->cfg == NULL) {
        lsc_log("warn", "no bundle template for %s: mkbundle per sandbox",
                key);
    }
    return t->cfg;
}


/* the template's fields this file sets must be where mkbundle puts them */
static int
lsc_patch(json_t *cfg, const char *cid, const char *run, int64_t uid,
    char **extra, int nextra, int high)
{
    json_t      *linux, *m, *args, *map;
    size_t       i;
    int          found, k;
    char         cg[LSC_ID_LEN + 32];

    linux = json_object_get(cfg, "linux");
    args = json_object_get(json_object_get(cfg, "process"), "args");
    if (!json_is_object(linux) || !json_is_array(args)) {
        return -1;
    }

    snprintf(cg, sizeof(cg), "/llmsafespace/%s", cid);
    json_object_set_new(linux, "cgroupsPath", json_string(cg));

    found = 0;
    json_array_foreach(json_object_get(cfg, "mounts"), i, m) {
        if (json_is_string(json_object_get(m, "destination"))
            && strcmp(json_string_value(json_object_get(m, "destination")),
                      LSC_RUN_DIR) == 0)
        {
            json_object_set_new(m, "source", json_string(run));
            found++;
        }
    }
    if (found != 1) {
        return -1;
    }

    if (!high) {
        for (k = 0; k < 2; k++) {
            map = json_array_get(json_object_get(linux, k ? "gidMappings"
                                                          : "uidMappings"),
                                 0);
            if (!json_is_object(map)) {
                return -1;
            }
            json_object_set_new(map, "hostID", json_integer(uid));
        }
    }

    for (k = 0; k < nextra; k++) {
        json_array_append_new(args, json_string(extra[k]));
    }
    return 0;
}


/*
 * The run dir as mkbundle prepares it: made by the host before the
 * sandbox exists, so nothing inside can race the chown; 0700 for the
 * container's root; the token 0400 for it, written then renamed.
 */
static int
lsc_run_dir(const char *run, const char *token_src, uid_t uid)
{
    int      dfd, fd, rc;
    char    *tok;
    size_t   n;

    if (mkdir(run, 0700) == -1 && errno != EEXIST) {
        return -1;
    }
    dfd = open(run, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd == -1) {
        return -1;
    }
    tok = lsc_read_file(token_src, 256);
    rc = -1;
    if (tok != NULL && fchown(dfd, uid, uid) == 0 && fchmod(dfd, 0700) == 0)
    {
        unlinkat(dfd, "token.tmp", 0);
        fd = openat(dfd, "token.tmp",
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    0400);
        if (fd != -1) {
            n = strlen(tok);
            if (write(fd, tok, n) == (ssize_t) n && fchown(fd, uid, uid) == 0
                && fchmod(fd, 0400) == 0 && close(fd) == 0)
            {
                rc = renameat(dfd, "token.tmp", dfd, "token");
            } else {
                close(fd);
            }
        }
    }
    free(tok);
    close(dfd);
    return rc;
}


/*
 * Writes <bundle>/config.json and prepares the run dir.  Returns 0, or -1
 * when the template cannot be used (the caller then runs mkbundle).
 */
int
lsc_bundle_write(lsc_ctx_t *ctx, lsc_sandbox_t *sb, json_t *rt,
    const char *fs, int high, const char *bundle, const char *run,
    const char *token, char **extra, int nextra)
{
    json_t  *tpl, *cfg;
    char     cid[LSC_ID_LEN + 8], path[LSC_PATH_LEN + 32];
    char     tmp[LSC_PATH_LEN + 40];
    int64_t  uid;

    tpl = lsc_template(ctx, fs, rt, high, sb);
    if (tpl == NULL) {
        return -1;
    }
    cfg = json_deep_copy(tpl);
    if (cfg == NULL) {
        return -1;
    }
    snprintf(cid, sizeof(cid), "lss-%s", sb->id);
    uid = ctx->uid_base + (int64_t) sb->slot * 65536;

    if (lsc_patch(cfg, cid, run, uid, extra, nextra, high) != 0) {
        lsc_log("warn", "bundle template of %s has an unexpected shape", fs);
        json_decref(cfg);
        return -1;
    }

    if (lsc_run_dir(run, token, high ? 0 : (uid_t) uid) != 0) {
        lsc_log("error", "%s: cannot prepare %s: %s", sb->id, run,
                strerror(errno));
        json_decref(cfg);
        return -1;
    }

    snprintf(path, sizeof(path), "%s/config.json", bundle);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (json_dump_file(cfg, tmp, JSON_INDENT(2)) != 0
        || rename(tmp, path) != 0)
    {
        json_decref(cfg);
        return -1;
    }
    json_decref(cfg);
    return 0;
}
