#!/usr/bin/python3
"""Runner benchmark: execution round trips inside a real runc sandbox.

    bench/runner.py [--rounds N] [--execs N] [--fresh N] [--gap-ms MS]
                    [--compare ROOTFS]

Measures, alternating A and B over several rounds (docs/performance.md):

  print(1)       POST /execute to the runner over its unix socket (the
                 gateway's path minus the gateway), back to back, against
                 a fresh `python3 -c "print(1)"` on the host.
  print(1), spaced
                 the same with --gap-ms between executions, as one agent's
                 calls come (the sandbox is idle in between).
  import numpy   numpy preloaded in the runner's zygote, against a fresh
                 `python3 -c "import numpy"`.
  idle memory    runner + zygotes of an idle sandbox without preloads:
                 the sum of their proportional set sizes (PSS) and the
                 sandbox's memory cgroup usage.

The client is the standard library's http.client on one keep-alive
connection: its floor (the GET /healthz row) is ~0.1 ms, where httpx's
was 0.4-0.7 ms.  --compare ROOTFS adds the same print(1) figures for the
runner of ROOTFS/python (another build: e.g. a copy of build/rootfs with
older binaries in python/usr/local/bin), alternating with the first in
the same rounds.

Needs root (runc) and the python rootfs (`make -C runtimes rootfs`).  A
benchmark, not a test: it prints figures and never fails on them.
"""

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "runtimes", "oci"))

import sandbox  # noqa: E402

BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
ROOTFS = os.path.join(BUILD, "rootfs")
TOKEN_HEADER = "X-LLMSafeSpace-Runner-Token"
HOST_PYTHON = "/usr/bin/python3"


