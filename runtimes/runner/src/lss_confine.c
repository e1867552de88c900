/*
 * Confinement of one worker, run in the forked worker as root before any
 * code of the execution: own session, no_new_privs and a seccomp filter
 * (while the worker is idle), then stdio on the execution's pipes, no
 * inherited descriptors, rlimits, the exec uid/gid with no supplementary
 * groups and the parent-death signal (once the request is there).  The
 * same C runs for Python workers (after a fork of the zygote) and for
 * exec'd programs, so there is one place to audit.
 */

#include "lss_zygote.h"
#include "lss_proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/close_range.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <seccomp.h>
#include <sched.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>


static int lss_seccomp_build(void);
static int lss_close_from(int lowfd);

/* built once in the zygote; a worker only installs it */
static struct sock_fprog  lss_seccomp_prog;

/* a step of lss_confine_early() that failed, told on the request */
static const char  *lss_early_error;
static int          lss_early_errno;
static int lss_rlimit(int res, json_t *lim, const char *key);


void
lss_die(const char *what)
{
    char  buf[256];
    int   n;

    n = snprintf(buf, sizeof(buf), "llmsafespace: %s: %s\n", what,
                 strerror(errno));
    if (n > 0) {
        (void) !write(2, buf, (size_t) n);
    }
    _exit(126);
}


/*
 * The part of the confinement that does not depend on the request, done
 * by the idle worker before a request arrives so that it costs nothing
 * on an execution's path (loading the seccomp filter alone is about a
 * tenth of a millisecond: the kernel converts and JIT-compiles it).
 * Nothing of an execution exists in the process yet, and the filter only
 * denies what the rest of the confinement never calls (it allows setsid,
 * setrlimit, setresuid, chdir...), so the order changes nothing about
 * the state in which executed code starts.
 */
void
lss_confine_early(void)
{
    int       sig;
    sigset_t  all;

    /* the zygote blocks SIGCHLD and may ignore others: start clean */
    for (sig = 1; sig < NSIG; sig++) {
        signal(sig, SIG_DFL);
    }
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);

    /*
     * Own session and process group, no controlling terminal (TIOCSTI);
     * no_new_privs, which is what lets a process without CAP_SYS_ADMIN
     * install the filter.
     */
    if (setsid() < 0) {
        lss_early_error = "setsid";

    } else if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        lss_early_error = "no_new_privs";

    } else if ((lss_seccomp_prog.filter == NULL && lss_seccomp_build() != 0)
               || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                        &lss_seccomp_prog, 0, 0) != 0)
    {
        lss_early_error = "seccomp";
    }

    /*
     * A failure ends the execution this worker is given, with the reason
     * on its stderr (there is none yet): it never runs unconfined code.
     */
    lss_early_errno = errno;
}


