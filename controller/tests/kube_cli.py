"""Running lsc-kubectl-lite (the controller's Kubernetes client as a
command) from the tests; LSC_VALGRIND=1 runs it under memcheck and fails
on any error or definite leak."""

import json
import os
import queue
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
KCTL = os.path.join(BUILD, "controller", "lsc-kubectl-lite")
VALGRIND = os.environ.get("LSC_VALGRIND") == "1"
CM = "v1/configmaps/ConfigMap"


def _argv(kubeconfig, args):
    """kubeconfig None: the arguments say where the server is."""
    argv = [KCTL] + (["--kubeconfig", kubeconfig] if kubeconfig else [])
    argv += list(args)
    if VALGRIND:
        argv = ["valgrind", "--quiet", "--error-exitcode=99",
                "--leak-check=full", "--errors-for-leak-kinds=definite"] + argv
    return argv


def run(kubeconfig, *args, timeout=60, env=None):
    """One command: its JSON answer (exit 0 or 1 both answer)."""
    p = subprocess.run(_argv(kubeconfig, args), capture_output=True,
                       timeout=timeout, env=env)
    assert p.returncode in (0, 1), (p.returncode, p.stderr.decode()[-3000:])
    lines = p.stdout.decode().splitlines()
    assert len(lines) == 1, p.stdout
    out = json.loads(lines[0])
    out["_stderr"] = p.stderr.decode()
    return out


class Watch:
    """A watch command in the background; its lines on a queue."""

    def __init__(self, kubeconfig, *args, seconds=60):
        self.p = subprocess.Popen(
            _argv(kubeconfig, list(args) + ["watch", "--seconds",
                                            str(seconds)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        self.seen = []
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        self.err_thread = threading.Thread(target=self._read_err,
                                           daemon=True)
        self.err_thread.start()

    def _read(self):
        for raw in self.p.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def _read_err(self):
        self.stderr = self.p.stderr.read()

    def until(self, pred, timeout=30, what="line"):
        """Lines up to the first for which pred holds; fails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = "timeout"
            if line == "timeout" or line is None:
                raise AssertionError("no %s within %ss; seen %s" % (
                    what, timeout, self.seen[-20:]))
            self.seen.append(line)
            if pred(line):
                return line

    def events(self, typ=None):
        return [l for l in self.seen if "event" in l
                and (typ is None or l["event"] == typ)]

    def last_stats(self):
        stats = [l["stats"] for l in self.seen if "stats" in l]
        return stats[-1] if stats else {}

    def stop(self, how="signal"):
        """SIGTERM (or "stop" on stdin); the final line (cache, stats)."""
        if self.p.poll() is None:
            if how == "stdin":
                self.p.stdin.write(b"stop\n")
                self.p.stdin.flush()
            else:
                self.p.terminate()
        rc = self.p.wait(60)
        self.err_thread.join(10)
        final = self.until(lambda l: l.get("final"), timeout=10,
                           what="final line")
        assert rc == 0, (rc, self.stderr.decode()[-3000:])
        return final
