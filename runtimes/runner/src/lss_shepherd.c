/*
 * The shepherd: a root process forked by the zygote for each execution.
 * It is a child subreaper, so every process the execution creates stays
 * below it whatever it does (double fork, setsid, SIGTERM ignored).  At
 * the end of the execution, or when the runner says so, it kills the
 * whole tree and reaps it before reporting; the runner therefore never
 * sees a completion while a descendant could still write output.
 *
 * No packaged library tracks a process tree without cgroups or pid
 * namespaces, which a runc container does not give to its payload; the
 * /proc walk below is written by hand for that reason.
 */

#include "lss_zygote.h"
#include "lss_proto.h"
#include "lss_fdpass.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define LSS_MAX_PROCS   65536
#define LSS_KILL_ROUNDS 5000


static int lss_kill_descendants(void);
static void lss_kill_orphans(uid_t uid);
static void lss_kill_uid(uid_t uid);
static void lss_kill_group(pid_t pgid);

int    lss_no_subreaper;
pid_t  lss_runner_pid;
static void lss_reap(pid_t worker, int *wstatus, struct rusage *ru,
    int *done);


/*
 * The idle worker: forked ahead of time so that an execution costs no
 * fork on its critical path (a fork of an interpreter with numpy loaded
 * costs milliseconds here).  It waits for its request, then confines
 * itself and runs it.
 */
static void
lss_worker(int sock, int python)
{
    int      n, i, rfds[5], fds[LSS_FD_MAX];
    json_t  *req;

    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);

    /*
     * The interpreter's after-fork work and the request-independent part
     * of the confinement are done while idle, not on an execution's path.
     */
    if (python) {
        lss_py_after_fork();
    }
    lss_confine_early();

    /*
     * To the runner: this spare is ready (see lss_spare_pick).  Not a
     * byte: a socket closed with unread data makes its peer's next recv
     * fail (ECONNRESET) even with a request queued.
     */
    (void) shutdown(sock, SHUT_WR);

    n = lss_fd_recv(sock, rfds, 5);
    if (n < 4) {
        _exit(1);
    }
    close(sock);

    req = lss_request_read(rfds[0]);
    close(rfds[0]);
    if (req == NULL) {
        _exit(1);
    }

    for (i = 0; i < LSS_FD_MAX; i++) {
        fds[i] = -1;
    }
    fds[LSS_FD_STDIN] = rfds[1];
    fds[LSS_FD_STDOUT] = rfds[2];
    fds[LSS_FD_STDERR] = rfds[3];
    if (n == 5) {
        fds[LSS_FD_EXTRA] = rfds[4];
    }

    if (python && json_object_get(req, "python") != NULL) {
        if (json_object_get(req, "context") != NULL) {
            lss_py_context(req, fds);
        }
        lss_py_run(req, fds);
    }

    lss_confine(req, fds);
    lss_exec_argv(req);
}


void
lss_exec_argv(json_t *req)
{
    char   **argv, **envp;
    size_t   i, n;
    json_t  *a;

    a = json_object_get(req, "argv");
    n = json_array_size(a);
    argv = calloc(n + 1, sizeof(char *));
    envp = lss_env_build(req);
    if (argv == NULL || envp == NULL || n == 0) {
        lss_die("argv");
    }
    for (i = 0; i < n; i++) {
        argv[i] = (char *) json_string_value(json_array_get(a, i));
    }

    environ = envp;
    execvp(argv[0], argv);

    if (errno == ENOENT) {
        fprintf(stderr, "llmsafespace: %s: command not found\n", argv[0]);
        _exit(127);
    }
    lss_die(argv[0]);
}


/*
 * Fork an idle shepherd and its idle worker.  socks[0] (the shepherd's)
 * and socks[1] (the worker's) go to the runner, which hands an execution
 * to both at once: the request and the stdio to the worker, the request
 * and the control socket to the shepherd, which then supervises.  close1
 * and close2 are the zygote's own descriptors, closed in the child.
 */
