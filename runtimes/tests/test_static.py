"""Checks that need no container: profiles, descriptors, images, bundles."""

import importlib.util
import json
import os
import re
import stat
import subprocess

import pytest

from conftest import MKBUNDLE, RUNTIMES, SECCOMP, needs_root

NAMES = ["base", "python", "nodejs"]
PROFILES = ["default.json", "strict.json"]


def load(path):
    with open(path) as f:
        return json.load(f)


def mkprofile():
    spec = importlib.util.spec_from_file_location(
        "mkprofile", os.path.join(SECCOMP, "mkprofile.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def allowed(profile):
    """Names allowed unconditionally, and names allowed with arguments."""
    plain, cond = set(), set()
    for r in profile["syscalls"]:
        if r["action"] != "SCMP_ACT_ALLOW":
            continue
        (cond if r.get("args") else plain).update(r["names"])
    return plain, cond


@pytest.mark.parametrize("name", PROFILES)
def test_profile_shape(name):
    p = load(os.path.join(SECCOMP, name))
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert set(p["architectures"]) <= {"SCMP_ARCH_X86_64",
                                       "SCMP_ARCH_AARCH64"}
    for r in p["syscalls"]:
        assert set(r) <= {"names", "action", "args", "errnoRet"}, r
        assert r["names"] and all(re.fullmatch(r"[a-z0-9_]+", n)
                                  for n in r["names"])
        assert r["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO")
        for a in r.get("args", []):
            assert a["op"] in ("SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ")
            assert 0 <= a["index"] < 6
    plain, cond = allowed(p)
    assert "read" in plain and "execve" in plain and "setresuid" in plain
    # what the runner needs to confine executions
    assert {"seccomp", "prctl", "setgroups", "setresgid", "kill",
            "wait4", "prlimit64"} <= plain


@pytest.mark.parametrize("name", PROFILES)
def test_profile_denies(name):
    p = load(os.path.join(SECCOMP, name))
    every = set()
    for r in p["syscalls"]:
        if r["action"] == "SCMP_ACT_ALLOW":
            every.update(r["names"])
    assert not [n for n in every if n.startswith("io_uring")]
    never = set(mkprofile().NEVER.split())
    assert {"ptrace", "bpf", "unshare", "setns", "mount", "keyctl",
            "userfaultfd", "perf_event_open"} <= never
    assert not every & never, every & never
    # clone only without namespace flags; clone3 answered ENOSYS
    clone = [r for r in p["syscalls"] if r["names"] == ["clone"]]
    assert len(clone) == 1 and clone[0]["args"] == [{
        "index": 0, "value": 0x7E020000, "valueTwo": 0,
        "op": "SCMP_CMP_MASKED_EQ"}]
    clone3 = [r for r in p["syscalls"] if "clone3" in r["names"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                       "errnoRet": 38}]
    # socket only by family, never AF_VSOCK (40) or AF_PACKET (17)
    fams = [r["args"][0]["value"] for r in p["syscalls"]
            if r["names"] == ["socket"]]
    assert 1 in fams and 40 not in fams and 17 not in fams
    if name == "strict.json":
        assert fams == [1]


def test_profiles_match_generator(tmp_path):
    subprocess.run(["/usr/bin/python3", os.path.join(SECCOMP, "mkprofile.py"),
                    str(tmp_path)], check=True)
    for name in PROFILES:
        with open(os.path.join(SECCOMP, name)) as a, \
                open(tmp_path / name) as b:
            assert a.read() == b.read(), \
                "%s is stale: run make -C runtimes seccomp" % name


def packages_txt(name):
    with open(os.path.join(RUNTIMES, name, "packages.txt")) as f:
        text = re.sub(r"#.*", "", f.read())
    return text.split()


@pytest.mark.parametrize("name", NAMES)
def test_descriptor(name):
    d = load(os.path.join(RUNTIMES, name, "runtime.json"))
    for k in ("name", "version", "language", "languages", "image",
              "preinstalledPackages", "packageManagers", "rootfs",
              "runnerArgs", "securityLevels"):
        assert k in d, k
    assert re.fullmatch(r"[a-z]+:[0-9a-z.]+", d["name"])
    assert d["language"] in d["languages"]
    assert d["rootfs"]["name"] == name
    assert d["rootfs"]["packages"] == packages_txt(name)
    assert d["image"].endswith(":" + d["name"].split(":")[1])
    i = d["runnerArgs"].index("--languages")
    assert d["runnerArgs"][i + 1].split(",") == d["languages"]


def test_index_matches_descriptors():
    idx = load(os.path.join(RUNTIMES, "index.json"))
    want = [load(os.path.join(RUNTIMES, n, "runtime.json")) for n in NAMES]
    assert idx == {"runtimes": want}, "stale: run make -C runtimes index"


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile(name):
    """Lint by reading: what Docker cannot build here must still agree with
    the rootfs build and the descriptor."""
    with open(os.path.join(RUNTIMES, name, "Dockerfile")) as f:
        text = f.read()
    lines = text.replace("\\\n", " ").splitlines()
    instr = [l.split(None, 1) for l in lines
             if l.strip() and not l.lstrip().startswith("#")]
    froms = [a[1] for a in instr if a[0] == "FROM"]
    if name == "base":
        assert froms[-1] == "debian:bookworm-slim"
        assert all(f.startswith("debian:bookworm-slim") for f in froms)
        ep = [json.loads(a[1]) for a in instr if a[0] == "ENTRYPOINT"]
        assert ep == [["/usr/local/bin/llmsafespace-runner"]]
        assert "RUNTIME_DEPS" in text
    else:
        assert froms == ["${BASE}"]
        assert "ARG BASE=llmsafespace/runtime-base:bookworm" in text
    assert "runtimes/%s/packages.txt" % name in text
    # the same install script as the local rootfs
    assert "runtimes/base/install.sh" in text
    assert "sh /tmp/lss/install.sh" in text
    assert ("--sandbox-user" in text) == (name == "base")
    assert [a[1] for a in instr if a[0] == "USER"] == ["0:0"]
    cmd = json.loads([a[1] for a in instr if a[0] == "CMD"][-1])
    d = load(os.path.join(RUNTIMES, name, "runtime.json"))
    assert cmd[cmd.index("--languages") + 1] == d["runnerArgs"][1]
    assert cmd[cmd.index("--exec-uid") + 1] == "1000"


@needs_root
@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_bundle_config(tmp_path, runtime):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    tok = tmp_path / "tok"
    tok.write_text("s3cret")
    run_dir = tmp_path / "run"
    subprocess.run([MKBUNDLE, "--rootfs", str(rootfs), "--bundle",
                    str(tmp_path / "b"), "--run-dir", str(run_dir),
                    "--token-file", str(tok), "--runtime", runtime,
                    "--memory", str(100 << 20), "--pids", "77",
                    "--cpus", "0.5", "--tmp-size", str(5 << 20),
                    "--workspace-size", str(6 << 20), "--inodes", "999",
                    "--uid-base", "200000"], check=True)
    c = load(tmp_path / "b" / "config.json")
    pr = c["process"]
    assert c["root"] == {"path": str(rootfs), "readonly": True}
    assert pr["noNewPrivileges"] is True
    assert pr["user"] == {"uid": 0, "gid": 0}
    caps = pr["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    for v in caps.values():
        assert sorted(v) == ["CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    assert not [e for e in pr["env"] if "TOKEN" in e.upper()]
    lx = c["linux"]
    ns = {n["type"]: n for n in lx["namespaces"]}
    assert {"pid", "network", "ipc", "uts", "mount"} <= set(ns)
    assert all("path" not in n for n in ns.values())
    if runtime == "runc":
        assert "user" in ns
        for m in (lx["uidMappings"], lx["gidMappings"]):
            assert m == [{"containerID": 0, "hostID": 200000,
                          "size": 65536}]
        owner = 200000
    else:
        owner = 0
        assert {"type": "RLIMIT_NPROC", "hard": 77, "soft": 77} in \
            pr["rlimits"]
    # the runner's limits: the last of a repeated option wins, so each
    # appears once
    args = pr["args"]
    opt = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--")
           and i + 1 < len(args)}
    assert args.count("--nproc-limit") == 1
    assert opt["--mem-limit"] == str((100 << 20) * 3 // 4)
    if runtime == "runc":
        assert opt["--nproc-limit"] == "61"
        assert "--mem-guard" not in args
    else:
        # one process per 8 MiB of memory (12), within pids - 16; the
        # whole sandbox held to its memory by the runner
        assert opt["--nproc-limit"] == "12"
        assert opt["--mem-guard"] == str(100 << 20)
    for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list",
              "/sys/firmware", "/proc/scsi"):
        assert p in lx["maskedPaths"]
    for p in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq"):
        assert p in lx["readonlyPaths"]
    r = lx["resources"]
    assert r["memory"] == {"limit": 100 << 20, "swap": 100 << 20}
    assert r["pids"] == {"limit": 77}
    assert r["cpu"] == {"period": 100000, "quota": 50000}
    binds = [m for m in c["mounts"] if m["type"] == "bind"]
    assert binds == [{"destination": "/run/llmsafespace", "type": "bind",
                      "source": str(run_dir),
                      "options": ["rbind", "rw", "nosuid", "nodev",
                                  "noexec"]}]
    tm = {m["destination"]: m["options"] for m in c["mounts"]
          if m["type"] == "tmpfs"}
    assert "size=%d" % (5 << 20) in tm["/tmp"]
    assert "size=%d" % (6 << 20) in tm["/workspace"]
    assert "nr_inodes=999" in tm["/tmp"] and "nr_inodes=999" in \
        tm["/workspace"]
    sc = lx["seccomp"]
    prof = load(os.path.join(SECCOMP, "default.json"))
    assert sc["defaultAction"] == prof["defaultAction"]
    assert len(sc["syscalls"]) == len(prof["syscalls"])
    st = os.stat(run_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == owner
    st = os.stat(run_dir / "token")
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == owner
    assert (run_dir / "token").read_text() == "s3cret"
    assert pr["args"][0] == "/usr/local/bin/llmsafespace-runner"
    assert pr["args"][pr["args"].index("--exec-uid") + 1] == "1000"
