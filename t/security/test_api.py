"""Cases 29-35: the API and the gateway, with sandboxes of both runtimes
as the targets."""

import glob
import json
import os
import secrets
import socket

import pytest
import websocket

from conftest import alive, known


def missing_id():
    return "sb-" + secrets.token_hex(10)


ROUTES = [("GET", "/sandboxes/%s", None),
          ("GET", "/sandboxes/%s/status", None),
          ("POST", "/sandboxes/%s/execute",
           {"type": "code", "language": "python", "content": "print(1)"}),
          ("GET", "/sandboxes/%s/files?path=/", None),
          ("GET", "/sandboxes/%s/files/x.txt", None),
          ("PUT", "/sandboxes/%s/files/x.txt", b"x"),
          ("POST", "/sandboxes/%s/packages",
           {"packages": ["six"], "manager": "pip"}),
          ("DELETE", "/sandboxes/%s/files/x.txt", None),
          ("DELETE", "/sandboxes/%s", None)]


def call(api, method, path, body):
    if isinstance(body, bytes):
        return api.req(method, path, content=body)
    return api.req(method, path, json=body)


def test_c29_other_users_sandbox(alice, bob, sb):
    for method, path, body in ROUTES:
        missing = missing_id()
        theirs = call(bob, method, path % sb, body)
        nobody = call(bob, method, path % missing, body)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert nobody.status_code == 404, (method, path, nobody.text)
        # the same answer but for the id itself
        assert theirs.text.replace(sb, "ID") == \
            nobody.text.replace(missing, "ID"), (theirs.text, nobody.text)
    # stream: the upgrade is refused the same way
    for sid in (sb, missing_id()):
        r = bob.req("GET", "/sandboxes/%s/stream" % sid, headers={
            "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert r.status_code == 404, r.text
    assert alive(alice, sb)


def test_c30_keys_brute_force_and_logs(alice, stack, sb):
    codes = []
    with_key = alice.http.headers["Authorization"]
    for i in range(300):
        r = alice.http.get(alice.base + "/user", headers={
            "Authorization": "Bearer lsp_" + secrets.token_hex(16)})
        codes.append(r.status_code)
        assert r.headers["content-type"].startswith("application/json")
    assert set(codes) <= {401, 429}, set(codes)
    assert 429 in codes, "300 wrong keys from one address, none limited"
    # a key used in the query (the stream route) never reaches a log
    key = with_key.split()[1]
    alice.http.get(alice.base + "/sandboxes/%s/stream?token=%s" % (sb, key))
    alice.http.get(alice.base + "/user?TOKEN=%s" % key)
    run = getattr(stack, "run_dir", None)
    if run is None:
        pytest.skip("a stack given by LSS_TEST_API_URL: its logs are not "
                    "here")
    logs = glob.glob(os.path.join(run, "**", "*.log"), recursive=True)
    assert logs
    leaked = [p for p in logs if key.encode() in open(p, "rb").read()]
    if leaked:
        known("keys in the query are logged: %s (issue 12, item 2)"
              % leaked)


def test_c31_internal_headers(alice, sb):
    r = alice.req("POST", "/sandboxes/%s/execute" % sb, headers={
        "X-LLMSafeSpace-Runner-Token": "forged",
        "X-Forwarded-For": "10.0.0.1", "X-Real-IP": "10.0.0.1",
        "X-LLMSafeSpace-User": "usr-admin"},
        json={"type": "code", "language": "python", "content": "print(1)"})
    # the gateway puts its own token: the forged one changed nothing
    assert r.status_code == 200 and r.json()["stdout"] == "1\n", r.text


def test_c32_oversized(alice, sb, stack):
    r = alice.req("POST", "/sandboxes/%s/execute" % sb,
                  content=b'{"type": "code", "content": "' +
                  b"x" * (9 << 20) + b'"}',
                  headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.status_code
    assert r.headers["content-type"].startswith("application/json")
    host, port = stack.api_url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /api/v1/user HTTP/1.1\r\nHost: x\r\nX-Big: " +
              b"a" * (64 << 10) + b"\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.split()[1] in (b"400", b"431", b"494"), head[:100]


def test_c33_mass_assignment(alice, runtime):
    level = {"runc": "standard", "runsc": "high"}[runtime]
    for body in ({"runtime": "python", "owner": "usr-other"},
                 {"runtime": "python", "securityLevel": level,
                  "resources": {"cpu": "64", "memory": "512Gi"}},
                 {"runtime": "python", "securityLevel": "lowest"}):
        r = alice.req("POST", "/sandboxes", json=body)
        if r.status_code in (201, 202):
            alice.req("DELETE", "/sandboxes/%s" % r.json()["id"])
        assert r.status_code in (400, 403, 422), (body, r.text)
        assert r.json()["error"]["code"], r.text


def test_c34_malformed_json(alice, sb, stack):
    for body in (b"{", b"[]", b'{"runtime": 5}', b'{"runtime": "python",'
                 b' "timeout": 1e999}', b'{"runtime": "python", "timeout":'
                 b' 99999999999999999999999}', b"[" * 100000 + b"]" * 100000,
                 b'{"runtime": "\xff\xfe"}'):
        r = alice.req("POST", "/sandboxes", content=body,
                      headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 413, 422), (body[:40], r.text)
        assert r.json()["error"]["code"], r.text
    for body in (b'{"type": "code", "content": 5}',
                 b'{"type": "shell", "content": "x"}',
                 b'{"type": "code", "content": "x", "timeout": -1}'):
        r = alice.req("POST", "/sandboxes/%s/execute" % sb, content=body,
                      headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), (body, r.text)
    r = alice.http.get(stack.api_url + "/healthz")
    assert r.status_code == 200


def ws_connect(alice, sid):
    url = alice.base.replace("http://", "ws://") + "/sandboxes/%s/stream" % sid
    return websocket.create_connection(
        url, header=["Authorization: Bearer " + alice.key], timeout=30)


def test_c35_websocket_abuse(alice, bob, sb):
    ws = ws_connect(alice, sb)
    try:
        ws.send_binary(b"\x00\x01binary")
        m = json.loads(ws.recv())
        assert m["type"] == "error", m
        ws.send(json.dumps({"type": "no-such-type"}))
        m = json.loads(ws.recv())
        assert m["type"] == "error", m
        ws.send("not json")
        assert json.loads(ws.recv())["type"] == "error"
        # fragmented: reassembled into one message
        ws.send_frame(websocket.ABNF.create_frame(
            '{"type": "ping", ', websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame(
            '"timestamp": 7}', websocket.ABNF.OPCODE_CONT, fin=1))
        m = json.loads(ws.recv())
        assert m["type"] == "pong", m
        # a cancel for an execution id nobody here started
        ws.send(json.dumps({"type": "cancel", "executionId": "theirs"}))
        m = json.loads(ws.recv())
        assert m["type"] == "error", m
        # a frame above the message cap closes the socket (maybe while
        # it is still being sent)
        try:
            ws.send("x" * (9 << 20))
            while True:
                op, data = ws.recv_data()
                if op == websocket.ABNF.OPCODE_CLOSE:
                    break
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
    finally:
        ws.close()
    assert alive(alice, sb)