pid_t
lss_shepherd_spawn(int *socks, int python, int close1, int close2)
{
    int              sv[2], wsv[2], sfd, wstatus, done, killed, ctl, n;
    int              fds[2];
    char             buf[64];
    uid_t            uid;
    pid_t            pid, shepherd;
    json_t          *req;
    sigset_t         set;
    lss_result_t     res;
    struct pollfd    pfd[2];
    struct rusage    ru;
    struct signalfd_siginfo  si;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        return -1;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, wsv) != 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }

    shepherd = fork();
    if (shepherd != 0) {
        close(sv[1]);
        close(wsv[1]);
        if (shepherd < 0) {
            close(sv[0]);
            close(wsv[0]);
            return -1;
        }
        socks[0] = sv[0];
        socks[1] = wsv[0];
        return shepherd;
    }

    close(sv[0]);
    close(wsv[0]);
    close(close1);
    close(close2);

    if (lss_no_subreaper
        || prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
    {
        lss_no_subreaper = 1;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    prctl(PR_SET_NAME, "lss-shepherd", 0, 0, 0);

    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);

    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        _exit(1);
    }

    pid = fork();
    if (pid < 0) {
        _exit(1);
    }

    if (pid == 0) {
        close(sfd);
        close(sv[1]);
        lss_worker(wsv[1], python);
    }

    close(wsv[1]);

    /*
     * Idle until the runner hands over an execution (the worker may have
     * got its part, and even be done: SIGCHLD waits in the signalfd), or
     * goes away.  The shepherd never holds the execution's pipes.
     */
    n = lss_fd_recv(sv[1], fds, 2);
    if (n != 2) {
        /* the worker may have started (the runner failed us meanwhile) */
        kill(pid, SIGKILL);
        lss_kill_group(pid);
        lss_kill_descendants();
        _exit(0);
    }
    close(sv[1]);

    /* from now on the runner decides, through ctl, when this tree dies */
    prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);

    ctl = fds[LSS_SH_CTL];

    uid = 0;
    if (lss_no_subreaper) {
        req = lss_request_read(fds[LSS_SH_REQ]);
        uid = (uid_t) json_integer_value(json_object_get(req, "uid"));
        json_decref(req);
    }
    close(fds[LSS_SH_REQ]);

    done = 0;
    killed = 0;
    wstatus = 0;
    memset(&ru, 0, sizeof(ru));

    pfd[0].fd = ctl;
    pfd[0].events = POLLIN;
    pfd[1].fd = sfd;
    pfd[1].events = POLLIN;

    while (!done) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }

        if (pfd[1].revents & POLLIN) {
            while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                /* drain */
            }
            lss_reap(pid, &wstatus, &ru, &done);
        }

        if (!killed && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            (void) !recv(ctl, buf, sizeof(buf), MSG_DONTWAIT);
            killed = 1;
            kill(pid, SIGKILL);
            while (wait4(pid, &wstatus, 0, &ru) < 0 && errno == EINTR) {
                /* retry */
            }
            done = 1;
        }
    }

    /* whatever the worker left behind dies with it */
    lss_kill_group(pid);
    lss_kill_descendants();
    if (lss_no_subreaper && uid != 0) {
        lss_kill_orphans(uid);
    }

    memset(&res, 0, sizeof(res));
    if (WIFSIGNALED(wstatus)) {
        res.kind = LSS_RESULT_SIGNALED;
        res.code = WTERMSIG(wstatus);
    } else {
        res.kind = LSS_RESULT_EXITED;
        res.code = WEXITSTATUS(wstatus);
    }
    res.cpu_us = (int64_t) ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec
                 + (int64_t) ru.ru_stime.tv_sec * 1000000
                 + ru.ru_stime.tv_usec;
    res.maxrss_kb = ru.ru_maxrss;

    (void) !send(ctl, &res, sizeof(res), MSG_NOSIGNAL);

    /*
     * Exit once the runner has read the result and closed its end (1 s
     * at most: a context's result may wait for its next execution).  This
     * process is a fork of the zygote, and tearing its address space down
     * takes ~0.25 ms of a CPU that the runner's thread, just woken to
     * answer, would otherwise wait for.
     */
    pfd[0].fd = ctl;
    pfd[0].events = POLLIN;
    while (poll(pfd, 1, 1000) > 0
           && recv(ctl, buf, sizeof(buf), MSG_DONTWAIT) > 0)
    {
        /* a late kill byte: the tree is already gone */
    }

    _exit(0);
}


