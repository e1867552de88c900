"""The controller's Kubernetes client against a real API server: the
control plane of t/cluster (kube-apiserver over etcd, built from the
Kubernetes modules), started once for this file.

LSS_CLUSTER_BIN names the harness (default build/cluster/lss-cluster).
Without it these tests are skipped, unless LSS_REQUIRE_CLUSTER=1 makes
that a failure.  The client is lsc-kubectl-lite; kubectl, when present,
applies crds/ for the custom resource tests.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from kube_cli import BUILD, CM, KCTL, TOP, Watch, run

CLUSTER_BIN = os.environ.get("LSS_CLUSTER_BIN",
                             os.path.join(BUILD, "cluster", "lss-cluster"))
REQUIRE = os.environ.get("LSS_REQUIRE_CLUSTER") == "1"
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")
NS_RES = "v1/namespaces/Namespace"
SANDBOX = "llmsafespace.dev/v1/sandboxes/Sandbox"
EVENTS = "events.k8s.io/v1/events/Event"

if not os.path.exists(CLUSTER_BIN) and REQUIRE:
    raise RuntimeError("LSS_CLUSTER_BIN %s: no such harness" % CLUSTER_BIN)
pytestmark = pytest.mark.skipif(
    not os.path.exists(CLUSTER_BIN) or not os.path.exists(KCTL),
    reason="no control plane harness at %s (LSS_CLUSTER_BIN) or no %s"
    % (CLUSTER_BIN, KCTL))


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="lsc-kube-cluster-")
    log = open(os.path.join(d, "harness.log"), "w+")
    p = subprocess.Popen([CLUSTER_BIN, "--dir", d, "--port", "0"],
                         stdout=log, stderr=subprocess.STDOUT)
    ready = os.path.join(d, "ready")
    deadline = time.monotonic() + 240
    try:
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError("lss-cluster not ready:\n" +
                                     log.read()[-4000:])
            time.sleep(0.2)
        with open(ready) as f:
            server = f.read().strip()
        yield {"dir": d, "kubeconfig": os.path.join(d, "kubeconfig"),
               "server": server}
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ns(cluster):
    """A namespace of the test's own (made through the client)."""
    name = "t-" + uuid.uuid4().hex[:10]
    out = run(cluster["kubeconfig"], "--cluster-scoped", NS_RES, "create",
              json.dumps({"metadata": {"name": name}}))
    assert out["rc"] == "ok", out
    yield name
    run(cluster["kubeconfig"], "--cluster-scoped", NS_RES, "delete", name)


def kc(cluster, ns, *args):
    return run(cluster["kubeconfig"], "-n", ns, *args)


def ours(keys):
    """Keys of a namespace's ConfigMaps but the one kube-controller-manager
    puts in every namespace."""
    return sorted(k for k in keys if not k.endswith("/kube-root-ca.crt"))


def cm(name, data=None, labels=None):
    return json.dumps({"metadata": {"name": name, "labels": labels or {}},
                       "data": data or {}})


def test_configmap_crud(cluster, ns):
    out = kc(cluster, ns, CM, "create", cm("a", {"k": "v"}))
    assert out["rc"] == "ok", out
    uid = out["object"]["metadata"]["uid"]
    assert out["object"]["metadata"]["namespace"] == ns

    out = kc(cluster, ns, CM, "get", "a")
    assert out["rc"] == "ok" and out["object"]["data"] == {"k": "v"}

    # merge patch: a key added, a key removed with null
    out = kc(cluster, ns, CM, "patch", "a",
             '{"data": {"k2": "v2", "k": null}}')
    assert out["rc"] == "ok", out
    assert out["object"]["data"] == {"k2": "v2"}

    # a delete whose uid precondition does not hold is a conflict
    out = kc(cluster, ns, CM, "delete", "a", "--uid", "not-" + uid)
    assert out["rc"] == "conflict" and out["code"] == 409, out
    out = kc(cluster, ns, CM, "delete", "a", "--uid", uid,
             "--propagation", "Background")
    assert out["rc"] == "ok", out
    out = kc(cluster, ns, CM, "get", "a")
    assert out["rc"] == "not found" and out["code"] == 404
    assert out["reason"] == "NotFound"
    out = kc(cluster, ns, CM, "delete", "a")
    assert out["rc"] == "not found"


