#!/usr/bin/python3
"""What the runner's memory guard costs under gVisor (docs/benchmarks.md,
"Memory guard").

    bench/memguard.py [--rounds N] [--execs N]

Two runsc sandboxes of 512 MiB from the same root filesystem: A as
mkbundle makes it (--mem-guard 512 MiB: a thread reads /proc/meminfo
every 5 ms while an execution runs), B with the guard turned off
(--runner-arg=--mem-guard=0, which the runner takes last).  print(1) and
a 200 ms busy loop through each runner's socket, alternated round by
round, and the host CPU of each idle sandbox over 10 s (the guard sleeps
while nothing runs).  Root, the python rootfs.  Prints figures, never
fails on them.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import runner as rb  # noqa: E402  (bench/runner.py: client, helpers)

SPIN = "import time\nt = time.time() + 0.2\nwhile time.time() < t:\n    pass"


class RunscSandbox(rb.Sandbox):
    def __init__(self, workdir, extra):
        super().__init__(workdir, None, runtime="runsc", memory=512 << 20,
                         extra=extra)

    def cpu_ns(self):
        p = "/sys/fs/cgroup/cpuacct/llmsafespace/%s-runsc/cpuacct.usage" \
            % self.c.id
        with open(p) as f:
            return int(f.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=40)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/memguard.py: run as root")

    work = tempfile.mkdtemp(prefix="lss-memguard-")
    os.chmod(work, 0o755)
    a = RunscSandbox(work, [])
    b = RunscSandbox(work, ["--mem-guard", "0"])
    res = {k: [] for k in ("A print", "B print", "A spin", "B spin")}
    try:
        for sb in (a, b):
            for _ in range(5):
                sb.execute("print(1)")
        for _ in range(args.rounds):
            for name, sb in (("A", a), ("B", b)):
                for _ in range(args.execs):
                    res[name + " print"].append(sb.execute("print(1)"))
                for _ in range(max(1, args.execs // 8)):
                    res[name + " spin"].append(sb.execute(SPIN))
        idle = {}
        for name, sb in (("A", a), ("B", b)):
            t0 = sb.cpu_ns()
            time.sleep(10)
            idle[name] = (sb.cpu_ns() - t0) / 10e9 * 100
    finally:
        a.close()
        b.close()

    print("| runsc, 512 MiB | guard on (A) p50 / p99 ms | guard off (B) "
          "p50 / p99 ms | A / B p50 |")
    print("|---|---|---|---|")
    for what in ("print", "spin"):
        xa = [x * 1000 for x in res["A " + what]]
        xb = [x * 1000 for x in res["B " + what]]
        print("| %s | %.2f / %.2f | %.2f / %.2f | %.3fx |"
              % ("print(1)" if what == "print" else "200 ms busy loop",
                 statistics.median(xa), rb.pct(xa, 99),
                 statistics.median(xb), rb.pct(xb, 99),
                 statistics.median(xa) / statistics.median(xb)))
    print("| idle sandbox, host CPU | %.3f %% of a core | %.3f %% | |"
          % (idle["A"], idle["B"]))
    print("\n%d rounds x %d executions each, alternated; load average %.1f"
          % (args.rounds, args.execs, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