static void
lss_reap(pid_t worker, int *wstatus, struct rusage *ru, int *done)
{
    int            st;
    pid_t          p;
    struct rusage  r;

    for ( ;; ) {
        p = wait4(-1, &st, WNOHANG, &r);
        if (p <= 0) {
            if (p < 0 && errno == ECHILD) {
                *done = 1;
            }
            return;
        }

        if (p == worker) {
            *wstatus = st;
            *ru = r;
            *done = 1;
        }
    }
}


/*
 * Kill every process below us and reap it.  Processes forked while we
 * scan are children of processes we kill, so they are re-parented to us
 * and found by the next round; RLIMIT_NPROC bounds how many there are.
 */
static int
lss_kill_descendants(void)
{
    int             round, n, i, changed, found;
    char            path[300], buf[512], *p;
    pid_t          *pids, *ppids, self;
    u_char         *mark;
    FILE           *f;
    DIR            *d;
    struct dirent  *de;
    struct timespec ts;

    self = getpid();

    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* reap */
    }
    if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) {
        return 0;
    }

    pids = malloc(LSS_MAX_PROCS * sizeof(pid_t));
    ppids = malloc(LSS_MAX_PROCS * sizeof(pid_t));
    mark = malloc(LSS_MAX_PROCS);
    if (pids == NULL || ppids == NULL || mark == NULL) {
        free(pids);
        free(ppids);
        free(mark);
        return -1;
    }

    for (round = 0; round < LSS_KILL_ROUNDS; round++) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
            /* reap */
        }

        /*
         * Every descendant is a child of ours or below a living child
         * (orphans are re-parented to us): no child means no
         * descendant, and the common case needs no /proc walk.
         */
        if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) {
            break;
        }

        d = opendir("/proc");
        if (d == NULL) {
            break;
        }

        n = 0;
        while ((de = readdir(d)) != NULL && n < LSS_MAX_PROCS) {
            if (de->d_name[0] < '1' || de->d_name[0] > '9') {
                continue;
            }

            snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
            f = fopen(path, "re");
            if (f == NULL) {
                continue;
            }
            if (fgets(buf, sizeof(buf), f) == NULL) {
                fclose(f);
                continue;
            }
            fclose(f);

            /* comm may hold spaces and parentheses: skip to the last ')' */
            p = strrchr(buf, ')');
            if (p == NULL || p[1] == '\0' || p[2] == '\0') {
                continue;
            }
            pids[n] = atoi(de->d_name);
            ppids[n] = (pid_t) strtol(p + 4, NULL, 10);
            mark[n] = 0;
            n++;
        }
        closedir(d);

        do {
            changed = 0;
            for (i = 0; i < n; i++) {
                if (mark[i]) {
                    continue;
                }
                if (ppids[i] == self) {
                    mark[i] = 1;
                    changed = 1;
                    continue;
                }
                for (found = 0; found < n; found++) {
                    if (mark[found] && pids[found] == ppids[i]) {
                        mark[i] = 1;
                        changed = 1;
                        break;
                    }
                }
            }
        } while (changed);

        found = 0;
        for (i = 0; i < n; i++) {
            if (mark[i]) {
                kill(pids[i], SIGKILL);
                found++;
            }
        }

        while (waitpid(-1, NULL, WNOHANG) > 0) {
            /* reap */
        }

        if (found == 0) {
            if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD) {
                break;
            }
        }

        ts.tv_sec = 0;
        ts.tv_nsec = 200000;
        nanosleep(&ts, NULL);
    }

    free(pids);
    free(ppids);
    free(mark);

    return 0;
}


