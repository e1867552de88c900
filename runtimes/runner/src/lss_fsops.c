/*
 * The workspace operations of the file API, done with the exec uid's fs
 * identity.  Locally (setfsuid in the calling thread) where the kernel
 * honours setfsuid; otherwise (gVisor) through the fs helper: a process
 * of the runner's binary running as the exec uid that performs the same
 * local operations and passes descriptors back.  Either way every path
 * is resolved fd-relative with no symlink followed (lss_path.c).
 */

#include "lss_runner.h"
#include "lss_fdpass.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define LSS_FSH_MSG  16384

static pthread_mutex_t  lss_fsh_lock = PTHREAD_MUTEX_INITIALIZER;
static int              lss_fsh_fd = -1;
static int              lss_fsh_ctl = -1;


/* local implementations: the caller's thread takes the exec identity */

static int
lss_fsop_local_open(const char *rel, int flags, mode_t mode)
{
    int  fd, err;

    lss_fs_enter();
    fd = lss_path_open(rel, flags, mode);
    err = errno;
    lss_fs_leave();

    errno = err;
    return fd;
}


static int
lss_fsop_local_mkdir(const char *rel)
{
    int          dfd, fd, rc, err;
    const char  *name;

    lss_fs_enter();
    dfd = lss_path_parent(rel, &name);
    if (dfd < 0) {
        err = errno == EINVAL ? EEXIST : errno;
        lss_fs_leave();
        errno = err;
        return -1;
    }
    rc = mkdirat(dfd, name, 0755);
    err = errno;
    fd = rc == 0 ? openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                                     | O_CLOEXEC)
                 : -1;
    close(dfd);
    lss_fs_leave();

    if (fd >= 0) {
        lss_fs_own(fd);
        close(fd);
    }

    errno = err;
    return rc;
}


static int
lss_fsop_local_delete(const char *rel, int recursive)
{
    int          dfd, rc, err;
    const char  *name;

    lss_fs_enter();
    dfd = lss_path_parent(rel, &name);
    if (dfd < 0) {
        err = errno;
        lss_fs_leave();
        errno = err;
        return -1;
    }

    rc = unlinkat(dfd, name, 0);
    if (rc != 0 && (errno == EISDIR || errno == EPERM)) {
        rc = recursive ? lss_remove_tree(dfd, name, 0)
                       : unlinkat(dfd, name, AT_REMOVEDIR);
    }
    err = errno;
    close(dfd);
    lss_fs_leave();

    errno = err;
    return rc;
}


static int
lss_fsop_local_create_tmp(const char *rel, char *tmp, size_t len)
{
    int          dfd, fd, err;
    u_char       rnd[8];
    const char  *name;

    if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
        return -1;
    }
    snprintf(tmp, len, ".lss-upload-%02x%02x%02x%02x%02x%02x%02x%02x",
             rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);

    lss_fs_enter();
    fd = -1;
    dfd = lss_path_parent(rel, &name);
    if (dfd >= 0) {
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW
                              | O_CLOEXEC, 0644);
    }
    err = errno;
    if (dfd >= 0) {
        close(dfd);
    }
    lss_fs_leave();

    if (fd >= 0) {
        lss_fs_own(fd);
    }

    errno = err;
    return fd;
}


/* rename the finished upload over its target; EEXIST for a hard link */
static int
lss_fsop_local_commit(const char *rel, const char *tmp)
{
    int          dfd, rc;
    struct stat  st;
    const char  *name;

    lss_fs_enter();

    rc = 0;
    dfd = lss_path_parent(rel, &name);
    if (dfd < 0) {
        rc = errno;
    } else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISDIR(st.st_mode)) {
            rc = EISDIR;
        } else if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
            rc = EEXIST;
        }
    }

    /* rename replaces a planted symlink itself, never its target */
    if (rc == 0 && renameat(dfd, tmp, dfd, name) != 0) {
        rc = errno;
    }
    if (rc != 0 && dfd >= 0) {
        unlinkat(dfd, tmp, 0);
    }
    if (dfd >= 0) {
        close(dfd);
    }
    lss_fs_leave();

    errno = rc;
    return rc == 0 ? 0 : -1;
}


static int
lss_fsop_local_unlink_tmp(const char *rel, const char *tmp)
{
    int          dfd, rc;
    const char  *name;

    lss_fs_enter();
    rc = -1;
    dfd = lss_path_parent(rel, &name);
    if (dfd >= 0) {
        rc = unlinkat(dfd, tmp, 0);
        close(dfd);
    }
    lss_fs_leave();

    return rc;
}


