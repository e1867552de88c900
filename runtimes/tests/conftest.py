"""Shared fixtures of the runtimes' in-container tests.

Everything here drives real parts: the rootfs built by `make -C runtimes
rootfs`, bundles written by runtimes/oci/mkbundle, runc 1.1.5 and runsc
(gVisor) as installed by apt, and the runner binary built from
runtimes/runner.  Every container a test starts is deleted when the test
ends, pass or fail.
"""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = os.path.dirname(HERE)
TOP = os.path.dirname(RUNTIMES)
BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
ROOTFS = os.path.join(BUILD, "rootfs")
RUNNER_BIN = os.path.join(BUILD, "runner", "llmsafespace-runner")
MKBUNDLE = os.path.join(RUNTIMES, "oci", "mkbundle")
SECCOMP = os.path.join(RUNTIMES, "seccomp")
TOKEN_HEADER = "X-LLMSafeSpace-Runner-Token"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="runc, runsc and debootstrap need root (run as root)")

RUNSC_FLAGS = ["--ignore-cgroups", "--oci-seccomp", "--network=none",
               "--host-uds=create"]


def rootfs(name):
    path = os.path.join(ROOTFS, name)
    if not os.path.isdir(os.path.join(path, "usr")):
        pytest.fail("no rootfs at %s: run `make -C runtimes rootfs`" % path)
    return path


class Container:
    """One sandbox: bundle, run directory, token, and a running container.

    `start()` runs the container detached; `run()` runs it in the
    foreground to completion (for one-shot commands).  `delete()` is
    idempotent and is what the fixture calls on teardown.
    """

    def __init__(self, workdir, runtime, name="python", command=None,
                 **limits):
        self.runtime = runtime
        self.dir = tempfile.mkdtemp(prefix="c-", dir=workdir)
        self.id = "lss-t-%s" % secrets.token_hex(6)
        self.bundle = os.path.join(self.dir, "bundle")
        self.run_dir = os.path.join(self.dir, "run")
        self.state = os.path.join(workdir, "runsc-state")
        self.token = secrets.token_urlsafe(32)
        self.log = os.path.join(self.dir, "container.log")
        self.started = False
        tok = os.path.join(self.dir, "token.src")
        with open(tok, "w") as f:
            f.write(self.token)
        argv = [MKBUNDLE, "--rootfs", rootfs(name), "--bundle", self.bundle,
                "--run-dir", self.run_dir, "--token-file", tok,
                "--runtime", runtime, "--id", self.id]
        for k, v in limits.items():
            if k == "runner_args":
                for a in v:
                    argv.append("--runner-arg=" + a)
                continue
            argv += ["--" + k.replace("_", "-"), str(v)]
        if command:
            argv += ["--"] + command
        subprocess.run(argv, check=True)
        os.unlink(tok)

    @property
    def socket(self):
        return os.path.join(self.run_dir, "runner.sock")

    def _argv(self, detach):
        if self.runtime == "runc":
            a = ["runc", "run", "--bundle", self.bundle]
            if detach:
                a.append("--detach")
            return a + [self.id]
        a = [MKBUNDLE, "cgroup-exec", "--bundle", self.bundle, "--",
             "runsc", "--root", self.state] + RUNSC_FLAGS + ["run"]
        if detach:
            a.append("--detach")
        return a + ["--bundle", self.bundle, self.id]

    def run(self, timeout=60, input=None):
        """Run to completion; returns CompletedProcess (text)."""
        self.started = True
        return subprocess.run(self._argv(False), capture_output=True,
                              text=True, timeout=timeout, input=input)

    def start(self, timeout=60):
        self.started = True
        with open(self.log, "ab") as log:
            subprocess.run(self._argv(True), stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, check=True,
                           timeout=timeout)

    def state_json(self):
        if self.runtime == "runc":
            a = ["runc", "state", self.id]
        else:
            a = ["runsc", "--root", self.state, "state", self.id]
        r = subprocess.run(a, capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def logs(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def delete(self):
        if self.started:
            if self.runtime == "runc":
                subprocess.run(["runc", "delete", "--force", self.id],
                               capture_output=True, timeout=30)
            else:
                subprocess.run(["runsc", "--root", self.state, "delete",
                                "--force", self.id],
                               capture_output=True, timeout=30)
                subprocess.run([MKBUNDLE, "cgroup-remove", "--bundle",
                                self.bundle], capture_output=True)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


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
        c = Container(workdir, runtime, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.delete()


def runtime_params():
    return [pytest.param("runc", id="runc"),
            pytest.param("runsc", id="runsc")]


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
