/*
 * The memory guard: ends the running executions when the sandbox as a
 * whole reaches its memory budget (--mem-guard BYTES).
 *
 * Why: under gVisor every byte the sandbox's processes use is memory of
 * the Sentry on the host, so when the host's memory cgroup fills, the
 * host's OOM killer can only kill the Sentry (or a ptrace stub, after
 * which the Sentry kills itself): the whole sandbox dies.  The Sentry
 * enforces no aggregate memory limit of its own (its memory cgroup only
 * reports usage), per-process RLIMIT_AS does not bound a few processes
 * together, and RLIMIT_NPROC does not bound what each process holds.  So
 * the runner watches the Sentry's own accounting (/proc/meminfo) while
 * executions run and ends them before the host limit, which the bundle
 * sets above the budget (runtimes/oci/mkbundle), is reached.  Under runc
 * the kernel's OOM killer kills single processes of the container and
 * the guard is not needed.
 *
 * It polls only while an execution runs, so an idle sandbox costs no
 * wakeup.
 */

#include "lss_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define LSS_GUARD_PERIOD_MS  5
#define LSS_GUARD_KILL_MS    50
#define LSS_GUARD_ADMIT_MS   3000
/* the first poll once something runs: most executions are over by then,
 * and at the fastest allocation measured here (~1 GiB/s) this is a few
 * tens of MiB of the host's headroom */
#define LSS_GUARD_FIRST_MS   20


static pthread_mutex_t  lss_guard_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t   lss_guard_cond = PTHREAD_COND_INITIALIZER;
static int              lss_guard_running;
static int              lss_guard_fd = -1;
static int              lss_killer_fd = -1;
static int64_t          lss_guard_killed_ms;
static int            (*lss_guard_end_all)(lss_end_t why);


/* a "Name:   N kB" value of /proc/meminfo, in bytes; -1 when absent */
static int64_t
lss_meminfo_field(const char *buf, const char *name)
{
    const char  *p;
    char        *end;
    long long    kb;
    size_t       n;

    n = strlen(name);
    for (p = buf; p != NULL && *p != '\0'; p = strchr(p, '\n')) {
        if (*p == '\n') {
            p++;
        }
        if (strncmp(p, name, n) == 0 && p[n] == ':') {
            kb = strtoll(p + n + 1, &end, 10);
            if (end == p + n + 1 || kb < 0) {
                return -1;
            }
            return (int64_t) kb * 1024;
        }
    }
    return -1;
}


/* memory in use in the sandbox, in bytes; -1 when unknown */
static int64_t
lss_guard_used(void)
{
    char     buf[4096];
    ssize_t  n;
    int64_t  total, avail;

    n = pread(lss_guard_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    total = lss_meminfo_field(buf, "MemTotal");
    avail = lss_meminfo_field(buf, "MemAvailable");
    if (avail < 0) {
        avail = lss_meminfo_field(buf, "MemFree");
    }
    if (total < 0 || avail < 0 || avail > total) {
        return -1;
    }
    return total - avail;
}


/*
 * The killer: a child of the runner, forked ahead of time, that waits on
 * a pipe and, once written to, becomes the sandbox user and kills every
 * process of that user at once.  The executions' own kill (each
 * shepherd walks its tree) is too slow against a fork bomb, which
 * outgrows the headroom meanwhile, and so is a fork at that moment (the
 * bomb's forks hold the Sentry's task lock).  Not a thread of the runner
 * with the user's ids: a process of that user could signal such a
 * thread.  The killer stays root until the kill, is not dumpable (a fork
 * of the runner), and exits right after.  Processes the executions' own
 * kill has not reached include idle contexts, which are lost with the
 * rest (docs/runner.md).
 */
static int
lss_killer_spawn(void)
{
    int      p[2], i;
    char     c;
    pid_t    pid, parent;
    ssize_t  n;

    if (pipe2(p, O_CLOEXEC) != 0) {
        return -1;
    }

    parent = getpid();
    pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }

    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != parent) {
            _exit(0);
        }
        /* nothing of the runner's stays open but the pipe (best effort:
         * the kernel may lack close_range) */
        close(p[1]);
        if (dup2(p[0], 3) == 3) {
            (void) syscall(SYS_close_range, 4, ~0U, 0);
            p[0] = 3;
        }
        do {
            n = read(p[0], &c, 1);
        } while (n < 0 && errno == EINTR);
        if (n != 1) {
            _exit(0);
        }
        /* raw calls: nothing of the C library's thread state is used */
        if (syscall(SYS_setresgid, lss_conf.exec_gid, lss_conf.exec_gid,
                    lss_conf.exec_gid) == 0
            && syscall(SYS_setresuid, lss_conf.exec_uid, lss_conf.exec_uid,
                       lss_conf.exec_uid) == 0)
        {
            /* a fork racing one call may escape it, not many */
            for (i = 0; i < 64 && kill(-1, SIGKILL) == 0; i++) {
                /* again */
            }
        }
        _exit(0);
    }

    close(p[0]);
    lss_killer_fd = p[1];
    return 0;
}


/* after a failed fork, again a second later at the soonest */
static void
lss_killer_respawn(void)
{
    static int64_t  failed_ms;

    if (failed_ms != 0 && lss_now_ms() - failed_ms < 1000) {
        return;
    }
    failed_ms = 0;
    if (lss_killer_spawn() != 0) {
        failed_ms = lss_now_ms();
        lss_log("memory guard: no killer: %s", strerror(errno));
    }
}


