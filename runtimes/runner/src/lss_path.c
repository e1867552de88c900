/*
 * Paths from clients, made into clean workspace-relative paths, and every
 * file operation made relative to the workspace directory fd with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS):
 * a symlink planted by executed code (Judge0 CVE-2024-28185) or swapped
 * in between check and use is never followed.  The calling thread takes
 * the exec uid's fs identity (setfsuid is per thread) so that the runner
 * never writes into sandbox-writable places as root.
 */

#include "lss_runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define LSS_PATH_MAX  4096
#define LSS_NAME_MAX  255


static int
lss_hex(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}


/*
 * Returns 0 and a relative path ("." for the workspace itself) or -1 for
 * anything refused: NUL, backslash, "..", bad escapes, too long, not
 * UTF-8 (names go into JSON answers, which jansson refuses to build from
 * an overlong "%C0%AE": that was a 500 after the file was made).  A
 * leading "/" or the workspace prefix both mean the workspace root.
 */
int
lss_path_clean(const char *raw, int decode, char *out, size_t outlen)
{
    int          h, l;
    char        *dec, *p, *comp, *save;
    json_t      *v;
    size_t       i, o, wlen, clen, rawlen;
    const char  *src;

    rawlen = strlen(raw);
    if (rawlen > LSS_PATH_MAX * 3) {
        return -1;
    }

    dec = malloc(rawlen + 1);
    if (dec == NULL) {
        return -1;
    }

    o = 0;
    for (i = 0; i < rawlen; i++) {
        if (decode && raw[i] == '%') {
            if (i + 2 >= rawlen) {
                free(dec);
                return -1;
            }
            h = lss_hex(raw[i + 1]);
            l = lss_hex(raw[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0)) {
                free(dec);
                return -1;
            }
            dec[o++] = (char) (h * 16 + l);
            i += 2;
            continue;
        }
        dec[o++] = raw[i];
    }
    dec[o] = '\0';

    if (o > LSS_PATH_MAX || strchr(dec, '\\') != NULL) {
        free(dec);
        return -1;
    }

    /* jansson's own check, the one every answer goes through */
    v = json_stringn(dec, o);
    if (v == NULL) {
        free(dec);
        return -1;
    }
    json_decref(v);

    src = dec;
    wlen = strlen(lss_conf.workspace);
    if (strncmp(src, lss_conf.workspace, wlen) == 0
        && (src[wlen] == '/' || src[wlen] == '\0'))
    {
        src += wlen;
    }

    o = 0;
    p = (char *) src;
    for (comp = strtok_r(p, "/", &save); comp != NULL;
         comp = strtok_r(NULL, "/", &save))
    {
        clen = strlen(comp);
        if (clen == 0 || strcmp(comp, ".") == 0) {
            continue;
        }
        if (strcmp(comp, "..") == 0 || clen > LSS_NAME_MAX
            || o + clen + 2 > outlen)
        {
            free(dec);
            return -1;
        }
        if (o > 0) {
            out[o++] = '/';
        }
        memcpy(out + o, comp, clen);
        o += clen;
    }

    if (o == 0) {
        out[o++] = '.';
    }
    out[o] = '\0';

    free(dec);
    return 0;
}


/*
 * Without openat2 (gVisor releases before 2023, older kernels) the same
 * guarantee comes from a walk: one openat per component, each with
 * O_NOFOLLOW, below the workspace fd.  lss_path_clean() already refused
 * "..", so the walk cannot climb; a symlink anywhere fails with ELOOP.
 */
static int
lss_openat_nofollow(int dirfd, const char *name, int flags, mode_t mode)
{
    int          fd;
    struct stat  opened, named;

    fd = openat(dirfd, name, flags | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        return -1;
    }

    /*
     * runsc 20221219 follows a symlink opened with O_DIRECTORY despite
     * O_NOFOLLOW.  So the object opened must be the one the name holds
     * now, itself no link: a link swapped in and out around the open
     * would leave a different inode (directories cannot be hard-linked,
     * and a hard-linked file is refused by the callers).
     */
    if (fstat(fd, &opened) != 0
        || fstatat(dirfd, name, &named, AT_SYMLINK_NOFOLLOW) != 0
        || S_ISLNK(named.st_mode)
        || opened.st_dev != named.st_dev || opened.st_ino != named.st_ino)
    {
        close(fd);
        errno = ELOOP;
        return -1;
    }

    return fd;
}