/* empty the workspace, and the tmp entries the exec uid owns */
static void
lss_fsop_local_reset(int *removed, int *failed)
{
    int             fd, i;
    DIR            *d;
    struct stat     st;
    struct dirent  *de;

    *removed = 0;
    *failed = 0;

    lss_fs_enter();

    for (i = 0; i < 2; i++) {
        fd = openat(i == 0 ? lss_conf.workspace_fd : lss_conf.tmp_fd, ".",
                    O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        d = fd >= 0 ? fdopendir(fd) : NULL;
        if (d == NULL) {
            if (fd >= 0) {
                close(fd);
            }
            (*failed)++;
            continue;
        }

        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0
                || strcmp(de->d_name, "..") == 0)
            {
                continue;
            }
            if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)
                != 0)
            {
                continue;
            }
            if (i == 1 && st.st_uid != lss_conf.exec_uid) {
                continue;
            }
            if (lss_remove_tree(dirfd(d), de->d_name, 0) == 0) {
                (*removed)++;
            } else {
                (*failed)++;
            }
        }
        closedir(d);
    }

    lss_fs_leave();
}


/* ---- the helper, seen from the runner ---- */

int
lss_fsh_wanted(void)
{
    int  ok;

    if (getenv("LLMSAFESPACE_RUNNER_FS_HELPER") != NULL) {
        return 1;
    }
    if (getuid() != 0) {
        return 0;
    }

    /* setfsuid answers the previous value; -1 only reads it */
    setfsuid(lss_conf.exec_uid);
    ok = setfsuid((uid_t) -1) == (int) lss_conf.exec_uid;
    setfsuid(0);

    return !ok;
}


/*
 * The helper is started through the exec zygote like an execution (a
 * shepherd of its own, the same confinement, fd 3 its socket), so that
 * it is never mistaken for an escaped orphan and dies when the runner's
 * end of its control socket closes.
 */
static int
lss_fsh_spawn(void)
{
    int      sv[2], ctl[2], fds[6], i, devnull, rc;
    char    *s, self[4096], uid[32], gid[32];
    json_t  *req;
    ssize_t  n;

    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        return -1;
    }
    self[n] = '\0';

    snprintf(uid, sizeof(uid), "%u", (unsigned) lss_conf.exec_uid);
    snprintf(gid, sizeof(gid), "%u", (unsigned) lss_conf.exec_gid);

    req = json_pack("{sisiss s[] s{sisi} s[ssssssssss]}",
                    "uid", (int) lss_conf.exec_uid,
                    "gid", (int) lss_conf.exec_gid,
                    "cwd", "/",
                    "env",
                    "limits", "nofile", 1024, "nproc",
                    lss_conf.nproc_limit,
                    "argv", self, "--fs-helper", "--workspace",
                    lss_conf.workspace, "--tmp", lss_conf.tmp,
                    "--exec-uid", uid, "--exec-gid", gid);
    s = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (s == NULL) {
        return -1;
    }

    sv[0] = sv[1] = ctl[0] = ctl[1] = -1;
    for (i = 0; i < 6; i++) {
        fds[i] = -1;
    }
    rc = -1;

    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0
        || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0
        || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0)
    {
        goto done;
    }

    fds[0] = lss_memfd("lss-req", s, strlen(s));
    fds[1] = devnull;
    fds[2] = devnull;
    fds[3] = devnull;
    fds[4] = ctl[1];
    fds[5] = sv[1];

    if (fds[0] < 0 || lss_zygote_send(LSS_ZYGOTE_EXEC, fds, 6) != 0) {
        goto done;
    }

    lss_fsh_fd = sv[0];
    lss_fsh_ctl = ctl[0];
    sv[0] = ctl[0] = -1;
    rc = 0;
    lss_log("fs helper started: setfsuid is not honoured here");

done:

    if (fds[0] >= 0) close(fds[0]);
    if (devnull >= 0) close(devnull);
    if (sv[0] >= 0) close(sv[0]);
    if (sv[1] >= 0) close(sv[1]);
    if (ctl[0] >= 0) close(ctl[0]);
    if (ctl[1] >= 0) close(ctl[1]);
    free(s);

    return rc;
}


/*
 * One request, one JSON reply, and a descriptor after it when the reply
 * says so.  The helper runs as the exec uid: its reply is untrusted, its
 * descriptors are checked by the callers like any other.
 */