/* the main thread reaps the killer (lss_reap_children) */
static void
lss_killer_fire(void)
{
    if (lss_killer_fd < 0 && lss_killer_spawn() != 0) {
        lss_log("memory guard: no killer: %s", strerror(errno));
        return;
    }
    (void) !write(lss_killer_fd, "k", 1);
    close(lss_killer_fd);
    lss_killer_fd = -1;
}


static void *
lss_guard_thread(void *arg)
{
    struct timespec  ts, first;
    int64_t          used, now, last_kill, last_log;
    int              ended, waited;

    (void) arg;
    last_kill = 0;
    last_log = 0;
    ts.tv_sec = 0;
    ts.tv_nsec = LSS_GUARD_PERIOD_MS * 1000000L;
    first.tv_sec = 0;
    first.tv_nsec = LSS_GUARD_FIRST_MS * 1000000L;

    for ( ;; ) {
        waited = 0;
        pthread_mutex_lock(&lss_guard_lock);
        while (lss_guard_running == 0) {
            /* the next killer, while nothing runs (once per wait: a
             * fork that fails is not retried in a loop) */
            if (lss_killer_fd < 0 && !waited) {
                waited = 1;
                pthread_mutex_unlock(&lss_guard_lock);
                lss_killer_respawn();
                pthread_mutex_lock(&lss_guard_lock);
                continue;
            }
            waited = 1;
            pthread_cond_wait(&lss_guard_cond, &lss_guard_lock);
        }
        pthread_mutex_unlock(&lss_guard_lock);

        /* a poll is a few system calls under gVisor: a short execution
         * need not pay for any */
        if (waited) {
            nanosleep(&first, NULL);
        }

        used = lss_guard_used();
        now = lss_now_ms();

        /* freed memory shows after a while: one kill per period */
        if (used >= 0 && (uint64_t) used >= lss_conf.mem_guard
            && now - last_kill >= LSS_GUARD_KILL_MS)
        {
            last_kill = now;
            pthread_mutex_lock(&lss_guard_lock);
            lss_guard_killed_ms = now;
            pthread_mutex_unlock(&lss_guard_lock);
            ended = lss_guard_end_all(LSS_END_MEMORY);
            lss_killer_fire();

            if (now - last_log >= 1000) {
                last_log = now;
                lss_log("memory guard: %lld bytes in use, budget %llu: "
                        "%d execution(s) ended", (long long) used,
                        (unsigned long long) lss_conf.mem_guard, ended);
            }
        }

        /* the next killer, once this emergency is over */
        if (lss_killer_fd < 0 && now - last_kill >= LSS_GUARD_KILL_MS) {
            lss_killer_respawn();
        }

        nanosleep(&ts, NULL);
    }

    return NULL;
}


/*
 * Before an execution starts: right after a kill the Sentry shows the
 * freed memory only gradually (it releases pages in the background), and
 * an execution started meanwhile would be ended at once for memory it
 * never used.  So it waits (at most LSS_GUARD_ADMIT_MS) until the
 * sandbox is below its budget again; past that the sandbox is full of
 * something else (files in its tmpfs mounts) and the guard decides.
 */
void
lss_memguard_admit(void)
{
    int              i;
    int64_t          killed, used;
    struct timespec  ts;

    if (lss_guard_fd < 0) {
        return;
    }

    ts.tv_sec = 0;
    ts.tv_nsec = 10 * 1000000L;

    for (i = 0; i < LSS_GUARD_ADMIT_MS / 10; i++) {
        pthread_mutex_lock(&lss_guard_lock);
        killed = lss_guard_killed_ms;
        pthread_mutex_unlock(&lss_guard_lock);

        if (killed == 0 || lss_now_ms() - killed > LSS_GUARD_ADMIT_MS) {
            return;
        }
        used = lss_guard_used();
        if (used >= 0 && (uint64_t) used < lss_conf.mem_guard) {
            return;
        }
        nanosleep(&ts, NULL);
    }
}


/* called with the number of executions running, whenever it changes */
void
lss_memguard_running(int n)
{
    if (lss_guard_fd < 0) {
        return;
    }
    pthread_mutex_lock(&lss_guard_lock);
    lss_guard_running = n;
    if (n > 0) {
        pthread_cond_signal(&lss_guard_cond);
    }
    pthread_mutex_unlock(&lss_guard_lock);
}


int
lss_memguard_start(int (*end_all)(lss_end_t why))
{
    pthread_t  t;

    if (lss_conf.mem_guard == 0) {
        return 0;
    }

    lss_guard_end_all = end_all;
    lss_guard_fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (lss_guard_fd < 0 || lss_guard_used() < 0) {
        lss_log("memory guard: /proc/meminfo unusable: %s",
                strerror(errno));
        return -1;
    }

    if (lss_killer_spawn() != 0) {
        lss_log("memory guard: no killer: %s", strerror(errno));
        return -1;
    }

    if (pthread_create(&t, NULL, lss_guard_thread, NULL) != 0) {
        lss_log("memory guard: pthread_create failed");
        return -1;
    }
    pthread_detach(t);

    lss_log("memory guard: executions end at %llu bytes in use",
            (unsigned long long) lss_conf.mem_guard);
    return 0;
}