/*
 * The worker made itself a session and process group leader, and what
 * it forks stays in that group unless it leaves it: kill(-pgid) reaches
 * the whole group at once, which a fork bomb cannot outrun the way it
 * outruns a /proc walk (the only way without a subreaper, where its
 * orphans leave our tree).  The group's id stays taken, and so cannot
 * name anybody else, while one member is left, zombies included; those
 * are reaped here (ours) or by the runner (orphans), so the loop ends on
 * ESRCH, bounded at about three seconds.  Members that left the group
 * are found by the walks that follow.
 */
static void
lss_kill_group(pid_t pgid)
{
    int              round;
    struct timespec  ts;

    for (round = 0; round < 3000; round++) {
        if (kill(-pgid, SIGKILL) != 0) {
            return;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0) {
            /* reap */
        }
        ts.tv_sec = 0;
        ts.tv_nsec = 1000000;
        nanosleep(&ts, NULL);
    }
}


/*
 * Without child subreapers (gVisor before 2023) an orphan of the
 * execution is re-parented to the pid namespace's init or to the runner
 * (a subreaper where it can be).  An exec-uid process whose parent is one
 * of those belongs to no live execution (workers, spares and contexts all
 * have a shepherd for a parent): it escaped one, so it dies.  With several
 * executions at once this may end another execution's escaped daemon a
 * little early, which is the documented price of the fallback.
 */
static void
lss_kill_orphans(uid_t uid)
{
    int             round, found;
    char            path[300], line[256], *p;
    long            ppid, ruid;
    FILE           *f;
    DIR            *d;
    struct dirent  *de;

    for (round = 0; round < 300; round++) {
        d = opendir("/proc");
        if (d == NULL) {
            return;
        }

        found = 0;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] < '1' || de->d_name[0] > '9') {
                continue;
            }
            snprintf(path, sizeof(path), "/proc/%s/status", de->d_name);
            f = fopen(path, "re");
            if (f == NULL) {
                continue;
            }
            ppid = -1;
            ruid = -1;
            while (fgets(line, sizeof(line), f) != NULL) {
                if (strncmp(line, "PPid:", 5) == 0) {
                    ppid = strtol(line + 5, NULL, 10);
                } else if (strncmp(line, "Uid:", 4) == 0) {
                    ruid = strtol(line + 4, &p, 10);
                    break;
                }
            }
            fclose(f);

            if (ruid == (long) uid
                && (ppid == 1 || ppid == (long) lss_runner_pid))
            {
                kill(atoi(de->d_name), SIGKILL);
                found++;
            }
        }
        closedir(d);

        if (found == 0) {
            return;
        }
        if (round % 20 == 19) {
            lss_kill_uid(uid);
        }
        usleep(1000);
    }
}


/*
 * The last resort against a tree that forks faster than it is walked:
 * kill(-1) from a process of the exec uid reaches every process of that
 * uid in one pass that fork cannot race (the kernel holds the task list
 * lock).  It also ends the sandbox's other executions, contexts and
 * spare: acceptable for a fork bomb, and only ever after many rounds.
 */
static void
lss_kill_uid(uid_t uid)
{
    pid_t  pid;

    pid = fork();
    if (pid == 0) {
        if (setresgid(uid, uid, uid) == 0 && setresuid(uid, uid, uid) == 0) {
            kill(-1, SIGKILL);
        }
        _exit(0);
    }
    if (pid > 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            /* retry */
        }
    }
}
