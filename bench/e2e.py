#!/usr/bin/python3
"""End to end benchmark: the sandbox API through the gateway of a running
local stack (bench/e2e.sh starts one), each figure against its baseline
in the same run, A and B alternating over several rounds.

    bench/e2e.py --url http://127.0.0.1:PORT --run DIR [--rounds N]
                 [--creates N] [--execs N] [--fresh N] [--streams N]
                 [--sandboxes N] [--connections N] [--duration S]

  create        POST /sandboxes claiming from the python warm pool,
                against `runc run -d` of the same rootfs (the bundle made
                beforehand, as the controller's warm sandboxes have it)
  execute       POST /sandboxes/{id}/execute print(1) through the gateway,
                against the same request at the runner's unix socket (with
                the token of the route in Redis), and against a fresh
                `python3 -c "print(1)"`
  stream        WebSocket: from sending `execute` to the first `output`
                message, through the gateway against the runner's own
                /stream on its socket
  throughput    wrk POSTing execute print(1) round robin to --sandboxes
                sandboxes, through the gateway against a bare nginx
                (stock, no module) proxy_pass to the same runners with the
                token set in its configuration

DIR is the stack's LSS_RUN (admin.key, the Redis socket).  Needs root
(runc) and wrk.  A benchmark, not a test: it prints figures, and fails
only when something does not work at all.
"""

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import redis
import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "runtimes", "oci"))

import sandbox  # noqa: E402

BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
ROOTFS = os.path.join(BUILD, "rootfs")
TOKEN_HEADER = "X-LLMSafeSpace-Runner-Token"
HOST_PYTHON = "/usr/bin/python3"
POOL = "python"
RUNTIME = "python:3.11"
PRINT1 = {"type": "code", "language": "python", "content": "print(1)"}
# nginx workers of the bare baseline run as the stack's workers do: the
# runner sockets are their group's
WORKER_USER = "llmsafespace"