def pct(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 keep-alive on the runner's unix socket."""

    def __init__(self, path):
        super().__init__("runner", timeout=60)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Sandbox:
    def __init__(self, workdir, preload, rootfs=ROOTFS, runtime="runc",
                 memory=1 << 30, extra=()):
        args = ["--languages", "python,bash", "--default-timeout", "30"]
        if preload:
            args += ["--preload-packages", preload]
        self.c = sandbox.Container(rootfs, workdir, runtime,
                                   runner_args=args + list(extra),
                                   memory=memory, pids=512)
        self.c.start()
        self.http = UnixHTTPConnection(self.c.socket)
        self.headers = {TOKEN_HEADER: self.c.token}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if os.path.exists(self.c.socket) and \
                        self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                self.http.close()
            time.sleep(0.05)
        raise RuntimeError("runner not ready:\n" + self.c.logs())

    def request(self, method, path, body=None):
        headers = self.headers
        if body is not None:
            headers = dict(headers, **{"Content-Type": "application/json"})
        self.http.request(method, path, body=body, headers=headers)
        r = self.http.getresponse()
        return r.status, r.read()

    def execute(self, code):
        body = json.dumps({"type": "code", "language": "python",
                           "content": code})
        t0 = time.perf_counter()
        status, data = self.request("POST", "/execute", body)
        dt = time.perf_counter() - t0
        if status != 200 or json.loads(data).get("status") != "completed":
            raise RuntimeError("execution failed: %s" % data[:500])
        return dt

    def healthz(self):
        t0 = time.perf_counter()
        status, _ = self.request("GET", "/healthz")
        dt = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError("healthz: %d" % status)
        return dt

    def memory(self):
        pss = 0
        for pid in self.c.host_pids():
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
            except OSError:
                pass
        cg = "/sys/fs/cgroup/memory/llmsafespace/%s/memory.usage_in_bytes" \
            % self.c.id
        try:
            with open(cg) as f:
                usage = int(f.read()) // 1024
        except OSError:
            usage = None
        return pss, usage

    def close(self):
        self.http.close()
        self.c.delete()


def fresh(code):
    t0 = time.perf_counter()
    subprocess.run([HOST_PYTHON, "-c", code], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(rounds, n_exec, n_fresh, sbs, code, gap=0.0):
    """Per round: n_exec executions in each sandbox of sbs in turn, then
    n_fresh fresh processes; gap seconds of idleness before each
    execution."""
    a = [[] for _ in sbs]
    b = []
    for _ in range(rounds):
        for i, sb in enumerate(sbs):
            for _ in range(n_exec):
                if gap:
                    time.sleep(gap)
                a[i].append(sb.execute(code))
        for _ in range(n_fresh):
            b.append(fresh(code))
    return a, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--fresh", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=20.0)
    ap.add_argument("--compare", metavar="ROOTFS")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/runner.py: runc needs root")

    workdir = tempfile.mkdtemp(prefix="lss-bench-")
    os.chmod(workdir, 0o755)
    plain = numpy = other = None
    try:
        plain = Sandbox(workdir, None)
        numpy = Sandbox(workdir, "numpy")
        if args.compare:
            other = Sandbox(workdir, None, rootfs=args.compare)
        for sb in (plain, numpy, other):
            for _ in range(20 if sb is not None else 0):
                sb.execute("print(1)")
        # idle: let the warm-up executions' shepherds finish
        time.sleep(1.0)
        pss, usage = plain.memory()
        rows = []
        # The floor under every figure: this Python client and one HTTP
        # exchange on the unix socket, no execution.
        floor = [plain.healthz() for _ in range(args.execs * 2)]
        sbs = [plain] + ([other] if other else [])
        a, b = measure(args.rounds, args.execs, args.fresh, sbs, "print(1)")
        rows.append(("execute print(1), runner", a[0],
                     "fresh python3 -c print(1)", b))
        if other:
            rows.append(("execute print(1), --compare runner", a[1],
                         "fresh python3 -c print(1)", b))
        a, b = measure(args.rounds, args.execs // 4, args.fresh // 4, sbs,
                       "print(1)", args.gap_ms / 1000.0)
        rows.append(("execute print(1), %g ms apart" % args.gap_ms, a[0],
                     "fresh python3 -c print(1)", b))
        if other:
            rows.append(("execute print(1), %g ms apart, --compare runner"
                         % args.gap_ms, a[1], "fresh python3 -c print(1)",
                         b))
        a, b = measure(args.rounds, args.execs // 2, args.fresh // 2,
                       [numpy], "import numpy")
        rows.append(("execute import numpy, preloaded", a[0],
                     "fresh python3 -c 'import numpy'", b))
    finally:
        for sb in (plain, numpy, other):
            if sb is not None:
                sb.close()
        subprocess.run(["rm", "-rf", workdir])

    ms = 1000.0
    print("# runner benchmark %s, %s, %d cores, %s"
          % (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             platform.node(), os.cpu_count(), platform.release()))
    print("# %d rounds alternating A/B; per round %d runner executions, "
          "%d fresh processes (numpy: half)" % (args.rounds, args.execs,
                                                 args.fresh))
    print()
    print("| figure | p50 ms | p99 ms | baseline | baseline p50 ms | "
          "baseline p99 ms | ratio p50 |")
    print("|---|---|---|---|---|---|---|")
    for name, a, bname, b in rows:
        print("| %s | %.2f | %.2f | %s | %.2f | %.2f | %.3f |"
              % (name, statistics.median(a) * ms, pct(a, 99) * ms, bname,
                 statistics.median(b) * ms, pct(b, 99) * ms,
                 statistics.median(a) / statistics.median(b)))
    print("| GET /healthz (http.client + HTTP floor) | %.2f | %.2f | | | | |"
          % (statistics.median(floor) * ms, pct(floor, 99) * ms))
    print("| idle runner + zygotes, no preloads: PSS | %.1f MiB | | "
          "memory cgroup usage | %s | | |"
          % (pss / 1024.0, "%.1f MiB" % (usage / 1024.0)
             if usage is not None else "n/a"))


if __name__ == "__main__":
    main()
