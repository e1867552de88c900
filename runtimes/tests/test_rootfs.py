"""The rootfs build: cache hit, runner replacement, content of the tree.

The cached tree is reused through a hard-linked copy, so these tests take
a second and never touch build/rootfs itself: mkrootfs.sh replaces files
by rename, which gives the copy new inodes and leaves the original alone.
"""

import os
import shutil
import stat
import subprocess

import pytest

from conftest import ROOTFS, RUNNER_BIN, RUNTIMES, needs_root

pytestmark = needs_root

MKROOTFS = os.path.join(RUNTIMES, "base", "mkrootfs.sh")
DEPS = os.path.join(RUNTIMES, "runner", "RUNTIME_DEPS")


def mkrootfs(out, runner_dir, name="python"):
    return subprocess.run(["sh", MKROOTFS, name,
                           os.path.join(RUNTIMES, name), out, runner_dir,
                           DEPS], capture_output=True, text=True, timeout=600)


@pytest.fixture
def linked_copy(tmp_path):
    src = os.path.join(ROOTFS, "python")
    if not os.path.isfile(src + ".key"):
        pytest.fail("no cached python rootfs: run make -C runtimes rootfs")
    out = tmp_path / "rootfs"
    out.mkdir()
    subprocess.run(["cp", "-al", src, str(out / "python")], check=True)
    shutil.copy(src + ".key", out / "python.key")
    return out


def test_cache_hit_and_runner_replaced(linked_copy, tmp_path):
    out = str(linked_copy)
    orig = os.path.join(ROOTFS, "python", "usr/local/bin/llmsafespace-runner")
    before = os.stat(orig)
    # a "new build" of the runner: another real executable in its place
    fake = tmp_path / "runner"
    fake.mkdir()
    zyg = os.path.join(os.path.dirname(RUNNER_BIN), "llmsafespace-zygote")
    shutil.copy(zyg, fake / "llmsafespace-runner")
    shutil.copy(zyg, fake / "llmsafespace-zygote")

    r = mkrootfs(out, str(fake))
    assert r.returncode == 0, r.stderr
    assert "cached" in r.stdout
    assert "debootstrap" not in r.stdout
    assert "llmsafespace-runner installed" in r.stdout
    dst = linked_copy / "python/usr/local/bin/llmsafespace-runner"
    with open(dst, "rb") as a, open(zyg, "rb") as b:
        assert a.read() == b.read()
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o755
    after = os.stat(orig)
    assert (after.st_ino, after.st_mtime) == (before.st_ino, before.st_mtime)

    # unchanged binaries: nothing to do
    r = mkrootfs(out, str(fake))
    assert r.returncode == 0
    assert "installed" not in r.stdout


def test_tree_content():
    root = os.path.join(ROOTFS, "python")
    with open(os.path.join(root, "etc/passwd")) as f:
        users = {l.split(":")[0]: l.split(":") for l in f}
    assert users["sandbox"][2:4] == ["1000", "1000"]
    assert users["sandbox"][5] == "/workspace"
    st = os.stat(os.path.join(root, "run/llmsafespace"))
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert os.path.getsize(os.path.join(root, "etc/resolv.conf")) == 0
    assert not os.listdir(os.path.join(root, "usr/share/doc"))
    assert not os.listdir(os.path.join(root, "var/lib/apt/lists"))
    setid = subprocess.run(["find", root, "-xdev", "-type", "f", "-perm",
                            "/6000"], capture_output=True, text=True)
    assert setid.stdout == ""
    for b in ("llmsafespace-runner", "llmsafespace-zygote"):
        assert os.access(os.path.join(root, "usr/local/bin", b), os.X_OK)
    ldd = subprocess.run(["chroot", root, "ldd",
                          "/usr/local/bin/llmsafespace-runner",
                          "/usr/local/bin/llmsafespace-zygote"],
                         capture_output=True, text=True)
    assert "not found" not in ldd.stdout + ldd.stderr
    # the python runtime carries no Node.js, the base runtime no Python
    assert not os.path.exists(os.path.join(root, "usr/bin/node"))
    assert not os.path.exists(os.path.join(ROOTFS, "base/usr/bin/python3"))
    assert os.path.exists(os.path.join(ROOTFS, "nodejs/usr/bin/npm"))