static int
lss_path_walk(const char *rel, int flags, mode_t mode)
{
    int    fd, next, saved;
    char  *copy, *comp, *slash;

    copy = strdup(rel);
    if (copy == NULL) {
        return -1;
    }

    fd = dup(lss_conf.workspace_fd);
    comp = copy;

    while (fd >= 0 && (slash = strchr(comp, '/')) != NULL) {
        *slash = '\0';
        next = lss_openat_nofollow(fd, comp, O_RDONLY | O_DIRECTORY, 0);
        saved = errno;
        close(fd);
        errno = saved;
        fd = next;
        comp = slash + 1;
    }

    if (fd >= 0) {
        next = lss_openat_nofollow(fd, comp, flags, mode);
        saved = errno;
        close(fd);
        errno = saved;
        fd = next;
    }

    free(copy);
    return fd;
}


static int
lss_openat2(const char *rel, int flags, mode_t mode)
{
    struct open_how  how;

    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t) (flags | O_CLOEXEC | O_NOFOLLOW);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
                  | RESOLVE_NO_MAGICLINKS;

    return (int) syscall(SYS_openat2, lss_conf.workspace_fd, rel, &how,
                         sizeof(how));
}


/*
 * Whether openat2 works here is found by opening the workspace itself
 * with it, which must succeed wherever openat2 is real.  ENOSYS alone is
 * not enough: runsc 20221219 with --oci-seccomp answers EPERM (its
 * filter does not know the syscall), which would refuse every file
 * operation.  Any failure of the probe selects the walk.
 */
static int
lss_openat2_usable(void)
{
    int  fd;

    if (getenv("LLMSAFESPACE_RUNNER_NO_OPENAT2") != NULL) {
        return 0;
    }

    fd = lss_openat2(".", O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) {
        return 0;
    }
    close(fd);

    return 1;
}


int
lss_path_open(const char *rel, int flags, mode_t mode)
{
    static int  usable = -1;

    /* a race between first callers only computes the same answer twice */
    if (usable < 0) {
        usable = lss_openat2_usable();
    }

    if (usable) {
        return lss_openat2(rel, flags, mode);
    }

    return lss_path_walk(rel, flags, (flags & O_CREAT) ? mode : 0);
}


/* the directory that holds rel's last component; *name points at it */
int
lss_path_parent(const char *rel, const char **name)
{
    int    fd;
    char  *dir, *slash;

    if (strcmp(rel, ".") == 0) {
        errno = EINVAL;
        return -1;
    }

    slash = strrchr(rel, '/');
    if (slash == NULL) {
        *name = rel;
        return lss_path_open(".", O_RDONLY | O_DIRECTORY, 0);
    }

    dir = strndup(rel, (size_t) (slash - rel));
    if (dir == NULL) {
        return -1;
    }
    fd = lss_path_open(dir, O_RDONLY | O_DIRECTORY, 0);
    free(dir);
    *name = slash + 1;

    return fd;
}


void
lss_fs_enter(void)
{
    setfsgid(lss_conf.exec_gid);
    setfsuid(lss_conf.exec_uid);
}


void
lss_fs_leave(void)
{
    setfsuid(0);
    setfsgid(0);
}


/*
 * Where setfsuid has no effect (some gVisor releases) a file the runner
 * created belongs to root and the executions could not change it.  The
 * fix is by descriptor, on the object just created with O_EXCL or
 * mkdirat: nothing a path could redirect.  Call with root's identity.
 */
void
lss_fs_own(int fd)
{
    struct stat  st;

    if (fstat(fd, &st) == 0
        && (st.st_uid != lss_conf.exec_uid || st.st_gid != lss_conf.exec_gid))
    {
        (void) !fchown(fd, lss_conf.exec_uid, lss_conf.exec_gid);
    }
}


/* remove name below dirfd, never following a link; depth bounded */
int
lss_remove_tree(int dirfd, const char *name, int depth)
{
    int             fd, rc;
    DIR            *d;
    struct stat     st;
    struct dirent  *de;

    if (depth > 256) {
        errno = ELOOP;
        return -1;
    }

    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return -1;
    }

    if (!S_ISDIR(st.st_mode)) {
        return unlinkat(dirfd, name, 0);
    }

    fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW
                             | O_CLOEXEC);
    if (fd < 0) {
        /* swapped for a link meanwhile: remove the link itself */
        return unlinkat(dirfd, name, 0);
    }

    d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return -1;
    }

    rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }
        if (lss_remove_tree(fd, de->d_name, depth + 1) != 0) {
            rc = -1;
        }
    }
    closedir(d);

    if (rc != 0) {
        return -1;
    }

    return unlinkat(dirfd, name, AT_REMOVEDIR);
}
