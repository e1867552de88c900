"""Quick figures of the runner (not a test, no asserts): run as root

    /usr/bin/python3 runtimes/runner/tests/measure.py [rounds]

print(1) round trip at the runner (HTTP over its unix socket, keep-alive)
against a fresh `python3 -c "print(1)"`, and `import numpy` with numpy
preloaded in the zygote against a fresh interpreter.  A and B alternate.
The real benchmarks live in bench/.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Runner  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    tmp = tempfile.mkdtemp(prefix="lss-measure-")
    r = Runner(tmp)
    try:
        for _ in range(20):
            r.execute("print(1)")
        figures = {"runner print(1)": [], "fresh python3 -c print(1)": [],
                   "runner import numpy (preloaded)": [],
                   "fresh python3 -c 'import numpy'": [],
                   "runner javascript (spare node)": [],
                   "fresh node -e": []}
        for i in range(rounds):
            t = time.perf_counter()
            out = r.execute("print(1)")
            figures["runner print(1)"].append(time.perf_counter() - t)
            assert out["stdout"] == "1\n"
            t = time.perf_counter()
            subprocess.run(["/usr/bin/python3", "-c", "print(1)"],
                           stdout=subprocess.DEVNULL, check=True)
            figures["fresh python3 -c print(1)"].append(
                time.perf_counter() - t)
            if i % 4 == 0:
                t = time.perf_counter()
                r.execute("import numpy")
                figures["runner import numpy (preloaded)"].append(
                    time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run(["/usr/bin/python3", "-c", "import numpy"],
                               check=True)
                figures["fresh python3 -c 'import numpy'"].append(
                    time.perf_counter() - t)
                t = time.perf_counter()
                r.execute("console.log(1)", language="javascript")
                figures["runner javascript (spare node)"].append(
                    time.perf_counter() - t)
                time.sleep(0.15)        # let the spare be replaced
                t = time.perf_counter()
                subprocess.run(["node", "-e", "console.log(1)"],
                               stdout=subprocess.DEVNULL, check=True)
                figures["fresh node -e"].append(time.perf_counter() - t)
        print("%-36s %9s %9s %6s" % ("figure", "p50 ms", "p99 ms", "n"))
        for k, v in figures.items():
            print("%-36s %9.2f %9.2f %6d" % (k, statistics.median(v) * 1000,
                                             pct(v, 99) * 1000, len(v)))
        with open("/proc/%d/status" % r.proc.pid) as f:
            rss = [l.split()[1] for l in f if l.startswith("VmRSS")][0]
        print("runner RSS: %s kB" % rss)
    finally:
        r.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