/* the rest, once the request is known; lss_confine_early() came first */
int
lss_confine(json_t *req, int *fds)
{
    int          extra, src[4], i, n;
    uid_t        uid;
    gid_t        gid;
    json_t      *lim;
    const char  *cwd;

    /*
     * Move the sources out of the way first (a source may already sit on
     * 0-3, where dup2 would be a no-op keeping FD_CLOEXEC, or be
     * overwritten by an earlier dup2), then place them; dup2 leaves the
     * targets without FD_CLOEXEC.
     */
    src[0] = fds[LSS_FD_STDIN];
    src[1] = fds[LSS_FD_STDOUT];
    src[2] = fds[LSS_FD_STDERR];
    src[3] = fds[LSS_FD_EXTRA];
    n = src[3] >= 0 ? 4 : 3;

    for (i = 0; i < n; i++) {
        src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 10);
        if (src[i] < 0) {
            lss_die("dup");
        }
    }
    for (i = 0; i < n; i++) {
        if (dup2(src[i], i) < 0) {
            lss_die("dup2");
        }
    }
    extra = n;

    if (lss_early_error != NULL) {
        errno = lss_early_errno;
        lss_die(lss_early_error);
    }

    /* nothing of the zygote or the runner may leak (runc CVE-2024-21626) */
    if (syscall(SYS_close_range, extra, ~0U, 0) < 0
        && lss_close_from(extra) != 0)
    {
        lss_die("close_range");
    }

    lim = json_object_get(req, "limits");
    if (lss_rlimit(RLIMIT_CPU, lim, "cpu") != 0
        || lss_rlimit(RLIMIT_DATA, lim, "data") != 0
        || lss_rlimit(RLIMIT_AS, lim, "as") != 0
        || lss_rlimit(RLIMIT_NOFILE, lim, "nofile") != 0
        || lss_rlimit(RLIMIT_NPROC, lim, "nproc") != 0
        || lss_rlimit(RLIMIT_FSIZE, lim, "fsize") != 0
        || lss_rlimit(RLIMIT_CORE, NULL, NULL) != 0)
    {
        lss_die("setrlimit");
    }

    uid = (uid_t) json_integer_value(json_object_get(req, "uid"));
    gid = (gid_t) json_integer_value(json_object_get(req, "gid"));
    if (uid == 0 || gid == 0) {
        errno = EPERM;
        lss_die("refusing to run as root");
    }

    if (setgroups(0, NULL) != 0
        || setresgid(gid, gid, gid) != 0
        || setresuid(uid, uid, uid) != 0)
    {
        lss_die("dropping privileges");
    }

    cwd = json_string_value(json_object_get(req, "cwd"));
    if (cwd != NULL && chdir(cwd) != 0) {
        lss_die("workingDir");
    }

    /* cleared by the credential change above, so set it after */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
        lss_die("pdeathsig");
    }

    return 0;
}


/* the address space mapped now, in bytes (0 when unknown) */
static rlim_t
lss_vm_size(void)
{
    int            fd;
    char           buf[64];
    ssize_t        n;
    unsigned long  pages;

    fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';

    pages = strtoul(buf, NULL, 10);

    return (rlim_t) pages * (rlim_t) sysconf(_SC_PAGESIZE);
}


static int
lss_rlimit(int res, json_t *lim, const char *key)
{
    json_t         *v;
    rlim_t          vm;
    struct rlimit   rl;

    if (lim == NULL) {
        rl.rlim_cur = 0;
        rl.rlim_max = 0;
        return setrlimit(res, &rl);
    }

    v = json_object_get(lim, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0) {
        return 0;
    }

    rl.rlim_cur = (rlim_t) json_integer_value(v);
    rl.rlim_max = rl.rlim_cur;

    if (res == RLIMIT_CPU) {
        /* SIGXCPU first, then SIGKILL a second later */
        rl.rlim_max = rl.rlim_cur + 1;
    }

    if (res == RLIMIT_AS) {
        /*
         * The limit is on new memory: a worker forked from a zygote with
         * big preloads already maps more than --mem-limit, and must still
         * be able to run.
         */
        vm = lss_vm_size();
        if (vm + (64 << 20) > rl.rlim_cur) {
            rl.rlim_cur = vm + (64 << 20);
            rl.rlim_max = rl.rlim_cur;
        }
    }

    return setrlimit(res, &rl);
}


/*
 * A deny list on top of a default-allow policy: the container runtime's
 * own profile is the allow list; this filter removes what executed code
 * must never have even where that profile is absent (host tests, runsc).
 */
int
lss_seccomp_init(void)
{
    return lss_seccomp_build();
}


