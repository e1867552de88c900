"""lss-faultproxy between kubectl (or curl) and the real API server: it
passes requests through under the client's own identity, and on demand
answers 429 with Retry-After (client-go waits and retries), 500, 410 at a
watch's start, ends a watch with an ERROR event carrying 410, cuts a
watch, and delays a request."""

import json
import os
import re
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import FAULTPROXY, poll

EVENTS = {"ADDED", "MODIFIED", "DELETED"}


class FaultProxy:
    def __init__(self, cluster):
        self.cluster = cluster
        self.state = os.path.join(cluster.dir, "faultproxy")
        self.log = os.path.join(cluster.dir, "faultproxy.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([FAULTPROXY, "--dir", cluster.dir],
                                         stdout=log, stderr=log)
        poll("lss-faultproxy ready", lambda: self.proc.poll() is not None
             or os.path.exists(self.state), 30, 0.05)
        assert self.proc.poll() is None, open(self.log).read()
        with open(self.state) as f:
            self.url, self.control = f.read().split()

    def fault(self, **spec):
        req = urllib.request.Request(self.control + "/faults", method="POST",
                                     data=json.dumps(spec).encode())
        return urllib.request.urlopen(req).status

    def faults(self):
        return json.load(urllib.request.urlopen(self.control + "/faults"))

    def clear(self):
        req = urllib.request.Request(self.control + "/faults",
                                     method="DELETE")
        urllib.request.urlopen(req)

    def kubectl(self, *args, kubeconfig="kubeconfig", check=True):
        try:
            p = subprocess.run(
                [self.cluster.kubectl_path, "--kubeconfig",
                 os.path.join(self.cluster.dir, kubeconfig), "--server",
                 self.url] + list(args),
                capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("kubectl %s: timed out\n%s\n%s" % (
                args, e.stderr, open(self.log).read()))
        if check:
            assert p.returncode == 0, p.stderr + open(self.log).read()
        return p

    def curl(self, path, *args):
        d = self.cluster.dir
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", d + "/ca.crt",
             "--cert", d + "/admin.crt", "--key", d + "/admin.key"]
            + list(args) + [self.url + path],
            capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def proxy(cluster):
    fp = FaultProxy(cluster)
    yield fp
    fp.proc.send_signal(signal.SIGTERM)
    assert fp.proc.wait(10) == 0
    assert not os.path.exists(fp.state)


@pytest.fixture(autouse=True)
def no_faults(proxy):
    proxy.clear()
    yield
    proxy.clear()


def test_passes_through_as_the_client(proxy):
    out = proxy.kubectl("auth", "whoami").stdout
    assert "kubernetes-admin" in out and "system:masters" in out
    out = proxy.kubectl("auth", "whoami",
                        kubeconfig="controller-manager.kubeconfig").stdout
    assert "system:kube-controller-manager" in out
    assert "system:masters" not in out
    # the controller manager's own identity may not create namespaces
    p = proxy.kubectl("create", "namespace", "nope", "-v=6",
                      kubeconfig="controller-manager.kubeconfig", check=False)
    assert p.returncode != 0 and "Forbidden" in p.stderr
    # a client's Impersonate- header is not honoured on its behalf
    p = proxy.curl("/api/v1/namespaces", "-H",
                   "Impersonate-User: system:anonymous", "-o", "/dev/null",
                   "-w", "%{http_code}")
    assert p.stdout == "200"


def test_429_with_retry_after_is_waited_for(proxy):
    proxy.fault(path="^/api/v1/namespaces$", watch=False, action="status",
                status=429, retryAfter=1, count=2)
    t0 = time.monotonic()
    p = proxy.kubectl("get", "namespaces", "-v=6")
    took = time.monotonic() - t0
    # kubectl's -v=6 response lines, in its plain or structured form
    codes = re.findall(r'/api/v1/namespaces\?limit=500"? (?:status=")?'
                       r'(\d{3}) ', p.stderr)
    assert codes == ["429", "429", "200"], p.stderr
    assert took >= 2
    assert "default" in p.stdout
    assert proxy.faults()[0]["applied"] == 2


