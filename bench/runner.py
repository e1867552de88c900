#!/usr/bin/python3
"""Runner benchmark: execution round trips inside a real runc sandbox.

    bench/runner.py [--rounds N] [--execs N] [--fresh N] [--markdown]

Measures, alternating A and B over several rounds (docs/performance.md):

  print(1)       POST /execute to the runner over its unix socket (the
                 gateway's path minus the gateway), against a fresh
                 `python3 -c "print(1)"` on the host.
  import numpy   the same with numpy preloaded in the runner's zygote,
                 against a fresh `python3 -c "import numpy"`.
  idle memory    runner + zygotes of an idle sandbox without preloads:
                 the sum of their proportional set sizes (PSS) and the
                 sandbox's memory cgroup usage.

Needs root (runc) and the python rootfs (`make -C runtimes rootfs`).  A
benchmark, not a test: it prints figures and never fails on them.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

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


class Sandbox:
    def __init__(self, workdir, preload):
        args = ["--languages", "python,bash", "--default-timeout", "30"]
        if preload:
            args += ["--preload-packages", preload]
        self.c = sandbox.Container(ROOTFS, workdir, "runc",
                                   runner_args=args, memory=1 << 30,
                                   pids=512)
        self.c.start()
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.c.socket),
            base_url="http://runner",
            headers={TOKEN_HEADER: self.c.token}, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if os.path.exists(self.c.socket) and \
                        self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("runner not ready:\n" + self.c.logs())

    def execute(self, code):
        t0 = time.perf_counter()
        r = self.http.post("/execute", json={"type": "code",
                                             "language": "python",
                                             "content": code})
        dt = time.perf_counter() - t0
        body = r.json()
        if r.status_code != 200 or body.get("status") != "completed":
            raise RuntimeError("execution failed: %s" % r.text[:500])
        return dt

    def healthz(self):
        t0 = time.perf_counter()
        r = self.http.get("/healthz")
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError("healthz: %d" % r.status_code)
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


def measure(rounds, n_exec, n_fresh, sb, code):
    a, b = [], []
    for _ in range(rounds):
        for _ in range(n_exec):
            a.append(sb.execute(code))
        for _ in range(n_fresh):
            b.append(fresh(code))
    return a, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--fresh", type=int, default=20)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/runner.py: runc needs root")

    workdir = tempfile.mkdtemp(prefix="lss-bench-")
    os.chmod(workdir, 0o755)
    plain = numpy = None
    try:
        plain = Sandbox(workdir, None)
        numpy = Sandbox(workdir, "numpy")
        for sb in (plain, numpy):
            for _ in range(20):
                sb.execute("print(1)")
        # idle: let the warm-up executions' shepherds finish
        time.sleep(1.0)
        pss, usage = plain.memory()
        rows = []
        # The floor under every figure: this Python client and one HTTP
        # exchange on the unix socket, no execution.
        floor = [plain.healthz() for _ in range(args.execs * 2)]
        a, b = measure(args.rounds, args.execs, args.fresh, plain,
                       "print(1)")
        rows.append(("execute print(1), runner", a,
                     "fresh python3 -c print(1)", b))
        a, b = measure(args.rounds, args.execs // 2, args.fresh // 2, numpy,
                       "import numpy")
        rows.append(("execute import numpy, preloaded", a,
                     "fresh python3 -c 'import numpy'", b))
    finally:
        for sb in (plain, numpy):
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
    print("| GET /healthz (client + HTTP floor) | %.2f | %.2f | | | | |"
          % (statistics.median(floor) * ms, pct(floor, 99) * ms))
    print("| idle runner + zygotes, no preloads: PSS | %.1f MiB | | "
          "memory cgroup usage | %s | | |"
          % (pss / 1024.0, "%.1f MiB" % (usage / 1024.0)
             if usage is not None else "n/a"))


if __name__ == "__main__":
    main()
