"""Cases 11-20: escape and snooping, tried from inside a sandbox."""

import json

from conftest import alive, known


def probe(alice, sb, code):
    r = alice.py(sb, "import ctypes, errno, json, os, socket\n"
                     "libc = ctypes.CDLL(None, use_errno=True)\n"
                     "def sysc(n, *a):\n"
                     "    r = libc.syscall(n, *a)\n"
                     "    return 'ok' if r >= 0 else "
                     "errno.errorcode[ctypes.get_errno()]\n"
                     "out = {}\n" + code + "\nprint(json.dumps(out))")
    assert r["status"] == "completed", r
    return json.loads(r["stdout"])


def test_c11_host_secrets(alice, sb):
    out = probe(alice, sb, r"""
for p in ('/etc/shadow', '/root', '/var/run/docker.sock', '/run/containerd',
          '/var/lib/kubelet', '/run/runc', '/var/run/secrets/kubernetes.io',
          '/run/llmsafespace/token'):
    try:
        if os.path.isdir(p):
            os.listdir(p)
        else:
            open(p, 'rb').read(1)
        out[p] = 'readable'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
""")
    assert "readable" not in out.values(), out


def test_c12_proc(alice, sb, runtime):
    out = probe(alice, sb, r"""
names = set()
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            names.add(open('/proc/%s/comm' % p).read().strip())
        except OSError:
            pass
out['names'] = sorted(names)
for p in ('/proc/kcore', '/proc/keys'):
    try:
        out[p] = len(open(p, 'rb').read(64))
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
try:
    open('/proc/sys/kernel/hostname', 'w').write('x')
    out['sys'] = 'written'
except OSError as e:
    out['sys'] = errno.errorcode[e.errno]
""")
    host = {"nginx", "redis-server", "postgres", "llmsafespace-co",
            "runc", "containerd", "systemd", "sshd"}
    assert not host & set(out["names"]), out["names"]
    assert out["/proc/kcore"] in (0, "EACCES", "EPERM", "ENOENT"), out
    assert out["/proc/keys"] in (0, "EACCES", "EPERM", "ENOENT"), out
    assert out["sys"] in ("EROFS", "EACCES", "EPERM"), out


def test_c13_sys_read_only(alice, sb):
    out = probe(alice, sb, r"""
for p in ('/sys/kernel/mm/transparent_hugepage/enabled',
          '/sys/fs/cgroup/cgroup.procs', '/sys/fs/cgroup/pids/pids.max'):
    try:
        open(p, 'w').write('1')
        out[p] = 'written'
    except OSError as e:
        out[p] = errno.errorcode[e.errno]
""")
    assert "written" not in out.values(), out


def test_c14_ptrace(alice, sb):
    out = probe(alice, sb, r"""
out['ptrace'] = sysc(101, 16, 1, 0, 0)           # PTRACE_ATTACH pid 1
buf = ctypes.create_string_buffer(64)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
out['vm_readv'] = sysc(310, 1, iov, 1, iov, 1, 0)  # process_vm_readv
""")
    assert out["ptrace"] in ("EPERM", "ENOSYS"), out
    assert out["vm_readv"] in ("EPERM", "ENOSYS"), out


def test_c15_namespaces_and_mounts(alice, sb):
    out = probe(alice, sb, r"""
out['mount'] = sysc(165, b'none', b'/tmp', b'tmpfs', 0, 0)
out['umount2'] = sysc(166, b'/workspace', 0)
out['pivot_root'] = sysc(155, b'/tmp', b'/tmp')
out['unshare_user'] = sysc(272, 0x10000000)
out['setns'] = sysc(308, 0, 0)
out['clone3'] = sysc(435, 0, 0)
""")
    for k in ("mount", "umount2", "pivot_root", "unshare_user", "setns"):
        assert out[k] in ("EPERM", "ENOSYS", "EINVAL", "EBADF"), out
    assert out["clone3"] in ("ENOSYS", "EPERM"), out


def test_c16_setuid(alice, sb):
    out = probe(alice, sb, r"""
out['nnp'] = libc.prctl(39, 0, 0, 0, 0)
out['uid'] = os.geteuid()
suid = []
for d in ('/usr/bin', '/bin', '/usr/sbin', '/sbin'):
    for n in os.listdir(d):
        try:
            if os.stat(os.path.join(d, n)).st_mode & 0o4000:
                suid.append(os.path.join(d, n))
        except OSError:
            pass
out['suid'] = suid
""")
    assert out["nnp"] == 1 and out["uid"] != 0, out
    for path in out["suid"][:3]:
        r = alice.execute(sb, "", type="command", args=[path, "--help"])
        assert "uid=0" not in r["stdout"]


def test_c17_kernel_surfaces(alice, sb):
    out = probe(alice, sb, r"""
for name, nr in (('init_module', 175), ('finit_module', 313),
                 ('kexec_load', 246), ('keyctl', 250), ('add_key', 248),
                 ('bpf', 321), ('perf_event_open', 298),
                 ('userfaultfd', 323), ('io_uring_setup', 425)):
    out[name] = sysc(nr, 0, 0, 0, 0, 0)
""")
    bad = {k: v for k, v in out.items()
           if v not in ("EPERM", "ENOSYS", "EACCES")}
    assert not bad, out


def test_c18_vsock_raw(alice, sb):
    out = probe(alice, sb, r"""
for name, fam, typ in (('vsock', 40, socket.SOCK_STREAM),
                       ('raw', socket.AF_INET, socket.SOCK_RAW),
                       ('packet', 17, socket.SOCK_RAW)):
    try:
        socket.socket(fam, typ).close()
        out[name] = 'made'
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
""")
    assert "made" not in out.values(), out


def test_c19_runner(alice, sb, runtime):
    out = probe(alice, sb, r"""
import signal
for s in (0, signal.SIGSTOP, signal.SIGKILL):
    try:
        os.kill(1, s)
        out['kill%d' % s] = 'sent'
    except OSError as e:
        out['kill%d' % s] = errno.errorcode[e.errno]
out['env'] = [k for k in os.environ if 'TOKEN' in k.upper()]
out['fds'] = []
try:
    for n in os.listdir('/proc/1/fd'):
        try:
            os.close(os.open('/proc/1/fd/' + n, os.O_RDONLY))
            out['fds'].append(n)
        except OSError:
            pass
except OSError:
    pass
for e in ('environ', 'maps', 'auxv'):
    try:
        open('/proc/1/' + e, 'rb').read(1)
        out[e] = 'read'
    except OSError as ex:
        out[e] = errno.errorcode[ex.errno]
""")
    assert all(out["kill%d" % s] == "EPERM" for s in (0, 19, 9)), out
    assert out["env"] == [], out
    assert alive(alice, sb)
    if out["fds"] or "read" in (out["environ"], out["maps"], out["auxv"]):
        assert runtime == "runsc", out
        known("gVisor 20221219 lets any user read /proc/1/{environ,maps,"
              "auxv} and open the runner's descriptors (issue 12, item 5)")


def test_c20_leaked_fd_cwd(alice, sb):
    out = probe(alice, sb, r"""
out['fds'] = sorted(int(n) for n in os.listdir('/proc/self/fd'))
""")
    # 0-2 and the listing's own descriptor only
    assert len(out["fds"]) <= 4 and out["fds"][:3] == [0, 1, 2], out
    for n in range(3, 12):
        r = alice.execute(sb, "pwd; ls /proc/self/cwd/.. 2>&1 | head -3",
                          type="command", workingDir="/proc/self/fd/%d" % n)
        assert r["exitCode"] != 0 or "llmsafespace" not in r["stdout"], r
