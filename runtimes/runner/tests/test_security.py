"""The adversarial cases of security.md that concern one execution."""

import json
import os
import time

import pytest

from conftest import EXEC_UID, TOKEN, uid_processes, wait_no_uid_processes
from conftest import describe


def test_posture_from_inside(runner):
    for lang, code in (
            ("python", "print(open('/proc/self/status').read())"),
            ("bash", "cat /proc/self/status"),
            ("javascript", "console.log(require('fs')"
                           ".readFileSync('/proc/self/status','utf8'))")):
        r = runner.execute(code, language=lang)
        status = dict(l.split(":", 1) for l in r["stdout"].splitlines()
                      if ":" in l)
        assert status["Seccomp"].strip() == "2", lang
        assert status["NoNewPrivs"].strip() == "1", lang
        assert status["CapEff"].strip() == "0000000000000000", lang
        assert status["CapPrm"].strip() == "0000000000000000", lang
        uids = status["Uid"].split()
        assert uids == [str(EXEC_UID)] * 4, lang
        assert status["Groups"].split() == [], lang
    r = runner.command(["bash", "-c", "ulimit -c; ulimit -n; ulimit -u"])
    assert r["stdout"].split() == ["0", "1024", "256"]


DENIED = {
    # name: (syscall number on x86_64, args)
    "ptrace": (101, (0, 1, 0, 0)),
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
    "process_vm_writev": (311, (1, 0, 0, 0, 0, 0)),
    "mount": (165, (0, 0, 0, 0, 0)),
    "umount2": (166, (0, 0)),
    "pivot_root": (155, (0, 0)),
    "unshare": (272, (0x10000000,)),
    "setns": (308, (0, 0)),
    "keyctl": (250, (0, 0, 0, 0, 0)),
    "add_key": (248, (0, 0, 0, 0, 0)),
    "request_key": (249, (0, 0, 0, 0)),
    "bpf": (321, (0, 0, 0)),
    "perf_event_open": (298, (0, 0, 0, 0, 0)),
    "userfaultfd": (323, (0,)),
    "io_uring_setup": (425, (1, 0)),
    "io_uring_enter": (426, (0, 0, 0, 0, 0, 0)),
    "io_uring_register": (427, (0, 0, 0, 0)),
    "kexec_load": (246, (0, 0, 0, 0)),
    "kexec_file_load": (320, (0, 0, 0, 0, 0)),
    "init_module": (175, (0, 0, 0)),
    "finit_module": (313, (0, 0, 0)),
    "delete_module": (176, (0, 0)),
    "clone_newuser": (56, (0x10000000 | 17, 0, 0, 0, 0)),
    "clone3": (435, (0, 0)),
}


def test_denied_syscalls(runner):
    code = """
import ctypes, json, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
res = {}
for name, (nr, args) in %s.items():
    ctypes.set_errno(0)
    rv = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    res[name] = (rv, ctypes.get_errno())
for name, fam, typ in (("vsock", 40, socket.SOCK_STREAM),
                       ("packet", 17, socket.SOCK_RAW),
                       ("raw", socket.AF_INET, socket.SOCK_RAW),
                       ("raw6", socket.AF_INET6, socket.SOCK_RAW)):
    try:
        socket.socket(fam, typ).close()
        res[name] = (0, 0)
    except OSError as e:
        res[name] = (-1, e.errno)
print(json.dumps(res))
""" % json.dumps(DENIED)
    r = runner.execute(code)
    assert r["exitCode"] == 0, r
    res = json.loads(r["stdout"])
    for name, (rv, err) in res.items():
        assert rv == -1, name
        expected = {"clone3": (38,), "vsock": (97,),
                    "packet": (1, 97)}.get(name, (1,))
        assert err in expected, (name, err)
    # an ordinary fork and thread still work (clone without namespaces)
    r = runner.execute("import os, threading\n"
                       "t = threading.Thread(target=print, args=('t',))\n"
                       "t.start(); t.join()\n"
                       "pid = os.fork()\n"
                       "if pid == 0: os._exit(5)\n"
                       "print(os.waitstatus_to_exitcode(os.waitpid(pid,0)[1]))")
    assert r["stdout"] == "t\n5\n"


