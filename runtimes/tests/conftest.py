"""Shared fixtures of the runtimes' in-container tests.

Everything here drives real parts: the rootfs built by `make -C runtimes
rootfs`, bundles written by runtimes/oci/mkbundle, runc 1.1.5 and runsc
(gVisor) as installed by apt, and the runner binary built from
runtimes/runner.  Every container a test starts is deleted when the test
ends, pass or fail.
"""

import os
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "oci"))

import sandbox  # noqa: E402

RUNTIMES = os.path.dirname(HERE)
TOP = os.path.dirname(RUNTIMES)
BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
ROOTFS = os.path.join(BUILD, "rootfs")
RUNNER_BIN = os.path.join(BUILD, "runner", "llmsafespace-runner")
MKBUNDLE = sandbox.MKBUNDLE
SECCOMP = os.path.join(RUNTIMES, "seccomp")
TOKEN_HEADER = "X-LLMSafeSpace-Runner-Token"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="runc, runsc and debootstrap need root (run as root)")


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="lss-runtimes-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def containers(workdir):
    """Factory: containers(runtime, name=..., command=[...], **limits)."""
    made = []

    def make(runtime, **kw):
        try:
            c = sandbox.Container(ROOTFS, workdir, runtime, **kw)
        except sandbox.NoRootfs as e:
            pytest.fail(str(e))
        made.append(c)
        return c

    yield make
    for c in made:
        c.delete()


@pytest.fixture(params=["runc", "runsc"])
def runtime(request):
    if not IS_ROOT:
        pytest.skip("runc and runsc need root (run as root)")
    return request.param


def wait_until(pred, timeout=20.0, step=0.02):
    """Bounded poll; returns the predicate's last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)
