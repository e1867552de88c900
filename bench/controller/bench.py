#!/usr/bin/python3
"""Controller benchmark: cold create to runner-ready against bare runc /
runsc starts of the same rootfs, pool refill rate, memory of an idle warm
sandbox, and how many warm sandboxes this machine holds (bounded run,
extrapolated).  Real parts only; run as root.  See docs/benchmarks.md.

    bench/controller/run.sh [--rounds N] [--capacity N]
"""

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "controller", "tests"))
sys.path.insert(0, os.path.join(TOP, "runtimes", "oci"))

import conftest  # noqa: E402
import sandbox  # noqa: E402  (runtimes' bundle helper: the bare baseline)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def poll(pred, timeout=60, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("benchmark condition not reached")


def start_pg():
    d = tempfile.mkdtemp(prefix="lsc-bpg-")
    os.chmod(d, 0o755)
    shutil.chown(d, "postgres")
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run(run + [conftest.PGBIN + "/initdb", "-D", d + "/data",
                          "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run(run + [conftest.PGBIN + "/pg_ctl", "-D", d + "/data",
                          "-w", "-l", d + "/log", "-o",
                          "-k %s -c listen_addresses='' -c fsync=off" % d,
                          "start"], check=True, capture_output=True)
    return d


def stop_pg(d):
    subprocess.run(["runuser", "-u", "postgres", "--",
                    conftest.PGBIN + "/pg_ctl", "-D", d + "/data", "-m",
                    "immediate", "-w", "stop"], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def runner_ready(sock, token):
    """One raw HTTP/1.1 GET /readyz on the runner's socket: the cheapest
    probe, so that the bare baseline pays no client start-up (an httpx
    client costs milliseconds to make)."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(1)
        s.connect(sock)
        s.sendall(("GET /readyz HTTP/1.1\r\nHost: r\r\n%s: %s\r\n"
                   "Connection: close\r\n\r\n"
                   % (conftest.TOKEN_HEADER, token)).encode())
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def bare_python(runtime, workdir):
    """A bare foreground run of `python3 -c pass` in the same rootfs, to
    its exit: the runtime's start plus an interpreter's."""
    c = sandbox.Container(conftest.ROOTFS, workdir, runtime,
                          command=["python3", "-c", "pass"])
    try:
        t0 = time.monotonic()
        r = c.run()
        dt = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError("bare python run failed: " + r.stderr)
        return dt
    finally:
        c.delete()


def bare(runtime, workdir, to_ready):
    """One bare start of the same rootfs and runner: seconds."""
    c = sandbox.Container(conftest.ROOTFS, workdir, runtime,
                          runner_args=["--languages", "python,bash"])
    try:
        t0 = time.monotonic()
        c.start()
        if to_ready:
            poll(lambda: runner_ready(c.socket, c.token))
        return time.monotonic() - t0
    finally:
        c.delete()


def controller_cold(env, level):
    sid = env.create(level=level, timeout=600)
    t0 = time.monotonic()
    poll(lambda: env.r.exists("lss:sb:" + sid))
    dt = time.monotonic() - t0
    env.request(type="delete", id=sid, owner="alice")
    poll(lambda: (env.record(sid) or ("",))[0] in ("Terminated", "Failed"))
    return dt


def container_pss_kib(env, cid, runtime):
    root = os.path.join(env.state, runtime)
    r = subprocess.run([runtime, "--root", root, "ps", "--format", "json",
                        cid], capture_output=True, text=True)
    pids = json.loads(r.stdout or "[]") or []
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def cpu_busy(seconds):
    """Whole host, percent of all cores (other work on the host counts)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t1, i1 = snap()
    time.sleep(seconds)
    t2, i2 = snap()
    return 100.0 * (1 - (i2 - i1) / max(1, (t2 - t1)))


def own_cpu(env, ids, seconds):
    """CPU of the controller and of the sandboxes' cgroups only, percent
    of one core: what idle warm sandboxes cost, whatever else runs."""
    tck = os.sysconf("SC_CLK_TCK")

    def snap():
        with open("/proc/%d/stat" % env.proc.pid) as f:
            v = f.read().rsplit(")", 1)[1].split()
        # its own time and its waited-for children's (runc, mkbundle)
        ns = sum(int(x) for x in v[11:15]) * 1e9 / tck
        for i in ids:
            try:
                with open("/sys/fs/cgroup/cpuacct/llmsafespace/lss-%s/"
                          "cpuacct.usage" % i) as f:
                    ns += int(f.read())
            except OSError:
                pass
        return ns
    a = snap()
    t0 = time.monotonic()
    time.sleep(seconds)
    b = snap()
    return 100.0 * (b - a) / 1e9 / (time.monotonic() - t0)


def row(rows, name, xs, base_name="", base=None):
    p50, p99 = pct(xs, 50) * 1000, pct(xs, 99) * 1000
    if base:
        b50, b99 = pct(base, 50) * 1000, pct(base, 99) * 1000
        rows.append((name, "%.1f" % p50, "%.1f" % p99, base_name,
                     "%.1f" % b50, "%.1f" % b99, "%.2f" % (p50 / b50)))
    else:
        rows.append((name, "%.1f" % p50, "%.1f" % p99, "", "", "", ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/controller: run as root")

    pg = start_pg()
    env = conftest.Env(pg)
    work = tempfile.mkdtemp(prefix="lsc-bare-")
    os.chmod(work, 0o755)
    rows, notes = [], []
    try:
        env.start(tick_ms=1000)
        # warm-up: page cache, first runc start
        controller_cold(env, "standard")
        bare("runc", work, True)

        ctl, b_run, b_ready, b_py = [], [], [], []
        for _ in range(args.rounds):
            ctl.append(controller_cold(env, "standard"))
            b_run.append(bare("runc", work, False))
            b_ready.append(bare("runc", work, True))
            b_py.append(bare_python("runc", work))
        row(rows, "cold create → runner ready (runc), controller", ctl,
            "bare `runc run -d`", b_run)
        row(rows, "same", ctl, "bare `runc run -d` + runner /readyz",
            b_ready)
        row(rows, "same", ctl, "bare `runc run` of `python3 -c pass`", b_py)

        s_run, s_ready, s_py, s_ctl = [], [], [], []
        try:
            for _ in range(max(3, args.rounds // 2)):
                s_ctl.append(controller_cold(env, "high"))
                s_run.append(bare("runsc", work, False))
                s_ready.append(bare("runsc", work, True))
                s_py.append(bare_python("runsc", work))
            row(rows, "cold create → runner ready (runsc), controller",
                s_ctl, "bare `runsc run -d`", s_run)
            row(rows, "same", s_ctl, "bare `runsc run -d` + runner /readyz",
                s_ready)
            row(rows, "same", s_ctl,
                "bare `runsc run` of `python3 -c pass`", s_py)
        except TimeoutError:
            row(rows, "bare `runsc run -d` (controller run: see note)",
                s_run)
            notes.append("runsc cold create not measured: the runner did "
                         "not become ready under runsc (see the record's "
                         "message)")

        # refill: a pool of 10 from empty, then 5 claimed at once
        env.pool("bench", minSize=10, maxSize=10)
        t0 = time.monotonic()
        poll(lambda: len(env.ready("bench")) == 10, 120, 0.01)
        fill = time.monotonic() - t0
        claimed = [env.claim("bench", "bench") for _ in range(5)]
        t0 = time.monotonic()
        poll(lambda: len(env.ready("bench")) == 10, 120, 0.01)
        refill = time.monotonic() - t0
        rows.append(("pool fill 0 → 10 ready", "%.0f" % (fill * 1000), "",
                     "", "", "", "%.1f sandboxes/s" % (10 / fill)))
        rows.append(("pool refill after 5 claims", "%.0f" % (refill * 1000),
                     "", "", "", "", "%.1f sandboxes/s" % (5 / refill)))

        # idle warm sandbox memory
        time.sleep(2)
        ids = env.ready("bench")
        rows.append(("10 idle warm sandboxes: controller + sandboxes CPU "
                     "(% of one core)", "%.2f" % own_cpu(env, ids, 10), "",
                     "", "", "",
                     "1 s ticks; a full runtime list every 30 s"))
        pss = [container_pss_kib(env, "lss-" + i, "runc") for i in ids]
        cg = []
        for i in ids:
            try:
                with open("/sys/fs/cgroup/memory/llmsafespace/lss-%s/"
                          "memory.usage_in_bytes" % i) as f:
                    cg.append(int(f.read()) / 1024)
            except OSError:
                pass
        rows.append(("idle warm sandbox, PSS (MiB)",
                     "%.1f" % (statistics.median(pss) / 1024), "", "", "",
                     "", "target ≤ 16"))
        if cg:
            rows.append(("idle warm sandbox, memory cgroup (MiB)",
                         "%.1f" % (statistics.median(cg) / 1024), "", "",
                         "", "", ""))

        # capacity: a bounded number of warm sandboxes, then extrapolate
        os.unlink(os.path.join(env.pools, "bench.yaml"))
        for sid in claimed:
            env.request(type="delete", id=sid, owner="bench")
        poll(lambda: not env.running(), 120, 0.05)
        time.sleep(2)
        avail0 = mem_available_kib()
        n = args.capacity
        env.pool("cap", minSize=n, maxSize=n)
        t0 = time.monotonic()
        poll(lambda: len(env.ready("cap")) == n, 600, 0.05)
        tfill = time.monotonic() - t0
        time.sleep(5)
        used = (avail0 - mem_available_kib()) / 1024.0
        busy = cpu_busy(10)
        own = own_cpu(env, env.ready("cap"), 10)
        per = used / n
        total = 24 * 1024
        rows.append(("%d warm sandboxes: host memory used (MiB)" % n,
                     "%.0f" % used, "", "", "", "",
                     "%.1f MiB each" % per))
        rows.append(("%d warm sandboxes: controller + sandboxes CPU "
                     "(%% of one core)" % n, "%.2f" % own, "", "", "", "",
                     "target < 5 (of the machine)"))
        rows.append(("%d warm sandboxes: whole host CPU busy (%%)" % n,
                     "%.1f" % busy, "", "", "", "",
                     "includes other work on the host"))
        rows.append(("%d warm sandboxes: fill time (ms)" % n,
                     "%.0f" % (tfill * 1000), "", "", "", "",
                     "%.1f sandboxes/s" % (n / tfill)))
        notes.append("extrapolated capacity of a 24 GiB machine by memory: "
                     "~%d warm sandboxes (%.1f MiB each, measured with %d); "
                     "not measured beyond %d" % (int(total * 0.9 / per), per,
                                                  n, n))
    finally:
        env.close()
        shutil.rmtree(work, ignore_errors=True)
        stop_pg(pg)

    print("| figure | p50 ms | p99 ms | baseline | baseline p50 ms | "
          "baseline p99 ms | ratio / note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for n in notes:
        print("\n- " + n)


if __name__ == "__main__":
    main()
