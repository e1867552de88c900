"""Start and delete one sandbox (a runc or runsc container) from Python.

Shared by the in-container tests (runtimes/tests) and the runner benchmark
(bench/runner.py): a bundle written by mkbundle, a per-sandbox run
directory holding the token and the runner's socket, and the container
itself.  Standard library only.
"""

import json
import os
import secrets
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MKBUNDLE = os.path.join(HERE, "mkbundle")

# --file-access-mounts=exclusive: the run directory is changed by nobody
# but the sandbox once it runs, and in the default "shared" mode runsc
# 20221219 refuses chmod on the socket the runner creates there.
RUNSC_FLAGS = ["--ignore-cgroups", "--oci-seccomp", "--network=none",
               "--host-uds=create", "--file-access-mounts=exclusive"]


class NoRootfs(Exception):
    pass


def rootfs(root, name):
    path = os.path.join(root, name)
    if not os.path.isdir(os.path.join(path, "usr")):
        raise NoRootfs("no rootfs at %s: run `make -C runtimes rootfs`"
                       % path)
    return path


class Container:
    """One sandbox: bundle, run directory, token, and a running container.

    `start()` runs the container detached; `run()` runs it in the
    foreground to completion (for one-shot commands).  `delete()` is
    idempotent and is what the fixture calls on teardown.
    """

    def __init__(self, rootfs_dir, workdir, runtime, name="python",
                 command=None, **limits):
        self.runtime = runtime
        self.dir = tempfile.mkdtemp(prefix="c-", dir=workdir)
        self.id = "lss-t-%s" % secrets.token_hex(6)
        self.bundle = os.path.join(self.dir, "bundle")
        self.run_dir = os.path.join(self.dir, "run")
        self.state = os.path.join(workdir, "runsc-state")
        self.token = secrets.token_urlsafe(32)
        self.log = os.path.join(self.dir, "container.log")
        self.started = False
        tok = os.path.join(self.dir, "token.src")
        with open(tok, "w") as f:
            f.write(self.token)
        argv = [MKBUNDLE, "--rootfs", rootfs(rootfs_dir, name), "--bundle", self.bundle,
                "--run-dir", self.run_dir, "--token-file", tok,
                "--runtime", runtime, "--id", self.id]
        for k, v in limits.items():
            if k == "runner_args":
                for a in v:
                    argv.append("--runner-arg=" + a)
                continue
            if k == "caps":
                for a in v:
                    argv += ["--cap", a]
                continue
            argv += ["--" + k.replace("_", "-"), str(v)]
        if command:
            argv += ["--"] + command
        subprocess.run(argv, check=True)
        os.unlink(tok)

    @property
    def socket(self):
        return os.path.join(self.run_dir, "runner.sock")

    def _argv(self, detach):
        if self.runtime == "runc":
            a = ["runc", "run", "--bundle", self.bundle]
            if detach:
                a.append("--detach")
            return a + [self.id]
        a = [MKBUNDLE, "cgroup-exec", "--bundle", self.bundle, "--",
             "runsc", "--root", self.state] + RUNSC_FLAGS + ["run"]
        if detach:
            a.append("--detach")
        return a + ["--bundle", self.bundle, self.id]

    def run(self, timeout=60, input=None):
        """Run to completion; returns CompletedProcess (text)."""
        self.started = True
        return subprocess.run(self._argv(False), capture_output=True,
                              text=True, timeout=timeout, input=input)

    def start(self, timeout=60):
        self.started = True
        with open(self.log, "ab") as log:
            subprocess.run(self._argv(True), stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, check=True,
                           timeout=timeout)

    def state_json(self):
        if self.runtime == "runc":
            a = ["runc", "state", self.id]
        else:
            a = ["runsc", "--root", self.state, "state", self.id]
        r = subprocess.run(a, capture_output=True, text=True)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def host_pids(self):
        """Host pids of the container's processes (runc only)."""
        r = subprocess.run(["runc", "ps", "--format", "json", self.id],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout) or []

    def logs(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def delete(self):
        if self.started:
            if self.runtime == "runc":
                subprocess.run(["runc", "delete", "--force", self.id],
                               capture_output=True, timeout=30)
            else:
                subprocess.run(["runsc", "--root", self.state, "delete",
                                "--force", self.id],
                               capture_output=True, timeout=30)
            subprocess.run([MKBUNDLE, "cgroup-remove", "--bundle",
                            self.bundle], capture_output=True, timeout=60)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
