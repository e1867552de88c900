#!/usr/bin/python3
"""Generate the seccomp profiles default.json and strict.json.

The JSON files are what runc, runsc and Kubernetes read; this script is the
reviewable source they are made from: each allowed system call is listed
once, in a group that says why it is there.  `make -C runtimes seccomp`
rewrites the JSON; the tests check the committed JSON matches this script.

The format is the one both the OCI runtime spec (linux.seccomp) and a
Kubernetes "Localhost" profile (containerd / CRI-O) accept: defaultAction,
defaultErrnoRet, architectures, syscalls[{names, action, args?, errnoRet?}].
Everything not listed is denied with EPERM.
"""

import json
import os
import sys

EPERM = 1
ENOSYS = 38

# Only the native ABIs.  A 64-bit process can still enter the kernel
# through the 32-bit int 0x80 gate or the x32 ABI; with those
# architectures absent, libseccomp kills such a call instead of matching
# it against an allowlist written for 64-bit numbers (socketcall would
# bypass the socket family filter below).
ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"]

FILES = """
    access faccessat faccessat2 chdir fchdir chmod fchmod fchmodat chown
    fchown fchownat lchown close close_range copy_file_range creat dup dup2
    dup3 fadvise64 fallocate fcntl fdatasync flock fstat fstatfs fsync
    ftruncate getcwd getdents getdents64 getxattr fgetxattr lgetxattr
    listxattr flistxattr llistxattr removexattr fremovexattr lremovexattr
    setxattr fsetxattr lsetxattr link linkat lseek lstat mkdir mkdirat
    newfstatat open openat openat2 pread64 preadv preadv2 pwrite64
    pwritev pwritev2 read readahead readlink readlinkat readv rename
    renameat renameat2 rmdir sendfile splice stat statfs statx symlink
    symlinkat sync sync_file_range syncfs tee truncate umask unlink unlinkat
    utime utimensat utimes futimesat write writev vmsplice inotify_init
    inotify_init1 inotify_add_watch inotify_rm_watch
"""

MEMORY = """
    brk mmap mprotect munmap mremap madvise mincore msync membarrier
    memfd_create mlock mlock2 mlockall munlock munlockall pkey_alloc
    pkey_free pkey_mprotect
"""

# Identity and signals: the runner drops each execution to the sandbox
# user (setresuid, setgroups) and signals its process groups.
PROCESS = """
    arch_prctl capget capset execve execveat exit exit_group fork vfork
    getpid getppid getpgid getpgrp getsid gettid getuid geteuid getgid
    getegid getgroups getresuid getresgid setuid setgid setreuid setregid
    setresuid setresgid setgroups setfsuid setfsgid setpgid setsid kill tkill
    tgkill pidfd_open pidfd_send_signal prctl prlimit64 getrlimit setrlimit
    getrusage getpriority setpriority sched_getaffinity sched_setaffinity
    sched_getattr sched_setattr sched_getparam sched_setparam
    sched_getscheduler sched_setscheduler sched_get_priority_max
    sched_get_priority_min sched_rr_get_interval sched_yield set_tid_address
    set_robust_list get_robust_list rseq restart_syscall rt_sigaction
    rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_tgsigqueueinfo sigaltstack signalfd signalfd4 wait4
    waitid times uname sysinfo seccomp ioprio_get ioprio_set getcpu futex
    futex_waitv set_thread_area get_thread_area landlock_create_ruleset
    landlock_add_rule landlock_restrict_self
"""

TIME_AND_EVENTS = """
    alarm pause nanosleep clock_nanosleep clock_gettime clock_getres
    gettimeofday time timer_create timer_delete timer_getoverrun
    timer_gettime timer_settime timerfd_create timerfd_gettime
    timerfd_settime getitimer setitimer getrandom eventfd eventfd2
    epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait
    poll ppoll select pselect6 pipe pipe2 ioctl
"""

# Legacy asynchronous I/O (not io_uring), System V and POSIX IPC: used by
# some numeric and database libraries; confined by the IPC namespace.
IPC = """
    io_setup io_destroy io_getevents io_pgetevents io_submit io_cancel
    mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink
    semctl semget semop semtimedop shmat shmctl shmdt shmget msgctl msgget
    msgrcv msgsnd
"""

SOCKETS = """
    socketpair accept accept4 bind connect listen getpeername getsockname
    getsockopt setsockopt recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg
    shutdown
"""

