/*
 * Small helpers: time, ids, validation of untrusted strings, Kubernetes
 * style quantities, files, and running a helper program.
 */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lsc.h"


extern char **environ;


int64_t
lsc_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


void
lsc_log(const char *level, const char *fmt, ...)
{
    va_list     ap;
    char        buf[1024];
    int64_t     now;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    now = lsc_now_ms();
    fprintf(stderr, "%lld.%03lld [%s] controller: %s\n",
            (long long) (now / 1000), (long long) (now % 1000), level, buf);
}


/* sb- and 20 lowercase hex digits: 80 random bits, unguessable */
int
lsc_random_id(char *buf, size_t len)
{
    unsigned char  r[10];
    size_t         i;

    if (len < sizeof(LSC_ID_PREFIX) + 2 * sizeof(r)) {
        return -1;
    }
    if (getrandom(r, sizeof(r), 0) != (ssize_t) sizeof(r)) {
        return -1;
    }
    memcpy(buf, LSC_ID_PREFIX, sizeof(LSC_ID_PREFIX) - 1);
    for (i = 0; i < sizeof(r); i++) {
        sprintf(buf + sizeof(LSC_ID_PREFIX) - 1 + 2 * i, "%02x", r[i]);
    }
    return 0;
}


/* the id becomes a path component, a key and a container id: whitelist */
int
lsc_valid_id(const char *id)
{
    size_t  i, n;

    if (id == NULL || strncmp(id, LSC_ID_PREFIX, 3) != 0) {
        return 0;
    }
    n = strlen(id);
    if (n < 11 || n > 43) {
        return 0;
    }
    for (i = 3; i < n; i++) {
        if (!(islower((unsigned char) id[i])
              || isdigit((unsigned char) id[i])))
        {
            return 0;
        }
    }
    return 1;
}


/* names of pools, runtimes, scripts: [a-z0-9._:-], bounded */
int
lsc_valid_name(const char *s, size_t max)
{
    size_t  i, n;

    if (s == NULL) {
        return 0;
    }
    n = strlen(s);
    if (n == 0 || n >= max) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!(isalnum((unsigned char) s[i]) || s[i] == '-' || s[i] == '_'
              || s[i] == '.' || s[i] == ':'))
        {
            return 0;
        }
    }
    return 1;
}


int
lsc_valid_owner(const char *s)
{
    size_t  i, n;

    if (s == NULL) {
        return 0;
    }
    n = strlen(s);
    if (n == 0 || n >= LSC_OWNER_LEN) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!isgraph((unsigned char) s[i])) {
            return 0;
        }
    }
    return 1;
}


/*
 * "512Mi", "1G", "268435456", or a JSON integer; clamped to [lo, hi].
 * Anything else gives the default: a client's quantity never fails the
 * controller, it is only bounded.
 */
int64_t
lsc_parse_memory(json_t *v, int64_t def, int64_t lo, int64_t hi)
{
    const char  *s;
    char        *end;
    double       d, mul;

    if (json_is_integer(v)) {
        d = (double) json_integer_value(v);

    } else if (json_is_string(v)) {
        s = json_string_value(v);
        errno = 0;
        d = strtod(s, &end);
        if (errno != 0 || end == s || !isfinite(d) || d < 0) {
            return def;
        }
        mul = 1;
        if (strcmp(end, "Ki") == 0) { mul = 1024.0; }
        else if (strcmp(end, "Mi") == 0) { mul = 1048576.0; }
        else if (strcmp(end, "Gi") == 0) { mul = 1073741824.0; }
        else if (strcmp(end, "K") == 0 || strcmp(end, "k") == 0) {
            mul = 1e3;
        }
        else if (strcmp(end, "M") == 0) { mul = 1e6; }
        else if (strcmp(end, "G") == 0) { mul = 1e9; }
        else if (*end != '\0') { return def; }
        d *= mul;

    } else {
        return def;
    }

    if (d < (double) lo) {
        return lo;
    }
    if (d > (double) hi) {
        return hi;
    }
    return (int64_t) d;
}