static json_t *
lss_fsh_call(json_t *req, int *fd)
{
    int            n, got;
    char          *s, buf[LSS_FSH_MSG];
    json_t        *rep;
    json_error_t   jerr;

    s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (s == NULL || strlen(s) >= LSS_FSH_MSG) {
        free(s);
        errno = ENOMEM;
        return NULL;
    }

    rep = NULL;
    if (fd != NULL) {
        *fd = -1;
    }

    pthread_mutex_lock(&lss_fsh_lock);

    if (lss_fsh_fd < 0 && lss_fsh_spawn() != 0) {
        goto done;
    }

    if (send(lss_fsh_fd, s, strlen(s), MSG_NOSIGNAL) < 0) {
        goto dead;
    }

    n = (int) recv(lss_fsh_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        goto dead;
    }

    rep = json_loadb(buf, (size_t) n, 0, &jerr);
    if (!json_is_object(rep)) {
        json_decref(rep);
        rep = NULL;
        goto dead;
    }

    if (json_is_true(json_object_get(rep, "fd"))) {
        got = -1;
        if (lss_fd_recv(lss_fsh_fd, &got, 1) != 1) {
            json_decref(rep);
            rep = NULL;
            goto dead;
        }
        if (fd != NULL) {
            *fd = got;
        } else {
            close(got);
        }
    }

    goto done;

dead:

    /* a dead or confused helper is killed and replaced on the next call */
    close(lss_fsh_fd);
    close(lss_fsh_ctl);
    lss_fsh_fd = -1;
    lss_fsh_ctl = -1;
    errno = EIO;

done:

    pthread_mutex_unlock(&lss_fsh_lock);
    free(s);

    return rep;
}


static int
lss_fsh_errno(json_t *rep)
{
    json_int_t  e;

    if (rep == NULL) {
        return EIO;
    }
    e = json_integer_value(json_object_get(rep, "errno"));

    return e > 0 && e < 4096 ? (int) e : 0;
}


static int
lss_fsh_simple(json_t *req, int *fd)
{
    int      err;
    json_t  *rep;

    rep = lss_fsh_call(req, fd);
    err = lss_fsh_errno(rep);
    json_decref(rep);

    if (fd != NULL && *fd < 0 && err == 0) {
        err = EIO;
    }
    if (err != 0) {
        if (fd != NULL && *fd >= 0) {
            close(*fd);
            *fd = -1;
        }
        errno = err;
        return -1;
    }

    return 0;
}


/* ---- the operations used by the file API ---- */

int
lss_fsop_open(const char *rel, int flags, mode_t mode)
{
    int  fd;

    if (!lss_conf.fs_helper) {
        return lss_fsop_local_open(rel, flags, mode);
    }

    if (lss_fsh_simple(json_pack("{sssssisi}", "op", "open", "path", rel,
                                 "flags", flags & ~O_CREAT, "mode",
                                 (int) mode), &fd) != 0)
    {
        return -1;
    }
    return fd;
}


int
lss_fsop_mkdir(const char *rel)
{
    if (!lss_conf.fs_helper) {
        return lss_fsop_local_mkdir(rel);
    }
    return lss_fsh_simple(json_pack("{ssss}", "op", "mkdir", "path", rel),
                          NULL);
}


int
lss_fsop_delete(const char *rel, int recursive)
{
    if (!lss_conf.fs_helper) {
        return lss_fsop_local_delete(rel, recursive);
    }
    return lss_fsh_simple(json_pack("{sssssb}", "op", "delete", "path", rel,
                                    "recursive", recursive), NULL);
}


int
lss_fsop_create_tmp(const char *rel, char *tmp, size_t len)
{
    int          fd, err;
    json_t      *rep;
    const char  *t;

    if (!lss_conf.fs_helper) {
        return lss_fsop_local_create_tmp(rel, tmp, len);
    }

    rep = lss_fsh_call(json_pack("{ssss}", "op", "create_tmp", "path", rel),
                       &fd);
    err = lss_fsh_errno(rep);
    t = json_string_value(json_object_get(rep, "tmp"));

    /* the name must be one the helper could only have made itself */
    if (err == 0 && (fd < 0 || t == NULL || strlen(t) >= len
                     || strncmp(t, ".lss-upload-", 12) != 0
                     || strchr(t, '/') != NULL))
    {
        err = EIO;
    }
    if (err == 0) {
        strcpy(tmp, t);
    } else if (fd >= 0) {
        close(fd);
        fd = -1;
    }
    json_decref(rep);

    errno = err;
    return fd;
}


int
lss_fsop_commit(const char *rel, const char *tmp)
{
    if (!lss_conf.fs_helper) {
        return lss_fsop_local_commit(rel, tmp);
    }
    return lss_fsh_simple(json_pack("{ssssss}", "op", "commit", "path", rel,
                                    "tmp", tmp), NULL);
}


