"""The file API: fd-relative, exec-uid identity, no link ever followed."""

import hashlib
import json
import os
import socket
import threading
import time

from conftest import EXEC_UID, HEADER, TOKEN


def raw_request(runner, request_line, body=b""):
    """Send bytes exactly as given (no client-side path normalisation)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(runner.sock)
    s.sendall(request_line.encode("latin-1") + b"\r\nHost: r\r\n"
              + ("%s: %s\r\n" % (HEADER, TOKEN)).encode()
              + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
              % len(body) + body)
    data = b""
    s.settimeout(10)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def test_upload_download_list_delete(mode_runner):
    runner = mode_runner
    c = runner.client
    r = c.put("/files/dir1/hello.txt", content=b"x")
    assert r.status_code == 404       # parent does not exist
    assert c.post("/files/dir1?mkdir=1").status_code == 201
    assert c.post("/files/dir1?mkdir=1").status_code == 409
    r = c.put("/files/dir1/hello.txt", content=b"hello\x00world")
    assert r.status_code == 201, r.text
    j = r.json()
    assert j["size"] == 11 and "createdAt" in j
    st = os.stat(os.path.join(runner.workspace, "dir1/hello.txt"))
    assert st.st_uid == runner.exec_uid   # written with the exec identity
    r = c.get("/files/dir1/hello.txt")
    assert r.status_code == 200 and r.content == b"hello\x00world"
    r = c.get("/files", params={"path": "dir1"})
    assert r.status_code == 200
    (e,) = r.json()
    assert e["name"] == "hello.txt" and e["path"] == "dir1/hello.txt"
    assert e["size"] == 11 and e["isDir"] is False and "modTime" in e
    assert e["mode"] == 0o644
    names = {e["name"]: e for e in c.get("/files?path=/").json()}
    assert names["dir1"]["isDir"] is True
    # the code sees what the API wrote, and the API what the code wrote
    r = runner.execute("print(open('dir1/hello.txt','rb').read())\n"
                       "open('made.txt','w').write('by code')")
    assert r["stdout"] == "b'hello\\x00world'\n"
    r = c.get("/files/made.txt")
    assert r.content == b"by code", r.text
    # overwrite
    assert c.put("/files/made.txt", content=b"new").status_code == 201
    assert c.get("/files/made.txt").content == b"new"
    # delete
    assert c.delete("/files/dir1").status_code == 409       # not empty
    assert c.delete("/files/dir1/hello.txt").status_code == 200
    assert c.get("/files/dir1/hello.txt").status_code == 404
    assert c.delete("/files/dir1").status_code == 200
    assert c.post("/mkdir", json={"path": "t/"}).status_code == 201
    c.put("/files/t/a", content=b"1")
    assert c.delete("/files/t?recursive=1").status_code == 200
    assert not os.path.exists(os.path.join(runner.workspace, "t"))
    assert c.delete("/files/made.txt").status_code == 200


def test_large_streamed_upload(runner):
    size = 256 * 1024 * 1024
    h = hashlib.sha256()
    block = os.urandom(1024 * 1024)

    def gen():
        for _ in range(size // len(block)):
            h.update(block)
            yield block

    r = runner.client.put("/files/big.bin", content=gen())
    assert r.status_code == 201, r.text
    assert r.json()["size"] == size
    got = hashlib.sha256()
    with runner.client.stream("GET", "/files/big.bin") as resp:
        for chunk in resp.iter_bytes():
            got.update(chunk)
    assert got.hexdigest() == h.hexdigest()
    # neither upload nor download held the file in memory
    with open("/proc/%d/status" % runner.proc.pid) as f:
        rss = [l for l in f if l.startswith("VmHWM")][0]
    assert int(rss.split()[1]) < 128 * 1024, rss
    runner.client.delete("/files/big.bin")


def test_upload_limit_and_broken_upload(runner):
    s = socket.socket(socket.AF_UNIX)
    s.connect(runner.sock)
    s.sendall(b"PUT /files/huge HTTP/1.1\r\nHost: r\r\n"
              + ("%s: %s\r\n" % (HEADER, TOKEN)).encode()
              + b"Content-Length: %d\r\n\r\n" % 10 ** 12)
    s.settimeout(10)
    assert s.recv(100).startswith(b"HTTP/1.1 413")
    s.close()
    # a chunked body (no Content-Length) is streamed the same way
    def gen():
        for _ in range(3):
            yield b"z" * (1024 * 1024)
    r = runner.client.put("/files/huge", content=gen(),
                          headers={"X-Test": "chunked"})
    assert r.status_code == 201
    assert runner.client.delete("/files/huge").status_code == 200
    # a client that goes away mid-upload leaves nothing behind
    s = socket.socket(socket.AF_UNIX)
    s.connect(runner.sock)
    s.sendall(b"PUT /files/partial.bin HTTP/1.1\r\nHost: r\r\n"
              + ("%s: %s\r\n" % (HEADER, TOKEN)).encode()
              + b"Content-Length: 1000000\r\n\r\n" + b"y" * 5000)
    time.sleep(0.2)
    s.close()
    for _ in range(100):
        left = [n for n in os.listdir(runner.workspace)
                if n.startswith(".lss-upload") or n == "partial.bin"]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_path_traversal(mode_runner):
    runner = mode_runner
    secret = os.path.join(os.path.dirname(runner.workspace), "outside.txt")
    with open(secret, "w") as f:
        f.write("outside")
    bad = ["/files/../outside.txt", "/files/%2e%2e/outside.txt",
           "/files/a/../../outside.txt", "/files/..%2foutside.txt",
           "/files/%2E%2E%2Foutside.txt", "/files/a%00b",
           "/files/..\\outside.txt", "/files/a%5c..%5coutside.txt",
           "/files/" + "a" * 300, "/files/" + "a/" * 3000,
           "/files/%zz", "/files?path=..", "/files?path=%2e%2e%2f",
           "/files?path=a%00"]
    for path in bad:
        for method in ("GET", "PUT", "DELETE"):
            if path.startswith("/files?") and method != "GET":
                continue
            status, body = raw_request(runner, "%s %s HTTP/1.1"
                                       % (method, path), b"data")
            assert status == 400, (method, path, status, body)
            assert b"outside" not in body
    # absolute paths are confined to the workspace
    status, body = raw_request(runner, "GET /files//etc/passwd HTTP/1.1")
    assert status == 404
    r = runner.client.put("/files/%2Fetc%2Fpasswd-lss", content=b"x")
    assert r.status_code in (201, 404)
    assert not os.path.exists("/etc/passwd-lss")
    with open(secret) as f:
        assert f.read() == "outside"
    os.unlink(secret)


def test_paths_not_utf8_are_refused(runner):
    """Names reach JSON answers: a path that is not UTF-8 once decoded
    (overlong, surrogate, cut short) is refused, never created."""
    for path in ("/files/%C0%AE", "/files/a%C0%AFb", "/files/%ED%A0%80",
                 "/files/a%E2%82", "/files?path=%C0%AE"):
        for method in ("GET", "PUT", "DELETE"):
            if path.startswith("/files?") and method != "GET":
                continue
            status, body = raw_request(runner, "%s %s HTTP/1.1"
                                       % (method, path), b"data")
            assert status == 400, (method, path, status, body)
            assert json.loads(body)["error"]["code"] == "bad_request"
    assert os.listdir(runner.workspace) == []


def test_planted_symlink_and_hardlink(mode_runner):
    runner = mode_runner
    outside = os.path.join(os.path.dirname(runner.workspace), "victim")
    with open(outside, "w") as f:
        f.write("victim")
    os.chmod(outside, 0o666)
    # executed code plants links (a hard link needs a file it may link to)
    r = runner.command(
        "ln -s %s sl && ln -s / rootlink && ln -s /etc/shadow shadow && "
        "echo mine > own && ln own hl && mkdir d && ln -s .. d/up"
        % outside)
    assert r["exitCode"] == 0, r
    c = runner.client
    for p in ("sl", "rootlink/etc/passwd", "shadow", "d/up/sl"):
        assert c.get("/files/" + p).status_code == 400, p
        assert c.put("/files/" + p + "/x", content=b"x").status_code \
            in (400, 404), p
    assert c.get("/files?path=rootlink").status_code == 400
    # overwriting a symlink replaces the link, never writes through it
    assert c.put("/files/sl", content=b"overwritten").status_code == 201
    with open(outside) as f:
        assert f.read() == "victim"
    assert not os.path.islink(os.path.join(runner.workspace, "sl"))
    # hard links: no download or overwrite
    assert c.get("/files/hl").status_code == 409
    assert c.put("/files/hl", content=b"x").status_code == 409
    # deleting a link deletes the link only
    assert c.delete("/files/rootlink").status_code == 200
    assert os.path.exists("/etc/passwd")
    assert c.delete("/files/d?recursive=1").status_code == 200
    assert os.path.exists(outside)
    # the API acts with the exec uid: root-only files stay closed
    os.symlink("/etc/shadow", os.path.join(runner.workspace, "x"))
    os.unlink(os.path.join(runner.workspace, "x"))
    root_file = os.path.join(runner.workspace, "rootonly")
    with open(root_file, "w") as f:
        f.write("root")
    os.chmod(root_file, 0o600)
    assert c.get("/files/rootonly").status_code == 403
    assert c.delete("/files/rootonly").status_code == 200   # dir is ours
    runner.client.post("/reset")
    os.unlink(outside)


def test_toctou_swap_loop(mode_runner):
    runner = mode_runner
    outside = os.path.join(os.path.dirname(runner.workspace), "toctou")
    with open(outside, "w") as f:
        f.write("secret-outside")
    os.chmod(outside, 0o644)
    runner.client.post("/files/race?mkdir=1")
    # executed code flips race/f between a file and a symlink (bounded)
    flipper = (
        "import os, time\n"
        "end = time.time() + 4\n"
        "os.chdir('race')\n"
        "while time.time() < end:\n"
        "    try:\n"
        "        with open('f.tmp', 'w') as fh: fh.write('plain')\n"
        "        os.replace('f.tmp', 'f')\n"
        "        os.symlink(%r, 'l.tmp'); os.replace('l.tmp', 'f')\n"
        "        os.symlink('/', 'd.tmp'); os.replace('d.tmp', 'dir')\n"
        "        os.mkdir('d2'); os.rename('d2', 'dir2')\n"
        "        os.rmdir('dir2')\n"
        "    except OSError:\n"
        "        pass\n" % outside)
    result = {}
    t = threading.Thread(target=lambda: result.update(
        runner.execute(flipper, timeout=10)))
    t.start()
    leaks = 0
    for _ in range(300):
        r = runner.client.get("/files/race/f")
        if b"secret-outside" in r.content:
            leaks += 1
        runner.client.put("/files/race/f", content=b"api")
        runner.client.get("/files?path=race/dir")
        runner.client.put("/files/race/dir/etc/x", content=b"x")
    t.join()
    assert result.get("status") == "completed", result
    assert leaks == 0
    with open(outside) as f:
        assert f.read() == "secret-outside"
    assert not os.path.exists("/etc/x")
    runner.client.delete("/files/race?recursive=1")
    os.unlink(outside)