def test_runner_cannot_be_read_signalled_or_traced(runner):
    pid = runner.proc.pid
    code = """
import os, signal, ctypes
pid = %d
out = []
for p in ("environ", "cmdline", "mem", "maps", "fd", "root/", "cwd/",
          "task/%%d/environ" %% pid):
    path = "/proc/%%d/%%s" %% (pid, p)
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            data = open(path, "rb").read()
            if %r.encode() in data:
                out.append("TOKEN-IN-" + p)
        out.append("read:" + p)
    except OSError as e:
        out.append("denied:" + p)
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
    try:
        os.kill(pid, sig)
        out.append("signalled")
    except OSError:
        out.append("nosignal")
libc = ctypes.CDLL(None, use_errno=True)
out.append("ptrace:%%d" %% libc.ptrace(16, pid, 0, 0))
for path in (%r, "/proc/%%d/fd/0" %% pid):
    try:
        open(path).read()
        out.append("read-token-file")
    except OSError:
        out.append("no-token-file")
print(" ".join(out))
""" % (pid, TOKEN, runner.token_file)
    for lang_code in (code,):
        r = runner.execute(lang_code)
        out = r["stdout"].split()
        assert "TOKEN-IN" not in r["stdout"]
        for p in ("environ", "mem", "fd", "root/", "cwd/"):
            assert "denied:" + p in out, (p, out)
        assert "signalled" not in out
        assert "ptrace:-1" in out
        assert "read-token-file" not in out
    assert runner.proc.poll() is None
    # nor through a command's environment
    r = runner.command("cat /proc/self/environ; env; "
                       "cat /proc/1/environ 2>/dev/null; true")
    assert TOKEN not in r["stdout"]
    # the runner's own environment no longer holds the token
    with open("/proc/%d/environ" % pid, "rb") as f:
        assert TOKEN.encode() not in f.read()


def test_leaked_fd_trick(runner):
    # CVE-2024-21626: nothing inherited to reach through /proc/self/fd
    r = runner.execute("import os\nprint(sorted(os.listdir('/proc/self/fd')))")
    fds = json.loads(r["stdout"].replace("'", '"'))
    assert fds == ["0", "1", "2", "3"] or fds == ["0", "1", "2"], fds
    r = runner.command(
        "for f in /proc/self/fd/*; do readlink $f; done; "
        "cd /proc/self/fd/3 2>/dev/null && pwd; "
        "ls /proc/self/fd | wc -l")
    links = r["stdout"].split()
    assert all(l.startswith("pipe:") or l.startswith("/proc/")
               or l.isdigit() for l in links), links
    r = runner.command(["sh", "-c", "cd /proc/self/fd/5 && ls"])
    assert r["exitCode"] != 0
    r = runner.execute("const fs=require('fs');"
                       "console.log(fs.readdirSync('/proc/self/fd').length)",
                       language="javascript")
    # node's own epoll/event fds only; never an fd of the runner
    r2 = runner.execute("const fs=require('fs');"
                        "for (const f of fs.readdirSync('/proc/self/fd'))"
                        "{try{console.log(fs.readlinkSync('/proc/self/fd/'"
                        "+f))}catch(e){}}", language="javascript")
    for l in r2["stdout"].split():
        assert not l.startswith("/") or l.startswith("/dev/") \
            or l.startswith("/proc/"), l


def test_fork_bomb(mode_runner):
    runner = mode_runner
    r = runner.command(["bash", "-c", ":(){ :|:& };:"], timeout=3)
    assert r["status"] in ("timeout", "completed", "failed")
    left = wait_no_uid_processes(uid=runner.exec_uid)
    assert left == [], (runner.proc.pid, describe(left))
    assert runner.execute("print('alive')")["stdout"] == "alive\n"


def test_python_fork_bomb(runner):
    r = runner.execute("import os\nwhile True:\n"
                       "    try: os.fork()\n"
                       "    except OSError: pass", timeout=2)
    assert r["status"] == "timeout"
    assert wait_no_uid_processes() == []


def test_memory_bomb(runner):
    r = runner.execute("x = []\nwhile True: x.append(' ' * 10**7)",
                       timeout=20)
    assert r["status"] == "failed"
    assert "MemoryError" in r["stderr"]
    r = runner.command(["python3", "-c",
                        "import numpy; a = numpy.ones((10**6, 10**4))"],
                       timeout=20)
    assert r["status"] == "failed"
    assert runner.execute("print(3)")["stdout"] == "3\n"


