"""The sandbox boundary itself: bundles from mkbundle under runc and runsc.

These tests run a probe (python3 from the python rootfs) as the
container's first process, without the runner, and check from inside what
the bundle promises: identity and capabilities, seccomp, read-only root,
masked /proc, no network, tmpfs limits, pids and memory limits.  The
runner's own tests (test_runner.py) check the same posture for executed
code, which the runner further confines.
"""

import json
import textwrap

import pytest

from conftest import needs_root

pytestmark = needs_root

PROBE_PRELUDE = textwrap.dedent("""
    import ctypes, errno, json, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    def sc(nr, *args):
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(nr),
                         *[ctypes.c_long(a) for a in args])
        return errno.errorcode.get(ctypes.get_errno(), "OK") if r < 0 else r
    def status():
        d = {}
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            d[k] = v.strip()
        return d
    def err(f):
        try:
            f()
            return "OK"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    def drop():
        os.setgroups([])
        os.setresgid(1000, 1000, 1000)
        os.setresuid(1000, 1000, 1000)
    def as_sandbox_user(f):
        # what executions will be: uid/gid 1000, no supplementary groups
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            drop()
            os.write(w, f().encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        return os.read(r, 100).decode()
""")


def probe(containers, runtime, body, timeout=60, **limits):
    """Run PROBE_PRELUDE + body in a fresh container; body fills `out`."""
    code = PROBE_PRELUDE + textwrap.dedent(body) + \
        "\nprint('PROBE' + json.dumps(out))\n"
    c = containers(runtime, command=["/usr/bin/python3", "-c", code],
                   **limits)
    r = c.run(timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    pytest.fail("probe printed no result (rc %d)\nstdout: %s\nstderr: %s"
                % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))


def test_posture(containers, runtime):
    out = probe(containers, runtime, """
        st = status()
        out["seccomp"] = st.get("Seccomp")
        PR_GET_NO_NEW_PRIVS = 39
        out["nnp"] = libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        out["capeff"] = st.get("CapEff")
        out["capbnd"] = st.get("CapBnd")
        out["uid_map"] = open("/proc/self/uid_map").read().split()
        out["hostname"] = socket.gethostname()
        out["env"] = sorted(os.environ)
    """)
    assert out["seccomp"] == "2"
    assert out["nnp"] == 1
    # CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7) and nothing else.
    assert out["capeff"] == "00000000000000e0"
    assert out["capbnd"] == "00000000000000e0"
    assert out["hostname"] == "sandbox"
    assert not [k for k in out["env"] if "TOKEN" in k.upper()]
    if runtime == "runc":
        # container 0 is host 100000: nothing maps to a privileged host id
        assert out["uid_map"] == ["0", "100000", "65536"]


def test_filesystem(containers, runtime):
    out = probe(containers, runtime, """
        out["root"] = err(lambda: open("/etc/lss-probe", "w"))
        out["usr"] = err(lambda: os.mkdir("/usr/lss-probe"))
        out["proc_sys"] = err(
            lambda: open("/proc/sys/kernel/hostname", "w").write("x"))
        out["sysfs"] = err(lambda: open("/sys/kernel/profiling", "w"))
        ws = os.stat("/workspace")
        out["ws_owner"] = [ws.st_uid, ws.st_gid]
        out["ws_write"] = as_sandbox_user(
            lambda: err(lambda: open("/workspace/f", "w").write("x")))
        out["tmp_write"] = err(lambda: open("/tmp/f", "w").write("x"))
        def read_masked(p):
            try:
                return len(open(p, "rb").read(64))
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))
        out["kcore"] = read_masked("/proc/kcore")
        out["keys"] = read_masked("/proc/keys")
        out["timer_list"] = read_masked("/proc/timer_list")
        out["run_mode"] = oct(os.stat("/run/llmsafespace").st_mode & 0o777)
        mounts = open("/proc/self/mounts").read().splitlines()
        out["mounts"] = [m.split()[1] for m in mounts]
    """)
    assert out["root"] == "EROFS"
    assert out["usr"] == "EROFS"
    assert out["proc_sys"] in ("EROFS", "EACCES", "EPERM")
    assert out["sysfs"] in ("EROFS", "EACCES", "EPERM", "ENOENT")
    assert out["ws_owner"] == [1000, 1000]
    assert out["ws_write"] == "OK"
    assert out["tmp_write"] == "OK"
    # masked: absent, empty (/dev/null bound over it) or unreadable
    for k in ("kcore", "keys", "timer_list"):
        assert out[k] in (0, "ENOENT", "EACCES", "EPERM", "EINVAL"), k
    assert out["run_mode"] == "0o700"


def test_no_network(containers, runtime):
    out = probe(containers, runtime, """
        def connect(addr):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect(addr)
                return "OK"
            except OSError as e:
                return type(e).__name__
            finally:
                s.close()
        out["internet"] = connect(("1.1.1.1", 53))
        out["metadata"] = connect(("169.254.169.254", 80))
        try:
            socket.getaddrinfo("deb.debian.org", 80)
            out["dns"] = "OK"
        except OSError as e:
            out["dns"] = type(e).__name__
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        c = socket.create_connection(srv.getsockname(), timeout=3)
        a, _ = srv.accept()
        c.sendall(b"ping")
        out["loopback"] = a.recv(4).decode()
        out["ifaces"] = sorted(n for _, n in socket.if_nameindex())
    """)
    assert out["internet"] != "OK"
    assert out["metadata"] != "OK"
    assert out["dns"] != "OK"
    assert out["loopback"] == "ping"
    assert out["ifaces"] == ["lo"]