# Never allowed, whatever the profile (the test suite checks every one is
# absent).  Listed so a reader sees the decisions, not only the omissions:
# io_uring bypasses seccomp's view of individual operations; the rest reach
# kernel surfaces (modules, keys, BPF, perf, mounts, namespaces, tracing of
# other processes) a sandbox never needs.
NEVER = """
    io_uring_setup io_uring_enter io_uring_register acct add_key bpf
    clock_adjtime clock_settime settimeofday adjtimex create_module
    delete_module finit_module init_module get_kernel_syms query_module
    ioperm iopl kcmp kexec_file_load kexec_load keyctl lookup_dcookie mount
    move_mount open_tree fsopen fsconfig fsmount fspick mount_setattr
    nfsservctl open_by_handle_at name_to_handle_at perf_event_open
    pivot_root process_vm_readv process_vm_writev ptrace quotactl reboot
    request_key setdomainname sethostname setns swapon swapoff sysfs _sysctl
    umount umount2 unshare uselib userfaultfd ustat vm86 vm86old vhangup
    syslog pidfd_getfd chroot fanotify_init fanotify_mark process_madvise
    process_mrelease memfd_secret
"""

# clone() without any CLONE_NEW* flag (NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET): threads and fork, never new namespaces.
CLONE_NS_MASK = 0x7E020000

# mknod() / mknodat(): files, FIFOs and sockets only, never device nodes
# (whose mode & S_IFMT is S_IFCHR or S_IFBLK).  Linux refuses those
# without CAP_MKNOD anyway; gVisor 20221219 creates them for any user,
# and a character device made there opens (docs/runtimes.md).
S_IFMT = 0o170000
MKNOD_TYPES_OK = [0, 0o100000, 0o010000, 0o140000]   # -, REG, FIFO, SOCK
MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}

# personality(): only the values the C library and `setarch` use for
# compatibility queries, not ones that disable address randomisation.
PERSONALITY_OK = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16


def names(block):
    return block.split()


def allow(syscalls):
    return {"names": sorted(set(syscalls)), "action": "SCMP_ACT_ALLOW"}


def socket_rule(family):
    return {
        "names": ["socket"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}],
    }


def profile(families, extra):
    base = (names(FILES) + names(MEMORY) + names(PROCESS)
            + names(TIME_AND_EVENTS) + names(SOCKETS) + extra)
    never = set(names(NEVER))
    clash = never.intersection(base)
    if clash:
        sys.exit("mkprofile: allowed and never at once: %s" % sorted(clash))

    rules = [allow(base)]
    rules.append({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NS_MASK, "valueTwo": 0,
                  "op": "SCMP_CMP_MASKED_EQ"}],
    })
    # clone3 passes its flags in memory seccomp cannot read, so it cannot
    # be filtered like clone: ENOSYS makes the C library fall back to
    # clone(), where the namespace flags are checked.
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                  "errnoRet": ENOSYS})
    for p in PERSONALITY_OK:
        rules.append({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}],
        })
    for name, index in sorted(MKNOD_MODE_ARG.items()):
        for t in MKNOD_TYPES_OK:
            rules.append({
                "names": [name],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": index, "value": S_IFMT, "valueTwo": t,
                          "op": "SCMP_CMP_MASKED_EQ"}],
            })
    # socket(): only these families.  AF_VSOCK (host/VM channel), AF_PACKET,
    # AF_KEY, AF_ALG, AF_BLUETOOTH ... stay denied whatever capabilities a
    # misconfigured pod might hold.
    for f in families:
        rules.append(socket_rule(f))

    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES,
        "syscalls": rules,
    }


def render(p):
    return json.dumps(p, indent=2, sort_keys=True) + "\n"


PROFILES = {
    # Every runtime, runc and gVisor, Kubernetes "Localhost" profile.
    "default.json": lambda: profile(
        [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK], names(IPC)),
    # For sandboxes without egress: only local sockets, no System V / POSIX
    # IPC or legacy AIO.  The network namespace already isolates; this
    # removes the kernel's IP stack from the reachable surface as well.
    "strict.json": lambda: profile([AF_UNIX], []),
}


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(
        os.path.abspath(__file__))
    for name, make in sorted(PROFILES.items()):
        with open(os.path.join(outdir, name + ".tmp"), "w") as f:
            f.write(render(make()))
        os.rename(os.path.join(outdir, name + ".tmp"),
                  os.path.join(outdir, name))


if __name__ == "__main__":
    main()
