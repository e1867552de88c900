"""The Kubernetes client's transport under faults a real API server will
not produce on demand: connection reuse, the QPS bucket, 429 with
Retry-After, 5xx during a relist, 410 at a watch's start and as an ERROR
event, a cut stream, garbage and oversized lines, a server that is down;
and TLS with a client certificate and a token, inline or from files.
The server is kube_fault_server.FaultServer (scripted, not an API
server); the client is lsc-kubectl-lite.  No root needed.
"""

import base64
import os
import ssl
import subprocess
import time

import pytest

from kube_cli import CM, KCTL, Watch, run
from kube_fault_server import FaultServer

pytestmark = pytest.mark.skipif(not os.path.exists(KCTL),
                                reason="make -C controller first")


@pytest.fixture
def fake(tmp_path):
    srv = FaultServer()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        "clusters:\n- name: fake\n  cluster:\n"
        "    server: http://127.0.0.1:%d\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: me, "
        "namespace: ns}\n"
        "users:\n- name: me\n  user: {token: secret-token}\n" % srv.port)
    srv.kubeconfig = str(cfg)
    yield srv
    srv.close()


def test_crud_wire(fake):
    out = run(fake.kubeconfig, CM, "create",
              '{"metadata": {"name": "a"}, "data": {"k": "v"}}')
    assert out["rc"] == "ok" and out["object"]["metadata"]["name"] == "a"
    out = run(fake.kubeconfig, CM, "patch", "a", '{"data": {"k2": "v2"}}')
    assert out["rc"] == "ok"
    assert out["object"]["data"] == {"k": "v", "k2": "v2"}
    # merge patch, never strategic merge; the bearer token sent
    assert ("PATCH", "/api/v1/namespaces/ns/configmaps/a",
            "application/merge-patch+json") in fake.requests
    out = run(fake.kubeconfig, CM, "delete", "a")
    assert out["rc"] == "ok"
    out = run(fake.kubeconfig, CM, "get", "a")
    assert out["rc"] == "not found" and out["code"] == 404
    # names that would leave the path are refused before sending
    n = len(fake.requests)
    out = run(fake.kubeconfig, CM, "get", "../../secrets/x")
    assert out["rc"] == "bad argument" and len(fake.requests) == n


def test_one_connection_for_many_requests(fake):
    fake.put("a")
    out = run(fake.kubeconfig, "--qps", "1000", "--burst", "1000", CM,
              "repeat", "50", "a")
    assert out["rc"] == "ok" and out["object"]["done"] == 50
    assert fake.connections == 1


def test_qps_and_burst(fake):
    fake.put("a")
    out = run(fake.kubeconfig, "--qps", "20", "--burst", "5", CM,
              "repeat", "45", "a")
    assert out["rc"] == "ok"
    # 5 at once, then 40 at 20 per second: at least 2 s
    assert out["object"]["ms"] >= 1900, out
    assert out["object"]["ms"] < 6000, out


def test_429_retry_after(fake):
    fake.put("a")
    fake.fail(429, count=2, method="GET", headers={"Retry-After": "1"})
    t0 = time.monotonic()
    out = run(fake.kubeconfig, CM, "get", "a")
    assert out["rc"] == "ok"
    assert time.monotonic() - t0 >= 1.9
    # past its tries the caller sees it, with the server's Retry-After
    fake.fail(429, count=5, method="GET", headers={"Retry-After": "1"})
    out = run(fake.kubeconfig, CM, "get", "a")
    assert out["rc"] == "throttled" and out["code"] == 429
    assert out["retryAfter"] == 1


def test_status_through_http(fake):
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Invalid", "code": 422,
            "message": "ConfigMap \"a\" is invalid",
            "details": {"name": "a", "kind": "ConfigMap", "causes": [
                {"reason": "FieldValueInvalid", "field": "data[x y]",
                 "message": "bad key"}]}}
    fake.fail(422, method="POST", body=body)
    out = run(fake.kubeconfig, CM, "create", '{"metadata": {"name": "a"}}')
    assert out["rc"] == "invalid" and out["reason"] == "Invalid"
    assert out["causes"] == [{"reason": "FieldValueInvalid",
                              "field": "data[x y]", "message": "bad key"}]
    fake.fail(503, method="GET", body="<html>proxy</html>")
    out = run(fake.kubeconfig, CM, "get", "a")
    assert out["rc"] == "server error" and out["code"] == 503
    fake.fail(200, method="GET", body="[1, 2]")
    out = run(fake.kubeconfig, CM, "get", "a")
    assert out["rc"] == "bad answer"