static int
lss_seccomp_build(void)
{
    int              rc, fd;
    size_t           i;
    off_t            len;
    scmp_filter_ctx  ctx;

    static const int  denied[] = {
        SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv),
        SCMP_SYS(process_vm_writev), SCMP_SYS(mount), SCMP_SYS(umount2),
        SCMP_SYS(pivot_root), SCMP_SYS(unshare), SCMP_SYS(setns),
        SCMP_SYS(keyctl), SCMP_SYS(add_key), SCMP_SYS(request_key),
        SCMP_SYS(bpf), SCMP_SYS(perf_event_open), SCMP_SYS(userfaultfd),
        SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter),
        SCMP_SYS(io_uring_register), SCMP_SYS(kexec_load),
        SCMP_SYS(kexec_file_load), SCMP_SYS(init_module),
        SCMP_SYS(finit_module), SCMP_SYS(delete_module),
        SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at),
        SCMP_SYS(fsopen), SCMP_SYS(fsmount), SCMP_SYS(fsconfig),
        SCMP_SYS(move_mount), SCMP_SYS(open_tree), SCMP_SYS(fspick),
        SCMP_SYS(swapon), SCMP_SYS(swapoff), SCMP_SYS(reboot),
        SCMP_SYS(acct), SCMP_SYS(lookup_dcookie), SCMP_SYS(vhangup),
        SCMP_SYS(personality), SCMP_SYS(kcmp), SCMP_SYS(quotactl),
        SCMP_SYS(pidfd_getfd), SCMP_SYS(mount_setattr),
        SCMP_SYS(chroot)
    };

    ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL) {
        return -1;
    }

    rc = 0;

    for (i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
        rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), denied[i], 0);
    }

    /* glibc falls back to clone(2) on ENOSYS; clone3 flags are in memory */
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);

    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER,
                                   CLONE_NEWUSER));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWNS,
                                   CLONE_NEWNS));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWNET,
                                   CLONE_NEWNET));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                           SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWPID,
                                   CLONE_NEWPID));

    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT),
                           SCMP_SYS(socket), 1,
                           SCMP_A0(SCMP_CMP_EQ, AF_VSOCK));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT),
                           SCMP_SYS(socket), 1,
                           SCMP_A0(SCMP_CMP_EQ, AF_PACKET));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM),
                           SCMP_SYS(socket), 1,
                           SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW));
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT),
                           SCMP_SYS(socketpair), 1,
                           SCMP_A0(SCMP_CMP_EQ, AF_VSOCK));

    /* bubblewrap CVE-2017-5226: no typing into anyone's terminal */
    rc |= seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                           SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu,
                                   TIOCSTI));

    if (rc != 0) {
        seccomp_release(ctx);
        errno = EINVAL;
        return -1;
    }

    /* the BPF program libseccomp generates, kept for every worker */
    rc = -1;
    fd = memfd_create("lss-seccomp", MFD_CLOEXEC);
    if (fd >= 0 && seccomp_export_bpf(ctx, fd) == 0) {
        len = lseek(fd, 0, SEEK_END);
        lss_seccomp_prog.filter = malloc((size_t) len);
        if (len > 0 && lss_seccomp_prog.filter != NULL
            && pread(fd, lss_seccomp_prog.filter, (size_t) len, 0) == len)
        {
            lss_seccomp_prog.len = (unsigned short)
                                   (len / sizeof(struct sock_filter));
            rc = 0;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    seccomp_release(ctx);

    return rc;
}


char **
lss_env_build(json_t *req)
{
    size_t   i, n;
    json_t  *env, *v;
    char   **envp;

    env = json_object_get(req, "env");
    n = json_array_size(env);

    envp = calloc(n + 1, sizeof(char *));
    if (envp == NULL) {
        return NULL;
    }

    json_array_foreach(env, i, v) {
        envp[i] = (char *) json_string_value(v);
    }

    return envp;
}


/* close_range(2) is missing on older gVisor: list /proc/self/fd instead */
static int
lss_close_from(int lowfd)
{
    int             fd, n, i, fds[4096];
    DIR            *d;
    struct dirent  *de;

    for ( ;; ) {
        d = opendir("/proc/self/fd");
        if (d == NULL) {
            return -1;
        }

        n = 0;
        while ((de = readdir(d)) != NULL && n < 4096) {
            fd = atoi(de->d_name);
            if (fd >= lowfd && fd != dirfd(d) && de->d_name[0] != '.') {
                fds[n++] = fd;
            }
        }
        closedir(d);

        for (i = 0; i < n; i++) {
            close(fds[i]);
        }

        if (n < 4096) {
            return 0;
        }
    }
}