def pct(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def poll(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.02)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: the runner's own transport."""

    def __init__(self, path, timeout=60):
        super().__init__("runner", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Client:
    """One keep-alive HTTP connection and the headers every request has.
    The same code times the gateway and the runner: only the transport
    and the credentials differ."""

    def __init__(self, conn, headers):
        self.conn = conn
        self.headers = headers

    def call(self, method, path, body=None):
        h = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError):
            # a keep-alive connection the server closed while idle (the
            # throughput phase is longer than keepalive_timeout); only
            # requests that may be repeated are
            if method not in ("GET", "DELETE"):
                raise
            self.conn.close()
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
        payload = r.read()
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            doc = payload
        return r.status, doc

    def timed_execute(self, path):
        t0 = time.perf_counter()
        status, doc = self.call("POST", path, PRINT1)
        dt = time.perf_counter() - t0
        if status != 200 or doc.get("stdout") != "1\n":
            raise RuntimeError("execute %s: %d %s" % (path, status, doc))
        return dt


class Stack:
    def __init__(self, url, run):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        with open(os.path.join(run, "admin.key")) as f:
            self.key = f.read().strip()
        self.r = redis.Redis(unix_socket_path=os.path.join(
            run, "redis", "redis.sock"), decode_responses=True)
        self.api = self.client()

    def client(self):
        return Client(http.client.HTTPConnection(self.host, self.port,
                                                 timeout=60),
                      {"Authorization": "Bearer " + self.key})

    def ready(self):
        return self.r.llen("lss:pool:%s:ready" % POOL)

    def create(self):
        """Claims a warm sandbox: (seconds, id)."""
        poll(self.ready, 120, "a warm sandbox")
        t0 = time.perf_counter()
        status, doc = self.api.call("POST", "/api/v1/sandboxes",
                                    {"runtime": RUNTIME})
        dt = time.perf_counter() - t0
        if status not in (200, 201) or doc.get("phase") != "Running":
            raise RuntimeError("create: %d %s" % (status, doc))
        if doc.get("pool") != POOL:
            raise RuntimeError("create did not claim from the pool: %s"
                               % doc)
        return dt, doc["id"]

    def delete(self, sid):
        status, doc = self.api.call("DELETE", "/api/v1/sandboxes/" + sid)
        if status not in (200, 202, 404):
            raise RuntimeError("delete: %d %s" % (status, doc))

    def route(self, sid):
        """(socket path, token) of the sandbox's runner, from Redis."""
        h = self.r.hgetall("lss:sb:" + sid)
        if not h.get("runner", "").startswith("unix:"):
            raise RuntimeError("no unix route for %s: %s" % (sid, h))
        return h["runner"][5:], h["token"]

    def runner(self, sid):
        path, token = self.route(sid)
        return Client(UnixHTTPConnection(path), {TOKEN_HEADER: token})


def bare_runc(workdir):
    """`runc run -d` of the python rootfs with the runner, bundle made
    beforehand (untimed, as the controller keeps templates): seconds."""
    c = sandbox.Container(ROOTFS, workdir, "runc",
                          runner_args=["--languages", "python,bash"])
    try:
        t0 = time.perf_counter()
        c.start()
        return time.perf_counter() - t0
    finally:
        c.delete()


def fresh():
    t0 = time.perf_counter()
    subprocess.run([HOST_PYTHON, "-c", "print(1)"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


# -- figures ----------------------------------------------------------------

def bench_create(st, args, workdir):
    a, b = [], []
    for rnd in range(args.rounds):
        def gw():
            for _ in range(args.creates):
                dt, sid = st.create()
                a.append(dt)
                st.delete(sid)

        def base():
            for _ in range(args.creates):
                b.append(bare_runc(workdir))
        for f in ((gw, base) if rnd % 2 == 0 else (base, gw)):
            f()
    return a, b


def bench_execute(st, args, sid):
    gw = st.client()
    rn = st.runner(sid)
    path_gw = "/api/v1/sandboxes/%s/execute" % sid
    for _ in range(20):
        gw.timed_execute(path_gw)
        rn.timed_execute("/execute")
    a, b, c = [], [], []
    for rnd in range(args.rounds):
        def ga():
            a.extend(gw.timed_execute(path_gw) for _ in range(args.execs))

        def rb():
            b.extend(rn.timed_execute("/execute") for _ in range(args.execs))
        for f in ((ga, rb) if rnd % 2 == 0 else (rb, ga)):
            f()
        c.extend(fresh() for _ in range(args.fresh))
    return a, b, c


async def first_output(ws, n):
    """n executions one after another on an open WebSocket: seconds from
    sending execute to the first output message of each."""
    out = []
    for i in range(n):
        eid = "b%d-%d" % (os.getpid(), time.monotonic_ns())
        msg = json.dumps({"type": "execute", "executionId": eid,
                          "mode": "code", "language": "python",
                          "content": "print(1)"})
        t0 = time.perf_counter()
        await ws.send(msg)
        first = None
        while True:
            m = json.loads(await ws.recv())
            if m.get("executionId") != eid:
                continue
            if m["type"] == "output" and first is None:
                first = time.perf_counter() - t0
            elif m["type"] == "execution_complete":
                break
            elif m["type"] == "error":
                raise RuntimeError("stream: %s" % m)
        if first is None:
            raise RuntimeError("stream: no output for print(1)")
        out.append(first)
    return out


async def bench_stream_async(st, args, sid):
    path, token = st.route(sid)
    url = "ws://%s:%d/api/v1/sandboxes/%s/stream" % (st.host, st.port, sid)
    a, b = [], []
    async with websockets.connect(
            url, extra_headers={"Authorization": "Bearer " + st.key},
            max_size=None, ping_interval=None) as gw, \
        websockets.unix_connect(
            path, "ws://runner/stream", extra_headers={TOKEN_HEADER: token},
            max_size=None, ping_interval=None) as rn:
        await first_output(gw, 10)
        await first_output(rn, 10)
        for rnd in range(args.rounds):
            if rnd % 2 == 0:
                a += await first_output(gw, args.streams)
                b += await first_output(rn, args.streams)
            else:
                b += await first_output(rn, args.streams)
                a += await first_output(gw, args.streams)
    return a, b


BARE_CONF = """
worker_processes 2;
user %(user)s;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log notice;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    server {
        listen 127.0.0.1:%(port)d;
%(locations)s
    }
}
"""

# the proxy settings of conf/llmsafespace-runner.conf that touch these
# requests, with the route's socket and token written in
BARE_LOCATION = """
        location = /sb/%(id)s/%(what)s {
            proxy_pass http://unix:%(sock)s:/%(what)s;
            proxy_http_version 1.1;
            proxy_pass_request_headers off;
            proxy_set_header Host sandbox;
            proxy_set_header X-LLMSafeSpace-Runner-Token %(token)s;
            proxy_set_header Content-Type $content_type;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
"""

WRK_LUA = r"""
local key = os.getenv("LSS_BENCH_KEY")
local paths = {}
for p in string.gmatch(os.getenv("LSS_BENCH_PATHS"), "%S+") do
    paths[#paths + 1] = p
end
if os.getenv("LSS_BENCH_METHOD") == "POST" then
    wrk.method = "POST"
    wrk.body = '{"type":"code","language":"python","content":"print(1)"}'
    wrk.headers["Content-Type"] = "application/json"
end
if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
end
local i = 0
function request()
    i = i + 1
    return wrk.format(nil, paths[(i % #paths) + 1])
end
-- answers other than 2xx, by status (each thread keeps its own)
local threads = {}
function setup(thread)
    table.insert(threads, thread)
end
codes = {}
function response(status, headers, body)
    if status >= 300 then
        codes[status] = (codes[status] or 0) + 1
    end
end
-- status: answers other than 2xx/3xx; timeout: none within wrk's 2 s
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %.1f %d %d %d %d %d\n",
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(99), e.status,
        e.timeout, e.connect + e.read + e.write))
    for _, t in ipairs(threads) do
        for status, n in pairs(t:get("codes")) do
            io.write(string.format("STATUS %d %d\n", status, n))
        end
    end
end
"""


# non-2xx answers seen under load, by status, all loads together
STATUSES = {}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wrk(port, paths, key, args, duration, method):
    env = dict(os.environ, LSS_BENCH_PATHS=" ".join(paths),
               LSS_BENCH_KEY=key or "", LSS_BENCH_METHOD=method)
    r = subprocess.run(["wrk", "-t1", "-c%d" % args.connections,
                        "-d%ds" % duration, "-s", args.lua,
                        "http://127.0.0.1:%d/" % port],
                       env=env, capture_output=True, text=True,
                       timeout=duration + 60)
    for line in r.stdout.splitlines():
        if line.startswith("STATUS"):
            _, code, n = line.split()
            STATUSES[code] = STATUSES.get(code, 0) + int(n)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT"):
            v = line.split()[1:]
            return (float(v[0]), int(v[1]) / 1e6, int(v[2]) / 1e6,
                    int(v[3]), int(v[4]), int(v[5]))
    raise RuntimeError("wrk: %s %s" % (r.stdout, r.stderr))


def start_bare(st, sids, workdir):
    """A stock nginx (no module) proxying to the same runners: port."""
    d = os.path.join(workdir, "bare")
    os.mkdir(d)
    locs = []
    for sid in sids:
        sock, token = st.route(sid)
        for what in ("execute", "files"):
            locs.append(BARE_LOCATION % {"id": sid, "sock": sock,
                                         "token": token, "what": what})
    port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(BARE_CONF % {"user": WORKER_USER, "dir": d, "port": port,
                             "locations": "".join(locs)})
    subprocess.run(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")],
                   check=True)
    return port, d


# the two loads: a runner-bound one (every request forks an execution)
# and a gateway-bound one (a directory listing the runner answers from
# its own process), so the gateway's share shows in one of them
LOADS = (("execute print(1)", "POST", "/api/v1/sandboxes/%s/execute",
          "/sb/%s/execute"),
         ("GET files?path=/", "GET", "/api/v1/sandboxes/%s/files?path=/",
          "/sb/%s/files?path=/"))


def bench_throughput(st, args, sids, workdir):
    """{load name: (gateway rounds, bare rounds)}"""
    port, d = start_bare(st, sids, workdir)
    args.lua = os.path.join(workdir, "load.lua")
    with open(args.lua, "w") as f:
        f.write(WRK_LUA)
    out = {}
    try:
        # one request each way must work before anything is timed
        c = Client(http.client.HTTPConnection("127.0.0.1", port), {})
        for sid in sids:
            c.timed_execute("/sb/%s/execute" % sid)
            status, doc = c.call("GET", "/sb/%s/files?path=/" % sid)
            if status != 200 or not isinstance(doc, list):
                raise RuntimeError("bare files: %d %s" % (status, doc))
        for name, method, gw_fmt, bare_fmt in LOADS:
            gw = [gw_fmt % s for s in sids]
            bare = [bare_fmt % s for s in sids]
            wrk(st.port, gw, st.key, args, 1, method)
            wrk(port, bare, None, args, 1, method)
            a, b = [], []
            for rnd in range(args.rounds):
                if rnd % 2 == 0:
                    a.append(wrk(st.port, gw, st.key, args, args.duration,
                                 method))
                    b.append(wrk(port, bare, None, args, args.duration,
                                 method))
                else:
                    b.append(wrk(port, bare, None, args, args.duration,
                                 method))
                    a.append(wrk(st.port, gw, st.key, args, args.duration,
                                 method))
                print("%s round %d/%d: gateway %.0f req/s, bare %.0f req/s "
                      "(errors: status, timeout, socket: %s / %s)"
                      % (name, rnd + 1, args.rounds, a[-1][0], b[-1][0],
                         a[-1][3:], b[-1][3:]), file=sys.stderr)
            out[name] = (a, b)
        return out
    finally:
        subprocess.run(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"),
                        "-s", "stop"], capture_output=True)


# -- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--creates", type=int, default=4)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--fresh", type=int, default=20)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--sandboxes", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/e2e.py: runc needs root")
    if shutil.which("wrk") is None:
        sys.exit("bench/e2e.py: wrk is missing (tools/deps.sh)")

    st = Stack(args.url, args.run)
    workdir = tempfile.mkdtemp(prefix="lss-e2e-bench-")
    os.chmod(workdir, 0o755)
    sids = []
    ms = 1000.0
    rows = []
    try:
        print("create: %d rounds" % args.rounds, file=sys.stderr)
        a, b = bench_create(st, args, workdir)
        rows.append(("create, warm pool, through the gateway", a,
                     "`runc run -d`, same rootfs", b))

        _, sid = st.create()
        sids.append(sid)
        print("execute: %d rounds" % args.rounds, file=sys.stderr)
        a, b, c = bench_execute(st, args, sid)
        rows.append(("execute print(1), through the gateway", a,
                     "the same at the runner's socket", b))
        rows.append(("execute print(1), through the gateway", a,
                     "fresh `python3 -c print(1)`", c))

        print("stream: %d rounds" % args.rounds, file=sys.stderr)
        a, b = asyncio.run(bench_stream_async(st, args, sid))
        rows.append(("WebSocket: execute to first output, gateway", a,
                     "the runner's own /stream", b))

        while len(sids) < args.sandboxes:
            sids.append(st.create()[1])
        print("throughput: %d sandboxes, %d connections, %d rounds x %ds"
              % (len(sids), args.connections, args.rounds, args.duration),
              file=sys.stderr)
        loads = bench_throughput(st, args, sids, workdir)
    finally:
        for s in sids:
            try:
                st.delete(s)
            except Exception as e:  # the stack goes away anyway
                print("delete %s: %s" % (s, e), file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("# end to end benchmark %s, %s, %d cores, %s"
          % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             platform.node(), os.cpu_count(), platform.release()))
    print("# %d rounds alternating A/B; per round: %d creates, %d executes "
          "each way and %d fresh processes, %d streamed executions each way"
          % (args.rounds, args.creates, args.execs, args.fresh,
             args.streams))
    print()
    print("| figure | p50 ms | p99 ms | baseline | baseline p50 ms | "
          "baseline p99 ms | ratio p50 |")
    print("|---|---|---|---|---|---|---|")
    for name, a, bname, b in rows:
        print("| %s | %.2f | %.2f | %s | %.2f | %.2f | %.3f |"
              % (name, statistics.median(a) * ms, pct(a, 99) * ms, bname,
                 statistics.median(b) * ms, pct(b, 99) * ms,
                 statistics.median(a) / statistics.median(b)))

    # throughput: medians over rounds; the ratio is the median of the
    # per-round ratios (A and B ran back to back)
    med = statistics.median
    notes = []
    for name, _, _, _ in LOADS:
        ta, tb = loads[name]
        ratio = med([x[0] / y[0] for x, y in zip(ta, tb)])
        print("| throughput, %s, %d sandboxes, wrk -c%d: req/s | %.0f | | "
              "bare nginx proxy_pass to the same runners | %.0f | | %.3f |"
              % (name, len(sids), args.connections, med([x[0] for x in ta]),
                 med([y[0] for y in tb]), ratio))
        print("| same: wrk latency | %.2f | %.2f | bare nginx | %.2f | %.2f "
              "| %.3f |"
              % (med([x[1] for x in ta]) * ms, med([x[2] for x in ta]) * ms,
                 med([y[1] for y in tb]) * ms, med([y[2] for y in tb]) * ms,
                 med([x[1] for x in ta]) / med([y[1] for y in tb])))
        for side, rounds in (("gateway", ta), ("bare", tb)):
            e = [sum(x[k] for x in rounds) for k in (3, 4, 5)]
            if sum(e):
                notes.append("%s, %s: %d non-2xx answers, %d timeouts "
                             "(wrk: 2 s), %d socket errors"
                             % (name, side, e[0], e[1], e[2]))
    if STATUSES:
        notes.append("non-2xx by status: " + ", ".join(
            "%s: %d" % kv for kv in sorted(STATUSES.items())))
    if notes:
        print()
        for n in notes:
            print(n)


if __name__ == "__main__":
    main()