def test_server_down(tmp_path):
    srv = FaultServer()
    port = srv.port
    srv.close()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        "current-context: x\nclusters:\n- name: c\n  cluster:\n"
        "    server: http://127.0.0.1:%d\ncontexts:\n- name: x\n"
        "  context: {cluster: c, user: u}\nusers:\n- name: u\n  user: {}\n"
        % port)
    t0 = time.monotonic()
    out = run(str(cfg), CM, "get", "a")
    assert out["rc"] == "no answer" and out["code"] == 0
    assert time.monotonic() - t0 < 10


def test_watch_paginated_list_then_events(fake):
    for i in range(7):
        fake.put("o%d" % i)
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        assert len(w.events("ADDED")) == 7
        # pages of 500: one list request; more pages are tested below
        fake.put("o1", {"x": "1"})
        fake.put("o2", delete=True)
        w.until(lambda l: l.get("event") == "DELETED", what="DELETED")
        assert [e["key"] for e in w.events("MODIFIED")] == ["ns/o1"]
    finally:
        final = w.stop()
    assert sorted(final["cache"]) == ["ns/o%d" % i for i in (0, 1, 3, 4, 5,
                                                             6)]
    assert final["stats"]["watches"] == 1
    assert final["stats"]["lists"] == 1


def test_watch_cut_loses_nothing(fake):
    fake.put("a")
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        for i in range(3):
            fake.wait_watching(starts=i + 1)
            fake.cut()
            fake.put("cut%d" % i)
        fake.put("a", delete=True)
        w.until(lambda l: l.get("event") == "DELETED", what="DELETED")
        w.until(lambda l: len(w.events("ADDED")) == 4, what="all ADDED")
    finally:
        final = w.stop()
    assert sorted(final["cache"]) == ["ns/cut0", "ns/cut1", "ns/cut2"]
    # resumed from its version each time: no relist needed
    assert final["stats"]["lists"] == 1
    assert final["stats"]["watches"] >= 4
    assert "watch" in w.stderr.decode()


def test_410_relists_and_5xx_deletes_nothing(fake):
    fake.put("a")
    fake.put("b")
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        # a 410 mid-stream; the relist that follows meets 500s and 503s
        fake.fail(500, count=3, watch=False, method="GET")
        fake.fail(503, count=2, watch=False, method="GET")
        fake.watch_fault("gone-event")
        fake.cut()
        w.until(lambda l: l.get("stats", {}).get("listFailures", 0) >= 5,
                timeout=60, what="five failed lists")
        assert w.events("DELETED") == []
        # while failing, "b" really goes: the successful list says so
        fake.put("b", delete=True)
        fake.put("c")
        w.until(lambda l: l.get("event") == "DELETED", timeout=60,
                what="DELETED after the relist")
        w.until(lambda l: l.get("event") == "ADDED"
                and l.get("key") == "ns/c", what="c")
        # then a 410 at the start of a watch
        fake.watch_fault("gone-start")
        fake.cut()
        w.until(lambda l: l.get("stats", {}).get("relistsGone") == 2
                and l["stats"]["lists"] >= 3, timeout=30,
                what="second relist")
    finally:
        final = w.stop()
    assert [e["key"] for e in w.events("DELETED")] == ["ns/b"]
    assert sorted(final["cache"]) == ["ns/a", "ns/c"]
    assert final["stats"]["lists"] >= 3


def test_list_with_nonsense_deletes_nothing(fake):
    a = fake.put("a")
    fake.put("b")
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        # the relist answers "a" and an item that makes no sense ("b"?)
        fake.fail(200, watch=False, method="GET", body={
            "kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "150"},
            "items": [{"metadata": a["metadata"]},
                      {"metadata": {"name": "B b", "namespace": "ns",
                                    "resourceVersion": "102"}}]})
        fake.watch_fault("gone-event")
        fake.cut()
        w.until(lambda l: l.get("stats", {}).get("lists") == 2,
                what="the relist")
    finally:
        final = w.stop()
    assert w.events("DELETED") == []
    assert sorted(final["cache"]) == ["ns/a", "ns/b"]
    assert final["stats"]["skipped"] == 1


def test_410_in_a_row_backs_off(fake):
    fake.put("a")
    for _ in range(4):
        fake.watch_fault("gone-start")
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        t0 = time.monotonic()
        w.until(lambda l: l.get("stats", {}).get("relistsGone") == 4
                and l["stats"]["lists"] == 5, timeout=60, what="4 relists")
        # 0.25-0.5 s, 0.5-1 s, 1-2 s between them: not a hot loop
        assert time.monotonic() - t0 >= 1.7
        fake.put("b")
        w.until(lambda l: l.get("key") == "ns/b", what="b")
    finally:
        final = w.stop()
    assert sorted(final["cache"]) == ["ns/a", "ns/b"]