def test_stale_write_is_409(cluster, ns):
    first = kc(cluster, ns, CM, "create", cm("c", {"n": "1"}))["object"]
    out = kc(cluster, ns, CM, "patch", "c", '{"data": {"n": "2"}}')
    assert out["rc"] == "ok"
    # the first version, written back whole: stale
    first["data"]["n"] = "3"
    out = kc(cluster, ns, CM, "update", "c", json.dumps(first))
    assert out["rc"] == "conflict" and out["code"] == 409, out
    assert out["reason"] == "Conflict"
    # a merge patch that names the stale version too
    rv = first["metadata"]["resourceVersion"]
    out = kc(cluster, ns, CM, "patch", "c", json.dumps(
        {"metadata": {"resourceVersion": rv}, "data": {"n": "4"}}))
    assert out["rc"] == "conflict" and out["code"] == 409, out
    # re-read and retry: accepted
    cur = kc(cluster, ns, CM, "get", "c")["object"]
    cur["data"]["n"] = "5"
    out = kc(cluster, ns, CM, "update", "c", json.dumps(cur))
    assert out["rc"] == "ok" and out["object"]["data"] == {"n": "5"}


def test_invalid_is_422_with_causes(cluster, ns):
    out = kc(cluster, ns, CM, "create", json.dumps(
        {"metadata": {"name": "Not_Valid"}, "data": {"a b": "x"}}))
    assert out["rc"] == "invalid" and out["code"] == 422, out
    assert out["reason"] == "Invalid" and out["kind"] == "ConfigMap"
    fields = sorted(c["field"] for c in out["causes"])
    assert "metadata.name" in fields and "data[a b]" in fields, out
    assert all(c["message"] for c in out["causes"])


def test_list_selector_and_pages(cluster, ns):
    for i in range(7):
        kc(cluster, ns, CM, "create", cm("l%d" % i, labels={"app": "x"}))
    kc(cluster, ns, CM, "create", cm("other", labels={"app": "y"}))
    out = kc(cluster, ns, CM, "list", "--selector", "app=x", "--limit", "3")
    assert out["rc"] == "ok", out
    assert out["object"]["pages"] == 3
    assert sorted(out["object"]["names"]) == ["l%d" % i for i in range(7)]
    out = kc(cluster, ns, CM, "list", "--selector", "app in (y)")
    assert out["object"]["names"] == ["other"]


def test_event(cluster, ns):
    kc(cluster, ns, CM, "create", cm("ev"))
    out = kc(cluster, ns, CM, "event", "ev", "Normal", "Tested",
             "Test", "an event from the client")
    assert out["rc"] == "ok", out
    out = kc(cluster, ns, EVENTS, "list")
    names = out["object"]["names"]
    assert len(names) == 1 and names[0].startswith("ev."), out
    ev = kc(cluster, ns, EVENTS, "get", names[0])["object"]
    assert ev["reason"] == "Tested" and ev["action"] == "Test"
    assert ev["regarding"]["kind"] == "ConfigMap"
    assert ev["regarding"]["name"] == "ev"
    assert ev["reportingController"] == "llmsafespace.dev/controller"
    out = kc(cluster, ns, CM, "event", "ev", "Odd", "x", "y", "z")
    assert out["rc"] == "bad argument"


