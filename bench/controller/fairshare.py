#!/usr/bin/python3
"""Per-user CPU fairness (docs/benchmarks.md, "CPU per user").

One user (alice) spins in four sandboxes; another (bob) executes
`print(1)` in his one sandbox, again and again, through its runner.  Bob's
execute latency is measured with alice idle (the baseline), then with
alice spinning and the controller's --fair-share off and on, alternated
round by round in the same run.  Real controller, runc containers, Redis
and PostgreSQL, as the controller's tests start them.

    bench/controller/fairshare.py [--rounds 3] [--executions 150]
"""

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "controller", "tests"))
sys.path.insert(0, HERE)

import conftest  # noqa: E402
from bench import pct, poll, start_pg, stop_pg  # noqa: E402

SPIN = ("import time\nt = time.time() + %d\n"
        "while time.time() < t:\n    pass\n")


def spin(env, sid):
    try:
        env.execute(sid, SPIN % 60)
    except Exception:           # noqa: ended with its sandbox
        pass


def running(env, sids):
    return all((env.record(s) or ("",))[0] == "Running" for s in sids)


def bob_latencies(env, sid, n):
    out = []
    with env.runner(sid) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/execute", json={"type": "code",
                                         "language": "python",
                                         "content": "print(1)"})
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200 and r.json()["stdout"] == "1\n"
    return out


def one_round(env, fair, alice_spins, n):
    env.start(tick_ms=1000, extra=() if fair else ("--fair-share", "0"))
    alice = [env.create(owner="alice") for _ in range(4)]
    bob = env.create(owner="bob")
    poll(lambda: running(env, alice + [bob]), 120, 0.05)
    threads = []
    if alice_spins:
        for sid in alice:
            t = threading.Thread(target=spin, args=(env, sid), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(2.5)            # the controller sees them busy
    lat = bob_latencies(env, bob, n)
    for sid in alice + [bob]:
        env.request(type="delete", id=sid)
    env.stop()
    return lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--executions", type=int, default=150)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/controller/fairshare.py: run as root")

    pg = start_pg()
    env = conftest.Env(pg)
    res = {"alice idle": [], "alice spins, per sandbox": [],
           "alice spins, per user": []}
    try:
        for _ in range(args.rounds):
            res["alice idle"] += one_round(env, True, False,
                                           args.executions)
            res["alice spins, per sandbox"] += one_round(
                env, False, True, args.executions)
            res["alice spins, per user"] += one_round(
                env, True, True, args.executions)
    finally:
        env.close()
        stop_pg(pg)

    base = res["alice idle"]
    print("| bob's execute `print(1)` | p50 ms | p99 ms | p99 / idle |")
    print("|---|---|---|---|")
    for name, xs in res.items():
        print("| %s | %.1f | %.1f | %.2fx |"
              % (name, statistics.median(xs), pct(xs, 99),
                 pct(xs, 99) / pct(base, 99)))
    print("\n%d executions per case, %d rounds alternated, %d cores, "
          "load average %.1f" % (args.executions * args.rounds, args.rounds,
                                 os.cpu_count(), os.getloadavg()[0]))


if __name__ == "__main__":
    main()