def test_loop_wakes_for_its_own_descriptors(fake):
    """A quiet watch holds no turn of the loop: a line on the loop's own
    descriptor (stdin here, Redis in the controller) is handled at once,
    although each turn may wait 3 s."""
    fake.put("a")
    fake.bookmark_every = 3600
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        fake.wait_watching()
        time.sleep(0.5)
        t0 = time.monotonic()
        final = w.stop(how="stdin")
        assert time.monotonic() - t0 < 1.5
    finally:
        if w.p.poll() is None:
            w.stop()
    assert list(final["cache"]) == ["ns/a"]


def test_watch_garbage_is_skipped(fake):
    fake.put("a")
    fake.watch_fault("garbage")
    w = Watch(fake.kubeconfig, CM)
    try:
        w.until(lambda l: l.get("synced"), what="synced")
        w.until(lambda l: l.get("stats", {}).get("skipped", 0) >= 4,
                what="skips")
        fake.put("after")
        w.until(lambda l: l.get("key") == "ns/after", what="a good event")
    finally:
        final = w.stop()
    assert sorted(final["cache"]) == ["ns/a", "ns/after"]
    assert final["stats"]["skipped"] == 4
    # it all arrived on the first watch: nothing cut it
    assert final["stats"]["watches"] == 1


def test_list_pages(fake):
    for i in range(12):
        fake.put("p%02d" % i)
    out = run(fake.kubeconfig, CM, "list", "--limit", "5")
    assert out["rc"] == "ok" and out["object"]["pages"] == 3
    assert out["object"]["names"] == ["p%02d" % i for i in range(12)]


def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1, a client certificate,
    and another CA that signed none of them."""
    d = str(tmp_path)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                 "-subj", "/CN=" + ca, "-keyout", ca + ".key",
                 "-out", ca + ".crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-subj",
                 "/CN=" + name + "/O=system:masters", "-keyout",
                 name + ".key", "-out", name + ".csr", cwd=d)
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext + "\n")
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
                 "-extfile", name + ".ext", "-out", name + ".crt", cwd=d)
    return d


def _b64(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def test_tls_client_certificate_and_token(pki, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(pki, "server.crt"),
                        os.path.join(pki, "server.key"))
    ctx.load_verify_locations(os.path.join(pki, "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = FaultServer(tls=ctx, token="t0ken")
    try:
        srv.put("a")
        head = ("current-context: x\ncontexts:\n- name: x\n  context: "
                "{cluster: c, user: u, namespace: ns}\nclusters:\n"
                "- name: c\n  cluster:\n    server: https://127.0.0.1:%d\n"
                % srv.port)
        # inline data
        inline = tmp_path / "inline.yaml"
        inline.write_text(
            head + "    certificate-authority-data: %s\nusers:\n- name: u\n"
            "  user:\n    client-certificate-data: %s\n"
            "    client-key-data: %s\n    token: t0ken\n"
            % (_b64(os.path.join(pki, "ca.crt")),
               _b64(os.path.join(pki, "client.crt")),
               _b64(os.path.join(pki, "client.key"))))
        out = run(str(inline), CM, "get", "a")
        assert out["rc"] == "ok", out
        # files, relative to the kubeconfig's directory
        files = os.path.join(pki, "files.yaml")
        with open(files, "w") as f:
            f.write(head + "    certificate-authority: ca.crt\nusers:\n"
                    "- name: u\n  user:\n    client-certificate: client.crt"
                    "\n    client-key: client.key\n    token: t0ken\n")
        out = run(files, CM, "repeat", "5", "a")
        assert out["rc"] == "ok", out
        # a wrong token is the server's 401
        with open(files) as f:
            text = f.read()
        with open(files, "w") as f:
            f.write(text.replace("t0ken", "wrong"))
        out = run(files, CM, "get", "a")
        assert out["rc"] == "refused" and out["code"] == 401, out
        # a server whose certificate another CA signed is not spoken to
        with open(files, "w") as f:
            f.write(text.replace("ca.crt", "other-ca.crt"))
        n = len(srv.requests)
        out = run(files, CM, "get", "a")
        assert out["rc"] == "no answer" and out["code"] == 0, out
        assert len(srv.requests) == n
        # no client certificate: the handshake fails
        with open(files, "w") as f:
            f.write(head + "    certificate-authority: ca.crt\nusers:\n"
                    "- name: u\n  user:\n    token: t0ken\n")
        out = run(files, CM, "get", "a")
        assert out["rc"] == "no answer", out
    finally:
        srv.close()
