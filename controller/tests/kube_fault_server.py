"""A scripted HTTP server that misbehaves on demand, for the Kubernetes
client's transport tests (test_kube_faults.py).

It is NOT an API server: it keeps ConfigMaps in a dict with a counter for
resourceVersion, enough for a list, a watch and a get to mean something,
and it answers what a test scripts: 5xx, 429 with Retry-After, 410 at a
watch's start or as an ERROR event, garbage and oversized lines in a watch
stream, a cut connection.  What only a real API server can show (409 on a
stale write, 422 causes, merge patch semantics) is tested against one in
test_kube_cluster.py.
"""

import json
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code}


class FaultServer:
    def __init__(self, tls=None, token=None):
        """tls: an ssl.SSLContext to serve https with; token: the bearer
        token every request must carry (else 401)."""
        self.lock = threading.Condition()
        self.token = token
        self.objects = {}          # name -> object
        self.history = []          # (rv, type, object)
        self.rv = 100
        self.connections = 0
        self.requests = []         # (method, path, content-type)
        self.faults = []           # [pred, status, headers, body, count]
        self.watch_faults = []     # "gone-start", "gone-event", "garbage"
        self.cut_generation = 0
        self.watching = 0          # watch streams open now
        self.watch_starts = 0      # watch streams ever opened
        self.bookmark_every = 1.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with server.lock:
                    server.connections += 1

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

            def do_PUT(self):
                server._handle(self, "PUT")

            def do_PATCH(self):
                server._handle(self, "PATCH")

            def do_DELETE(self):
                server._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket,
                                                server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.cut()
        self.httpd.shutdown()
        self.httpd.server_close()

    # the test's levers

    def fail(self, status, count=1, method=None, watch=None, headers=None,
             body=None):
        """The next count matching requests get this answer."""
        def pred(m, q):
            return ((method is None or m == method)
                    and (watch is None or ("watch" in q) == watch))
        if body is None:
            body = _status(status, "Injected", "injected %d" % status)
        with self.lock:
            self.faults.append([pred, status, headers or {}, body, count])

    def watch_fault(self, kind):
        with self.lock:
            self.watch_faults.append(kind)

    def wait_watching(self, starts=1, timeout=30):
        """Until the starts-th watch stream is open."""
        with self.lock:
            assert self.lock.wait_for(
                lambda: self.watch_starts >= starts and self.watching > 0,
                timeout)

    def cut(self):
        """Every watch stream now open ends without a proper end."""
        with self.lock:
            self.cut_generation += 1
            self.lock.notify_all()

    def put(self, name, data=None, delete=False):
        with self.lock:
            self.rv += 1
            if delete:
                obj = self.objects.pop(name)
                obj = json.loads(json.dumps(obj))
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self.history.append((self.rv, "DELETED", obj))
            else:
                typ = "MODIFIED" if name in self.objects else "ADDED"
                obj = {"kind": "ConfigMap", "apiVersion": "v1",
                       "metadata": {"name": name, "namespace": "ns",
                                    "resourceVersion": str(self.rv),
                                    "uid": "uid-" + name},
                       "data": data or {}}
                self.objects[name] = obj
                self.history.append((self.rv, typ, obj))
            self.lock.notify_all()
            return obj

    # serving

    def _send(self, h, status, body, headers=None):
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)

    def _handle(self, h, method):
        url = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        n = int(h.headers.get("Content-Length") or 0)
        payload = h.rfile.read(n) if n else b""
        if (self.token is not None and h.headers.get("Authorization")
                != "Bearer " + self.token):
            return self._send(h, 401, _status(401, "Unauthorized",
                                              "Unauthorized"))
        with self.lock:
            self.requests.append((method, h.path,
                                  h.headers.get("Content-Type")))
            for f in self.faults:
                if f[4] > 0 and f[0](method, q):
                    f[4] -= 1
                    fault = f
                    break
            else:
                fault = None
        if fault is not None:
            return self._send(h, fault[1], fault[3], fault[2])

        parts = url.path.strip("/").split("/")
        # api v1 namespaces ns configmaps [name]
        if parts[:5] != ["api", "v1", "namespaces", "ns", "configmaps"]:
            return self._send(h, 404, _status(404, "NotFound", "no route"))
        name = parts[5] if len(parts) > 5 else None

        if method == "GET" and name is None and q.get("watch") == "1":
            return self._watch(h, q)
        with self.lock:
            if method == "GET" and name is None:
                return self._list(h, q)
            if method == "GET":
                obj = self.objects.get(name)
                if obj is None:
                    return self._send(h, 404, _status(404, "NotFound",
                                                      "not found"))
                return self._send(h, 200, obj)
        if method == "POST":
            body = json.loads(payload)
            return self._send(h, 201, self.put(body["metadata"]["name"],
                                               body.get("data")))
        if method == "PATCH":
            body = json.loads(payload)
            with self.lock:
                data = dict(self.objects[name].get("data") or {})
            data.update(body.get("data") or {})
            return self._send(h, 200, self.put(name, data))
        if method == "DELETE":
            with self.lock:
                known = name in self.objects
            if not known:
                return self._send(h, 404, _status(404, "NotFound", "gone"))
            self.put(name, delete=True)
            return self._send(h, 200, {"kind": "Status", "status": "Success"})
        return self._send(h, 405, _status(405, "MethodNotAllowed", method))

    def _list(self, h, q):
        names = sorted(self.objects)
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0) or len(names)
        page = names[start:start + limit]
        cont = str(start + limit) if start + limit < len(names) else ""
        body = {"kind": "ConfigMapList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.rv),
                             "continue": cont},
                "items": [{k: v for k, v in self.objects[n].items()
                           if k not in ("kind", "apiVersion")}
                          for n in page]}
        return self._send(h, 200, body)

    def _chunk(self, h, data):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    def _watch(self, h, q):
        with self.lock:
            fault = self.watch_faults.pop(0) if self.watch_faults else None
            gen = self.cut_generation
        if fault == "gone-start":
            return self._send(h, 410, _status(410, "Expired",
                                              "too old resource version"))
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if fault == "gone-event":
            ev = {"type": "ERROR", "object": _status(
                410, "Expired", "too old resource version: 1 (2)")}
            self._chunk(h, json.dumps(ev).encode() + b"\n")
            self._chunk(h, b"")
            return
        if fault == "garbage":
            self._chunk(h, b"this is not json\n{\"type\":\"ADDED\"}\n")
            self._chunk(h, b"{\"type\":\"ADDED\",\"object\":{\"metadata\":"
                        b"{\"name\":\"../../x\",\"namespace\":\"ns\","
                        b"\"resourceVersion\":\"5\"}}}\n")
            big = b"{\"type\":\"ADDED\",\"object\":\"" + b"x" * (9 << 20)
            for i in range(0, len(big), 1 << 16):
                self._chunk(h, big[i:i + (1 << 16)])
            self._chunk(h, b"\"}\n")
        with self.lock:
            self.watching += 1
            self.watch_starts += 1
            self.lock.notify_all()
        try:
            self._stream(h, q, gen)
        finally:
            with self.lock:
                self.watching -= 1

    def _stream(self, h, q, gen):
        sent = int(q.get("resourceVersion") or 0)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        last_mark = time.monotonic()
        deadline = time.monotonic() + int(q.get("timeoutSeconds") or 60)
        try:
            while time.monotonic() < deadline:
                with self.lock:
                    self.lock.wait_for(
                        lambda: self.cut_generation != gen
                        or (self.history and self.history[-1][0] > sent),
                        timeout=0.2)
                    if self.cut_generation != gen:
                        # an abrupt end: no final chunk
                        h.connection.shutdown(socket.SHUT_RDWR)
                        h.close_connection = True
                        return
                    events = [e for e in self.history if e[0] > sent]
                    rv = self.rv
                for erv, typ, obj in events:
                    line = json.dumps({"type": typ, "object": obj})
                    self._chunk(h, line.encode() + b"\n")
                    sent = erv
                if (bookmarks and time.monotonic() - last_mark
                        > self.bookmark_every):
                    mark = {"type": "BOOKMARK", "object": {
                        "kind": "ConfigMap", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(rv)}}}
                    self._chunk(h, json.dumps(mark).encode() + b"\n")
                    sent = max(sent, rv)
                    last_mark = time.monotonic()
            self._chunk(h, b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