def test_500_fails_the_request_once(proxy):
    proxy.fault(path="^/api/v1/namespaces/default$", action="status",
                status=500, count=1)
    p = proxy.kubectl("get", "namespace", "default", check=False)
    assert p.returncode != 0 and "InternalError" in p.stderr
    assert "injected Internal Server Error" in p.stderr
    proxy.kubectl("get", "namespace", "default")


def test_410_at_watch_start(proxy):
    proxy.fault(path="^/api/v1/namespaces$", watch=True, action="status",
                status=410, count=1)
    p = proxy.curl("/api/v1/namespaces?watch=1", "-w", "\n%{http_code}")
    body, code = p.stdout.rsplit("\n", 1)
    assert code == "410"
    st = json.loads(body)
    assert (st["kind"], st["code"], st["reason"]) == ("Status", 410,
                                                      "Expired")
    # only the watch: a list passes
    assert proxy.curl("/api/v1/namespaces", "-o", "/dev/null", "-w",
                      "%{http_code}").stdout == "200"


def test_error_event_ends_a_watch(proxy):
    proxy.fault(path="^/api/v1/namespaces$", watch=True,
                action="error-event", after="500ms", count=1)
    p = proxy.curl("/api/v1/namespaces?watch=1&resourceVersion=0")
    assert p.returncode == 0, p.stderr
    events = [json.loads(l) for l in p.stdout.splitlines()]
    # whole events only (other tests' namespaces may come and go meanwhile)
    assert "ADDED" in {e["type"] for e in events[:-1]} <= EVENTS
    names = {e["object"]["metadata"]["name"] for e in events[:-1]}
    assert {"default", "kube-system"} <= names
    assert events[-1]["type"] == "ERROR"
    assert events[-1]["object"]["code"] == 410
    assert events[-1]["object"]["reason"] == "Expired"


@pytest.mark.parametrize("http,code", [("--http2", 92), ("--http1.1", 18)])
def test_cut_watch(proxy, http, code):
    proxy.fault(path="^/api/v1/namespaces$", watch=True, action="cut",
                after="500ms", count=1)
    t0 = time.monotonic()
    p = proxy.curl("/api/v1/namespaces?watch=1&resourceVersion=0", http)
    assert p.returncode == code, p.stderr
    assert 0.4 < time.monotonic() - t0 < 10
    types = {json.loads(l)["type"] for l in p.stdout.splitlines()}
    assert "ADDED" in types <= EVENTS


def test_cut_every_open_watch(proxy):
    d = proxy.cluster.dir
    w = subprocess.Popen(
        ["curl", "-sS", "-N", "--max-time", "30", "--cacert", d + "/ca.crt",
         "--cert", d + "/admin.crt", "--key", d + "/admin.key",
         proxy.url + "/api/v1/namespaces?watch=1&resourceVersion=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([w.stdout], [], [], 10)[0], "no event"
        assert json.loads(w.stdout.readline())["type"] == "ADDED"
        cut = urllib.request.Request(proxy.control + "/cut", method="POST")
        assert urllib.request.urlopen(cut).read().strip() == b"1"
        assert w.wait(10) == 92, w.stderr.read()
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()


def test_delay(proxy):
    proxy.fault(path="^/api/v1/namespaces/default$", action="delay",
                delay="1500ms", count=1)
    t0 = time.monotonic()
    proxy.kubectl("get", "namespace", "default")
    assert time.monotonic() - t0 >= 1.5
    t0 = time.monotonic()
    proxy.kubectl("get", "namespace", "default")
    assert time.monotonic() - t0 < 1.5


def test_invalid_fault_is_refused(proxy):
    for spec in ({"action": "explode"}, {"action": "cut"},
                 {"action": "status", "status": 200},
                 {"action": "delay", "delay": "soon"}):
        with pytest.raises(urllib.error.HTTPError) as e:
            proxy.fault(**spec)
        assert e.value.code == 422, spec
    assert proxy.faults() == []