def test_watch_sees_changes(cluster, ns):
    kc(cluster, ns, CM, "create", cm("before"))
    w = Watch(cluster["kubeconfig"], "-n", ns, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        assert ours(e["key"] for e in w.events("ADDED")) == [ns + "/before"]
        kc(cluster, ns, CM, "create", cm("w1"))
        kc(cluster, ns, CM, "patch", "w1", '{"data": {"x": "1"}}')
        kc(cluster, ns, CM, "delete", "before")
        w.until(lambda l: l.get("event") == "DELETED", what="DELETED")
    finally:
        final = w.stop()
    assert [e["key"] for e in w.events("MODIFIED")] == [ns + "/w1"]
    assert [e["key"] for e in w.events("DELETED")] == [ns + "/before"]
    assert ours(final["cache"]) == [ns + "/w1"]
    assert final["stats"]["skipped"] == 0
    assert final["stats"]["lists"] == 1


def test_watch_all_namespaces_with_selector(cluster, ns):
    """An informer over every namespace, narrowed by a label selector
    (sent with the list and the watch)."""
    other = "t-" + uuid.uuid4().hex[:10]
    run(cluster["kubeconfig"], "--cluster-scoped", NS_RES, "create",
        json.dumps({"metadata": {"name": other}}))
    tag = {"lsc-test": ns}
    kc(cluster, ns, CM, "create", cm("s1", labels=tag))
    w = Watch(cluster["kubeconfig"], "-n", "", "--selector",
              "lsc-test=" + ns, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        kc(cluster, other, CM, "create", cm("s2", labels=tag))
        kc(cluster, other, CM, "create", cm("untagged"))
        kc(cluster, ns, CM, "create", cm("s3", labels=tag))
        w.until(lambda l: l.get("key") == ns + "/s3", what="s3")
    finally:
        final = w.stop()
        run(cluster["kubeconfig"], "--cluster-scoped", NS_RES, "delete",
            other)
    assert sorted(final["cache"]) == sorted(
        [ns + "/s1", other + "/s2", ns + "/s3"])


def test_watch_from_an_old_version_ends_true(cluster, ns):
    """A watch resumed from an ancient version: a compacted server answers
    410 and the informer relists; a fresh one (this harness) replays from
    it.  Either way the cache ends as the truth.  (The 410 path itself is
    test_kube_faults.py's.)"""
    kc(cluster, ns, CM, "create", cm("old"))
    kc(cluster, ns, CM, "create", cm("gone"))
    kc(cluster, ns, CM, "delete", "gone")
    w = Watch(cluster["kubeconfig"], "--start-rv", "1", "-n", ns, CM)
    try:
        w.until(lambda l: l.get("key") == ns + "/old"
                or l.get("synced"), timeout=60, what="old")
        kc(cluster, ns, CM, "create", cm("new"))
        w.until(lambda l: l.get("key") == ns + "/new", what="new")
    finally:
        final = w.stop()
    assert ours(final["cache"]) == [ns + "/new", ns + "/old"], final
    assert final["stats"]["skipped"] == 0


class CutProxy:
    """A TCP relay to the API server whose connections a test can cut."""

    def __init__(self, host, port):
        self.target = (host, port)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
                self.accepted += 1
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self):
        self.ls.close()
        self.cut()


def via_proxy(cluster, tmp_path):
    """A proxy to the API server and a kubeconfig that goes through it."""
    host, port = cluster["server"].split("//")[1].rsplit(":", 1)
    proxy = CutProxy(host, int(port))
    with open(cluster["kubeconfig"]) as f:
        text = f.read()
    via = tmp_path / "kubeconfig"
    via.write_text(text.replace(cluster["server"],
                                "https://%s:%d" % (host, proxy.port)))
    return proxy, str(via)


def test_connection_reuse(cluster, ns, tmp_path):
    kc(cluster, ns, CM, "create", cm("r"))
    proxy, via = via_proxy(cluster, tmp_path)
    try:
        out = run(via, "--qps", "500", "--burst", "500", "-n", ns, CM,
                  "repeat", "50", "r")
    finally:
        proxy.close()
    assert out["rc"] == "ok" and out["object"]["done"] == 50, out
    # one TCP and TLS handshake for fifty requests
    assert proxy.accepted == 1


def test_watch_survives_cuts(cluster, ns, tmp_path):
    proxy, via = via_proxy(cluster, tmp_path)
    kc(cluster, ns, CM, "create", cm("k0"))
    w = Watch(via, "-n", ns, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        for i in range(1, 4):
            time.sleep(0.5)
            proxy.cut()
            # written while the stream is down: heard once it is back
            kc(cluster, ns, CM, "create", cm("k%d" % i))
        kc(cluster, ns, CM, "delete", "k0")
        w.until(lambda l: l.get("event") == "DELETED", timeout=60,
                what="DELETED after the cuts")
        w.until(lambda l: len(ours(e["key"] for e in w.events("ADDED")))
                >= 4, timeout=60, what="every ADDED")
    finally:
        final = w.stop()
        proxy.close()
    assert ours(final["cache"]) == [ns + "/k%d" % i for i in (1, 2, 3)]
    assert final["stats"]["watches"] >= 2, final
    assert w.events("DELETED")[0]["key"] == ns + "/k0"
    assert proxy.accepted >= 2


@pytest.fixture(scope="module")
def crds(cluster):
    """crds/sandbox.yaml served (crds/ is tested on its own elsewhere: a
    definition the server refuses skips these tests, with its answer)."""
    if KUBECTL is None:
        pytest.skip("no kubectl to apply crds/")
    env = dict(os.environ, KUBECONFIG=cluster["kubeconfig"])
    p = subprocess.run([KUBECTL, "apply", "-f",
                        os.path.join(TOP, "crds", "sandbox.yaml")],
                       env=env, capture_output=True, timeout=60)
    if p.returncode != 0:
        pytest.skip("crds/sandbox.yaml refused: %s" % p.stderr.decode())
    subprocess.run([KUBECTL, "wait", "--for=condition=Established",
                    "--timeout=60s", "crd/sandboxes.llmsafespace.dev"],
                   env=env, check=True, capture_output=True, timeout=90)
    # discovery of a new group takes a moment to reach the handlers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = run(cluster["kubeconfig"], "-n", "default", SANDBOX, "list")
        if out["rc"] == "ok":
            return
        time.sleep(0.5)
    raise AssertionError("sandboxes not served: %s" % out)


def test_custom_resource(cluster, ns, crds):
    out = kc(cluster, ns, SANDBOX, "create", json.dumps(
        {"apiVersion": "llmsafespace.dev/v1", "kind": "Sandbox",
         "metadata": {"name": "sb1"}, "spec": {"runtime": "python"}}))
    assert out["rc"] == "ok", out
    gen = out["object"]["metadata"]["generation"]

    # merge patch on a custom resource (strategic merge would be 415)
    out = kc(cluster, ns, SANDBOX, "patch", "sb1", '{"spec": {"timeout": 60}}')
    assert out["rc"] == "ok", out
    assert out["object"]["spec"]["timeout"] == 60
    assert out["object"]["metadata"]["generation"] == gen + 1

    # status only through its subresource, which leaves spec alone
    out = kc(cluster, ns, SANDBOX, "patch", "sb1",
             '{"status": {"phase": "Running"}}')
    assert out["rc"] == "ok" and "status" not in out["object"], out
    out = kc(cluster, ns, SANDBOX, "patch", "sb1", "--sub", "status",
             '{"status": {"phase": "Running"}, "spec": {"timeout": 5}}')
    assert out["rc"] == "ok", out
    assert out["object"]["status"]["phase"] == "Running"
    assert out["object"]["spec"]["timeout"] == 60
    assert out["object"]["metadata"]["generation"] == gen + 1

    # status update (PUT) with a stale version: 409
    stale = out["object"]
    kc(cluster, ns, SANDBOX, "patch", "sb1", "--sub", "status",
       '{"status": {"phase": "Terminating"}}')
    stale["status"]["phase"] = "Failed"
    out = kc(cluster, ns, SANDBOX, "update", "sb1", "--sub", "status",
             json.dumps(stale))
    assert out["rc"] == "conflict" and out["code"] == 409, out

    # the schema's refusal names the field
    out = kc(cluster, ns, SANDBOX, "patch", "sb1", '{"spec": {"timeout": 0}}')
    assert out["rc"] == "invalid" and out["code"] == 422, out
    assert any(c["field"] == "spec.timeout" for c in out["causes"]), out

    out = kc(cluster, ns, SANDBOX, "delete", "sb1")
    assert out["rc"] == "ok", out


def test_custom_resource_watch(cluster, ns, crds):
    w = Watch(cluster["kubeconfig"], "-n", ns, SANDBOX)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        # no apiVersion and kind: the client fills them in from the kind
        out = kc(cluster, ns, SANDBOX, "create", json.dumps(
            {"metadata": {"name": "sw"}, "spec": {"runtime": "python"}}))
        assert out["rc"] == "ok", out
        out = kc(cluster, ns, SANDBOX, "patch", "sw", "--sub", "status",
                 '{"status": {"phase": "Pending"}}')
        assert out["rc"] == "ok", out
        w.until(lambda l: l.get("event") == "MODIFIED", what="MODIFIED")
    finally:
        final = w.stop()
    assert list(final["cache"]) == [ns + "/sw"]
    assert final["stats"]["skipped"] == 0


def test_in_cluster_service_account(cluster, ns, tmp_path):
    """The client as a Pod's would be: the token of a ServiceAccount, the
    cluster's CA as kube-root-ca.crt publishes it, the namespace, and
    KUBERNETES_SERVICE_HOST/_PORT.  Without RBAC it is refused (403
    Forbidden, decoded); with a Role bound, it lists."""
    out = kc(cluster, ns, "v1/serviceaccounts/ServiceAccount", "create",
             json.dumps({"metadata": {"name": "lsc"}}))
    assert out["rc"] == "ok", out
    out = kc(cluster, ns, "v1/secrets/Secret", "create", json.dumps(
        {"metadata": {"name": "lsc-token", "annotations": {
            "kubernetes.io/service-account.name": "lsc"}},
         "type": "kubernetes.io/service-account-token"}))
    assert out["rc"] == "ok", out
    deadline = time.monotonic() + 60
    while True:
        sec = kc(cluster, ns, "v1/secrets/Secret", "get", "lsc-token")
        root = kc(cluster, ns, CM, "get", "kube-root-ca.crt")
        if (sec["object"].get("data", {}).get("token")
                and root["rc"] == "ok"):
            break
        assert time.monotonic() < deadline, (sec, root)
        time.sleep(0.5)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_bytes(
        base64.b64decode(sec["object"]["data"]["token"]))
    (sa / "ca.crt").write_text(root["object"]["data"]["ca.crt"])
    (sa / "namespace").write_text(ns)
    host, port = cluster["server"].split("//")[1].rsplit(":", 1)
    env = dict(os.environ, KUBERNETES_SERVICE_HOST=host,
               KUBERNETES_SERVICE_PORT=port)

    out = run(None, "--in-cluster", str(sa), CM, "list", env=env)
    assert out["rc"] == "refused" and out["code"] == 403, out
    assert out["reason"] == "Forbidden"
    assert "system:serviceaccount:%s:lsc" % ns in out["message"]

    out = kc(cluster, ns, "rbac.authorization.k8s.io/v1/roles/Role",
             "create", json.dumps({"metadata": {"name": "read"}, "rules": [
                 {"apiGroups": [""], "resources": ["configmaps"],
                  "verbs": ["get", "list", "watch"]}]}))
    assert out["rc"] == "ok", out
    out = kc(cluster, ns,
             "rbac.authorization.k8s.io/v1/rolebindings/RoleBinding",
             "create", json.dumps({
                 "metadata": {"name": "read"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                             "kind": "Role", "name": "read"},
                 "subjects": [{"kind": "ServiceAccount", "name": "lsc",
                               "namespace": ns}]}))
    assert out["rc"] == "ok", out
    deadline = time.monotonic() + 30
    while True:
        # no -n: the namespace file's
        out = run(None, "--in-cluster", str(sa), CM, "list", env=env)
        if out["rc"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out["rc"] == "ok", out
    assert "kube-root-ca.crt" in out["object"]["names"]
    # reading is all it may do
    out = run(None, "--in-cluster", str(sa), CM, "create", cm("no"),
              env=env)
    assert out["rc"] == "refused" and out["code"] == 403, out


def test_quiet_watch_gets_bookmarks(cluster, ns):
    """allowWatchBookmarks: the server moves a quiet watch's version on
    (about once a minute), so a resume after a cut starts from a recent
    version rather than one the server may have forgotten."""
    w = Watch(cluster["kubeconfig"], "-n", ns, CM, seconds=150)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        listed = w.until(lambda l: "stats" in l and l["stats"]["watches"])
        first = int(listed["stats"]["resourceVersion"])
        # other namespaces' writes move the global version on
        kc(cluster, "default", CM, "create", cm("bm-" + ns))
        mark = w.until(lambda l: l.get("stats", {}).get("bookmarks", 0) > 0,
                       timeout=120, what="a bookmark")
    finally:
        final = w.stop()
        kc(cluster, "default", CM, "delete", "bm-" + ns)
    assert int(mark["stats"]["resourceVersion"]) > first
    assert final["stats"]["events"] == 0