# x86_64 numbers; the profile denies these whatever their arguments.
DENIED = {
    "io_uring_setup": (425, [8, 0]),
    "bpf": (321, [0, 0, 0]),
    "perf_event_open": (298, [0, 0, -1, -1, 0]),
    "userfaultfd": (323, [0]),
    "keyctl": (250, [0, 0]),
    "add_key": (248, [0, 0, 0, 0, 0]),
    "kexec_load": (246, [0, 0, 0, 0]),
    "init_module": (175, [0, 0, 0]),
    "ptrace": (101, [0, 0, 0, 0]),
    "process_vm_readv": (310, [1, 0, 0, 0, 0, 0]),
    "mount": (165, [0, 0, 0, 0, 0]),
    "umount2": (166, [0, 0]),
    "pivot_root": (155, [0, 0]),
    "setns": (308, [0, 0]),
    "unshare_user": (272, [0x10000000]),
    "clone_newuser": (56, [0x10000000 | 17, 0, 0, 0, 0]),
}


def test_seccomp_denials(containers, runtime):
    out = probe(containers, runtime, """
        for name, (nr, args) in %s.items():
            out[name] = sc(nr, *args)
        out["clone3"] = sc(435, 0, 0)
        out["vsock"] = err(lambda: socket.socket(40, socket.SOCK_STREAM))
        out["packet"] = err(lambda: socket.socket(17, socket.SOCK_RAW))
        out["raw"] = err(lambda: socket.socket(socket.AF_INET,
                                               socket.SOCK_RAW, 1))
        import threading
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        out["thread"] = "OK"
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    """ % json.dumps(DENIED))
    for name in DENIED:
        assert out[name] == "EPERM", (name, out[name])
    # clone3 cannot be argument-filtered: ENOSYS makes libc use clone()
    assert out["clone3"] == "ENOSYS"
    assert out["vsock"] == "EPERM"
    assert out["packet"] in ("EPERM", "EACCES")
    assert out["raw"] in ("EPERM", "EACCES")
    assert out["fork"] == 7
    assert out["thread"] == "OK"


def test_strict_profile_blocks_inet(containers, runtime):
    out = probe(containers, runtime, """
        out["inet"] = err(lambda: socket.socket(socket.AF_INET))
        out["unix"] = err(lambda: socket.socket(socket.AF_UNIX))
    """, seccomp="%s/strict.json" % __import__("conftest").SECCOMP)
    assert out["inet"] == "EPERM"
    assert out["unix"] == "OK"


def test_tmpfs_limits(containers, runtime):
    out = probe(containers, runtime, """
        drop()
        def fill(path):
            n = 0
            try:
                with open(path, "wb") as f:
                    chunk = b"x" * (1 << 20)
                    for _ in range(64):
                        f.write(chunk)
                        f.flush()
                        n += 1
                return ["OK", n]
            except OSError as e:
                return [errno.errorcode.get(e.errno), n]
        out["tmp"] = fill("/tmp/fill")
        out["ws"] = fill("/workspace/fill")
        os.unlink("/tmp/fill")
        def inodes():
            for i in range(4096):
                try:
                    open("/tmp/i%d" % i, "w").close()
                except OSError as e:
                    return [errno.errorcode.get(e.errno), i]
            return ["OK", 4096]
        out["inodes"] = inodes()
    """, tmp_size=8 << 20, workspace_size=16 << 20, inodes=512)
    assert out["tmp"][0] == "ENOSPC" and 6 <= out["tmp"][1] <= 8, out
    assert out["ws"][0] == "ENOSPC" and 14 <= out["ws"][1] <= 16, out
    if runtime == "runc":
        assert out["inodes"][0] == "ENOSPC" and out["inodes"][1] < 512, out
    # runsc 20221219's tmpfs ignores nr_inodes: there, files are Sentry
    # memory and the sandbox's memory cgroup bounds them
    # (docs/runtimes.md, "Known limits").


def test_pids_limit(containers, runtime):
    out = probe(containers, runtime, """
        import signal, time
        drop()
        kids = []
        out["error"] = None
        for i in range(200):
            try:
                pid = os.fork()
            except OSError as e:
                out["error"] = errno.errorcode.get(e.errno)
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        out["forked"] = len(kids)
        for k in kids:
            os.kill(k, signal.SIGKILL)
            os.waitpid(k, 0)
    """, pids=64)
    assert out["error"] == "EAGAIN"
    assert out["forked"] <= 64


def test_memory_limit(containers, runtime):
    code = ("b = []\n"
            "for i in range(400):\n"
            "    b.append(bytearray(1 << 20))\n"
            "print('survived', flush=True)\n")
    c = containers(runtime, command=["/usr/bin/python3", "-c", code],
                   memory=128 << 20)
    r = c.run(timeout=60)
    assert "survived" not in r.stdout
    assert r.returncode != 0