def test_output_flood_and_endless_output(runner):
    start = time.monotonic()
    r = runner.execute("import sys\nwhile True: sys.stdout.write('y' * 65536)",
                       timeout=30)
    assert r["truncated"] is True
    assert len(r["stdout"]) == 1024 * 1024
    assert r["status"] == "failed" and r["exitCode"] == 137
    # stopped at the cap, not at the timeout
    assert r["usage"]["wallTimeMs"] < 30000
    r = runner.command("yes", timeout=30)
    assert r["truncated"] is True and len(r["stdout"]) == 1024 * 1024
    r = runner.command("cat /dev/zero >&2", timeout=30)
    assert r["truncated"] is True and len(r["stderr"]) == 1024 * 1024
    assert time.monotonic() - start < 60


def test_cpu_spin(mode_runner):
    runner = mode_runner
    r = runner.command(["sh", "-c", "while :; do :; done"], timeout=1)
    assert r["status"] == "timeout"
    assert wait_no_uid_processes(uid=runner.exec_uid) == []


def test_daemonised_children_all_die(mode_runner):
    runner = mode_runner
    code = """
import os, signal, time, subprocess
# a double-forked, setsid'd, SIGTERM-ignoring grandchild
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while True:
            time.sleep(1)
    os._exit(0)
subprocess.Popen(["setsid", "sleep", "1000"])
subprocess.Popen(["sh", "-c", "trap '' TERM; (sleep 1000 &) ; sleep 1000"])
os.system("nohup sleep 1000 >/dev/null 2>&1 &")
time.sleep(0.3)
print("spawned", flush=True)
"""
    r = runner.execute(code)
    assert r["stdout"] == "spawned\n", r
    assert r["status"] == "completed"
    assert wait_no_uid_processes(uid=runner.exec_uid) == []


def test_zombies_reaped(runner):
    code = ("import os, time\n"
            "kids = [os.fork() or 0 for i in range(1)]\n"
            "if kids[0] == 0: os._exit(0)\n"
            "for i in range(19):\n"
            "    if os.fork() == 0: os._exit(0)\n"
            "time.sleep(0.3)\n"
            "n = 0\n"
            "for p in os.listdir('/proc'):\n"
            "    try:\n"
            "        st = open('/proc/%s/stat' % p).read()\n"
            "    except OSError:\n"
            "        continue\n"
            "    if st.rsplit(')', 1)[1].split()[0] == 'Z': n += 1\n"
            "print(n)\n")
    r = runner.execute(code)
    assert r["stdout"] and int(r["stdout"]) >= 1, r   # zombies of its own
    assert wait_no_uid_processes() == []
    # and nothing stays a zombie below the runner afterwards
    time.sleep(0.2)
    zombies = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) in (runner.proc.pid,):
            zombies.append(p)
    assert zombies == []


def test_fd_exhaustion_runner_keeps_serving(runner):
    r = runner.execute("import os\nfds = []\n"
                       "try:\n"
                       "    while True: fds.append(os.open('/dev/null', 0))\n"
                       "except OSError as e:\n"
                       "    print(e.errno, len(fds) < 1100)")
    assert r["stdout"] == "24 True\n"
    assert runner.execute("print(4)")["stdout"] == "4\n"


def test_binary_and_ansi_output(runner):
    r = runner.execute("import sys\n"
                       "sys.stdout.buffer.write(bytes(range(256)))\n"
                       "sys.stderr.buffer.write(b'\\x1b[2J\\x1b]0;t\\x07"
                       "\\xc3\\x28\\xed\\xa0\\x80\\xf4\\x90\\x80\\x80')")
    assert r["status"] == "completed"
    out = r["stdout"]
    assert out[:128] == "".join(chr(i) for i in range(128))
    assert out[128:] == "\ufffd" * 128
    assert r["stderr"] == "\x1b[2J\x1b]0;t\x07\ufffd(" + "\ufffd" * 7


def test_other_executions_survive_cleanup(runner):
    """Killing one execution's tree never touches another's."""
    import threading
    res = {}
    t = threading.Thread(target=lambda: res.update(runner.execute(
        "import time\ntime.sleep(2)\nprint('survived')", timeout=10)))
    t.start()
    time.sleep(0.3)
    r = runner.command("sleep 100 & echo bg", timeout=5)
    assert r["stdout"] == "bg\n"
    t.join()
    assert res["stdout"] == "survived\n"