/* "500m", "1", "1.5", or a JSON number of cpus; clamped */
double
lsc_parse_cpu(json_t *v, double def, double lo, double hi)
{
    const char  *s;
    char        *end;
    double       d;

    if (json_is_number(v)) {
        d = json_number_value(v);

    } else if (json_is_string(v)) {
        s = json_string_value(v);
        errno = 0;
        d = strtod(s, &end);
        if (errno != 0 || end == s || !isfinite(d)) {
            return def;
        }
        if (strcmp(end, "m") == 0) {
            d /= 1000.0;
        } else if (*end != '\0') {
            return def;
        }

    } else {
        return def;
    }

    if (!isfinite(d) || d < lo) {
        return lo;
    }
    return d > hi ? hi : d;
}


char *
lsc_read_file(const char *path, size_t max)
{
    int       fd;
    char     *buf;
    size_t    len;
    ssize_t   n;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return NULL;
    }
    buf = malloc(max + 1);
    if (buf == NULL) {
        close(fd);
        return NULL;
    }
    len = 0;
    while (len < max) {
        n = read(fd, buf + len, max - len);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        len += n;
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}


static int
lsc_rmtree_one(const char *path, const struct stat *st, int flag,
    struct FTW *ftw)
{
    (void) st;
    (void) ftw;

    if (flag == FTW_DP) {
        rmdir(path);
    } else {
        unlink(path);
    }
    return 0;
}


/*
 * Removes a directory tree the controller created under its state dir.
 * FTW_PHYS: a symlink planted inside (the run dir is writable by the
 * sandbox's runner) is unlinked, never followed; FTW_MOUNT: never crosses
 * into a mount.
 */
int
lsc_rmtree(const char *path)
{
    if (nftw(path, lsc_rmtree_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT)
        == -1 && errno != ENOENT)
    {
        return -1;
    }
    return 0;
}


/*
 * Runs a helper (runc, runsc, mkbundle) and waits for it.  With `out`,
 * its stdout is collected (up to max bytes); its stderr goes to errlog
 * (appended) or to ours.
 * posix_spawn: no shell, argv passed as is.
 */
int
lsc_spawn(char *const argv[], char **out, size_t max, const char *errlog)
{
    posix_spawn_file_actions_t   fa;
    int                          p[2], status, rc;
    pid_t                        pid;
    char                        *buf;
    size_t                       len;
    ssize_t                      n;

    buf = NULL;
    p[0] = p[1] = -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);

    /*
     * A detached container runtime (runsc's sandbox, runc's shim-less
     * init) keeps what it inherits: give it a file, never our stderr,
     * so whoever reads the controller's output sees it end with us.
     */
    if (errlog != NULL) {
        posix_spawn_file_actions_addopen(&fa, 2, errlog,
                                         O_WRONLY | O_CREAT | O_APPEND,
                                         0600);
    }

    if (out != NULL) {
        if (pipe2(p, O_CLOEXEC) == -1) {
            posix_spawn_file_actions_destroy(&fa);
            return -1;
        }
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    }

    rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (out != NULL) {
        close(p[1]);
    }
    if (rc != 0) {
        if (out != NULL) {
            close(p[0]);
        }
        lsc_log("error", "spawn %s: %s", argv[0], strerror(rc));
        return -1;
    }

    if (out != NULL) {
        buf = malloc(max + 1);
        len = 0;
        for ( ;; ) {
            if (buf == NULL || len == max) {
                char  sink[4096];

                n = read(p[0], sink, sizeof(sink));
            } else {
                n = read(p[0], buf + len, max - len);
                if (n > 0) {
                    len += n;
                }
            }
            if (n == -1 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                break;
            }
        }
        close(p[0]);
        if (buf != NULL) {
            buf[len] = '\0';
        }
        *out = buf;
    }

    while (waitpid(pid, &status, 0) == -1) {
        if (errno != EINTR) {
            return -1;
        }
    }

    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}
