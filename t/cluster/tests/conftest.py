"""The control plane of t/cluster (build/cluster/lss-cluster), started once
for the session, and kubectl pointed at it."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.environ.get("BUILD", os.path.join(TOP, "build"))
HARNESS = os.environ.get("LSS_CLUSTER", os.path.join(BUILD, "cluster", "lss-cluster"))
FAULTPROXY = os.path.join(BUILD, "cluster", "lss-faultproxy")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or \
    os.path.join(BUILD, "cluster", "kubectl")
CRDS = os.path.join(TOP, "crds")


class ControlPlane:
    """One lss-cluster process and its directory."""

    def __init__(self, dir):
        self.dir = dir
        self.log = open(os.path.join(dir, "stdout.log"), "w+")
        self.proc = subprocess.Popen(
            [HARNESS, "--dir", dir, "--port", "0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.kubeconfig = os.path.join(dir, "kubeconfig")
        self.kubectl_path = KUBECTL
        self.server = None

    def wait_ready(self, timeout=180):
        ready = os.path.join(self.dir, "ready")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("lss-cluster exited %d:\n%s" %
                                     (self.proc.returncode, self.tail()))
            if os.path.exists(ready):
                with open(ready) as f:
                    self.server = f.read().strip()
                if self.server:
                    return
            time.sleep(0.2)
        raise AssertionError("lss-cluster not ready in %d s:\n%s" %
                             (timeout, self.tail()))

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the harness and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("lss-cluster ignored %s for %d s" %
                                     (sig.name, timeout))
        self.log.close()
        return self.proc.returncode

    def tail(self, n=40):
        out = []
        for name in ("stdout.log", "control-plane.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    out += ["== " + name] + f.read().splitlines()[-n:]
        return "\n".join(out)

    def kubectl(self, *args, input=None, check=True, timeout=60):
        """Runs kubectl; returns the completed process (check: exit 0)."""
        p = subprocess.run([KUBECTL, "--kubeconfig", self.kubeconfig] +
                           list(args), input=input, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError("kubectl %s: %d\n%s%s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest, *args):
        return self.kubectl("apply", "-f", "-", *args,
                            input=json.dumps(manifest))


def start(dir):
    cp = ControlPlane(dir)
    try:
        cp.wait_ready()
    except BaseException:
        cp.stop(signal.SIGKILL)
        raise
    return cp


@pytest.fixture(scope="session")
def cluster():
    assert os.access(HARNESS, os.X_OK), "build it first: make cluster-harness"
    assert os.access(KUBECTL, os.X_OK), KUBECTL
    dir = tempfile.mkdtemp(prefix="lss-cluster-")
    cp = start(dir)
    yield cp
    code = cp.stop()
    assert code == 0, cp.tail()
    shutil.rmtree(dir, ignore_errors=True)


@pytest.fixture(scope="session")
def crds(cluster):
    """kubectl apply -f crds/, once; the output of the apply."""
    out = cluster.kubectl("apply", "-f", CRDS).stdout
    names = ["crd/" + line.split("/")[1].split()[0]
             for line in out.splitlines()]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *names)
    return out


@pytest.fixture
def ns(cluster, crds):
    """A namespace of its own for one test."""
    name = "t-" + uuid.uuid4().hex[:8]
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false",
                    check=False)


def poll(what, fn, timeout=60, every=0.25):
    """fn() until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("no %s after %d s" % (what, timeout))
        time.sleep(every)