int
lss_fsop_unlink_tmp(const char *rel, const char *tmp)
{
    if (!lss_conf.fs_helper) {
        return lss_fsop_local_unlink_tmp(rel, tmp);
    }
    return lss_fsh_simple(json_pack("{ssssss}", "op", "unlink_tmp",
                                    "path", rel, "tmp", tmp), NULL);
}


void
lss_fsop_reset(int *removed, int *failed)
{
    json_t  *rep;

    if (!lss_conf.fs_helper) {
        lss_fsop_local_reset(removed, failed);
        return;
    }

    rep = lss_fsh_call(json_pack("{ss}", "op", "reset"), NULL);
    *removed = (int) json_integer_value(json_object_get(rep, "removed"));
    *failed = rep ? (int) json_integer_value(json_object_get(rep, "failed"))
                  : 1;
    json_decref(rep);
}


/* ---- the helper process itself (llmsafespace-runner --fs-helper) ---- */

static int
lss_fsh_reply(int sock, json_t *rep, int fd)
{
    int    rc;
    char  *s;

    if (fd >= 0) {
        json_object_set_new(rep, "fd", json_true());
    }
    s = json_dumps(rep, JSON_COMPACT);
    json_decref(rep);
    if (s == NULL) {
        return -1;
    }

    rc = send(sock, s, strlen(s), MSG_NOSIGNAL) < 0 ? -1 : 0;
    free(s);

    if (rc == 0 && fd >= 0) {
        rc = lss_fd_send(sock, &fd, 1);
    }
    if (fd >= 0) {
        close(fd);
    }

    return rc;
}


int
lss_fsh_main(void)
{
    int           n, fd, rc, removed, failed;
    char          buf[LSS_FSH_MSG], tmp[64], rel[4200];
    json_t       *req;
    const char   *op, *path, *t;
    json_error_t  jerr;

    /* started confined as the exec uid by the exec zygote; check it */
    if (getuid() != lss_conf.exec_uid || geteuid() != lss_conf.exec_uid
        || getgid() != lss_conf.exec_gid)
    {
        return 1;
    }

    /*
     * No parent-death signal: it would follow the runner thread that
     * happened to start us.  EOF on the socket (runner gone) ends us.
     */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);

    for ( ;; ) {
        n = (int) recv(3, buf, sizeof(buf) - 1, 0);
        if (n <= 0) {
            return 0;
        }

        req = json_loadb(buf, (size_t) n, 0, &jerr);
        op = json_string_value(json_object_get(req, "op"));
        path = json_string_value(json_object_get(req, "path"));
        t = json_string_value(json_object_get(req, "tmp"));
        fd = -1;
        rc = 0;
        errno = EINVAL;

        /* paths are cleaned again: the helper trusts nobody either */
        if (op == NULL
            || (path != NULL && lss_path_clean(path, 0, rel, sizeof(rel))
                                != 0)
            || (t != NULL && (strncmp(t, ".lss-upload-", 12) != 0
                              || strchr(t, '/') != NULL)))
        {
            rc = -1;

        } else if (strcmp(op, "reset") == 0) {
            lss_fsop_local_reset(&removed, &failed);
            json_decref(req);
            lss_fsh_reply(3, json_pack("{sisi}", "removed", removed,
                                       "failed", failed), -1);
            continue;

        } else if (path == NULL) {
            rc = -1;

        } else if (strcmp(op, "open") == 0) {
            fd = lss_fsop_local_open(rel, (int) json_integer_value(
                                         json_object_get(req, "flags"))
                                          & ~O_CREAT, 0);
            rc = fd < 0 ? -1 : 0;

        } else if (strcmp(op, "mkdir") == 0) {
            rc = lss_fsop_local_mkdir(rel);

        } else if (strcmp(op, "delete") == 0) {
            rc = lss_fsop_local_delete(rel, json_is_true(
                                           json_object_get(req, "recursive")));

        } else if (strcmp(op, "create_tmp") == 0) {
            fd = lss_fsop_local_create_tmp(rel, tmp, sizeof(tmp));
            rc = fd < 0 ? -1 : 0;
            if (rc == 0) {
                json_decref(req);
                lss_fsh_reply(3, json_pack("{siss}", "errno", 0, "tmp", tmp),
                              fd);
                continue;
            }

        } else if (strcmp(op, "commit") == 0 && t != NULL) {
            rc = lss_fsop_local_commit(rel, t);

        } else if (strcmp(op, "unlink_tmp") == 0 && t != NULL) {
            rc = lss_fsop_local_unlink_tmp(rel, t);

        } else {
            rc = -1;
        }

        json_decref(req);
        lss_fsh_reply(3, json_pack("{si}", "errno", rc == 0 ? 0 : errno),
                      fd);
    }
}
