"""Fixtures for the runner's host tests.

The tests start a real llmsafespace-runner (root) on a temporary unix
socket with a temporary workspace, an exec uid that no other process on
the machine uses, and stop it at the end.  No mocks: real zygotes, real
python, node, bash.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zipfile

import httpx
import pytest
import websockets

BUILD = os.environ.get("RUNNER_BUILD_DIR",
                       os.path.join(os.path.dirname(__file__),
                                    "../../../build/runner"))
RUNNER = os.path.join(BUILD, "llmsafespace-runner")
EXEC_UID = 61234
TOKEN = "test-token-" + os.urandom(8).hex()
HEADER = "X-LLMSafeSpace-Runner-Token"


def make_wheel(directory, name, version, module_source):
    """A minimal pure-Python wheel, so pip needs no index."""
    dist = "%s-%s" % (name, version)
    path = os.path.join(directory, "%s-py3-none-any.whl" % dist)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("%s.py" % name, module_source)
        z.writestr(dist + ".dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: %s\nVersion: %s\n"
                   % (name, version))
        z.writestr(dist + ".dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(dist + ".dist-info/RECORD", "")
    return path


class Runner:
    def __init__(self, tmp, extra_args=(), env=None, exec_uid=EXEC_UID):
        self.tmp = tmp
        self.exec_uid = exec_uid
        self.sock = os.path.join(tmp, "runner.sock")
        self.workspace = os.path.join(tmp, "workspace")
        self.tmpdir = os.path.join(tmp, "tmp")
        self.wheels = os.path.join(tmp, "wheels")
        self.token_file = os.path.join(tmp, "token")
        for d in (self.workspace, self.tmpdir, self.wheels):
            os.makedirs(d)
        os.chown(self.workspace, exec_uid, exec_uid)
        os.chmod(self.tmpdir, 0o1777)
        os.chmod(tmp, 0o711)
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        make_wheel(self.wheels, "lsshello", "1.0",
                   "def hello():\n    return 'hello from a wheel'\n")
        self.preload = os.path.join(tmp, "preload.py")
        with open(self.preload, "w") as f:
            f.write("PRELOADED_HELPER = 'ready'\n")
        self.log = open(os.path.join(tmp, "runner.log"), "w+")
        args = [RUNNER, "--listen", "unix:" + self.sock,
                "--token-file", self.token_file,
                "--workspace", self.workspace, "--tmp", self.tmpdir,
                "--exec-uid", str(exec_uid), "--exec-gid", str(exec_uid),
                "--preload-packages", "json,numpy",
                "--preload-script", "helper=" + self.preload,
                "--pip-find-links", self.wheels,
                "--max-contexts", "3", "--max-timeout", "60",
                "--max-upload", str(512 * 1024 * 1024)] + list(extra_args)
        # an operator's CA bundle for a TLS-inspecting egress, if any
        if os.environ.get("NODE_EXTRA_CA_CERTS"):
            args += ["--exec-env", "NODE_EXTRA_CA_CERTS="
                     + os.environ["NODE_EXTRA_CA_CERTS"]]
        self.proc = subprocess.Popen(args, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})))
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.sock),
            base_url="http://runner", timeout=120,
            headers={HEADER: TOKEN})
        self.wait_ready()

    def wait_ready(self):
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError("runner exited: " + self.logtext())
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("runner not ready: " + self.logtext())

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def execute(self, content, **kw):
        body = {"type": "code", "language": "python", "content": content}
        body.update(kw)
        r = self.client.post("/execute", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def command(self, args, **kw):
        body = {"type": "command"}
        if isinstance(args, list):
            body["args"] = args
        else:
            body["content"] = args
        body.update(kw)
        r = self.client.post("/execute", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def ws(self):
        return websockets.unix_connect(
            self.sock, "ws://runner/stream",
            extra_headers={HEADER: TOKEN}, max_size=None)

    def stop(self):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def is_spare_node(pid):
    """The runner's waiting spare node (started by design, not leaked)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return (len(argv) >= 3 and argv[0].endswith(b"node") and argv[1] == b"-e"
            and b"readFileSync(3" in argv[2])


def is_fs_helper(pid):
    """The runner's fs helper (where setfsuid is not honoured)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"\0--fs-helper\0" in f.read()
    except OSError:
        return False


def uid_processes(uid=EXEC_UID, spares=False):
    """pids of every process running as uid (the exec uid)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(d))
                        break
        except OSError:
            pass
    if not spares:
        pids = [p for p in pids if not is_spare_node(p)
                and not is_fs_helper(p)]
    return pids


def wait_no_uid_processes(limit=5.0, uid=EXEC_UID):
    """Processes of the exec uid, after giving a killed tree time to go."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        left = uid_processes(uid)
        if not left:
            return []
        time.sleep(0.05)
    return uid_processes(uid)


@pytest.fixture(scope="session")
def runner():
    if os.geteuid() != 0:
        pytest.skip("the runner tests need root (setresuid, setfsuid)")
    if not os.path.exists(RUNNER):
        pytest.fail("build the runner first: make -C runtimes/runner")
    tmp = tempfile.mkdtemp(prefix="lss-runner-test-")
    r = Runner(tmp)
    yield r
    r.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def walk_runner(runner):
    """A second runner forced onto the fallbacks used where the kernel (or
    gVisor) lacks openat2, child subreapers and setfsuid."""
    tmp = tempfile.mkdtemp(prefix="lss-runner-walk-")
    r = Runner(tmp, ["--languages", "python,bash"], exec_uid=EXEC_UID + 1,
               env={"LLMSAFESPACE_RUNNER_NO_OPENAT2": "1",
                    "LLMSAFESPACE_RUNNER_NO_SUBREAPER": "1",
                    "LLMSAFESPACE_RUNNER_FS_HELPER": "1"})
    yield r
    r.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["openat2", "walk"])
def mode_runner(request, runner):
    """Run a test against the normal runner and the fallback one."""
    if request.param == "openat2":
        return runner
    return request.getfixturevalue("walk_runner")


@pytest.fixture
def clean_contexts(runner):
    yield
    for name in ("c1", "c2", "c3", "c4", "ctx"):
        runner.client.delete("/contexts/" + name)


def ws_run(runner, coro_fn):
    """Run an async test body against a fresh WebSocket."""
    async def main():
        async with runner.ws() as ws:
            return await asyncio.wait_for(coro_fn(ws), 60)
    return asyncio.run(main())


async def ws_collect(ws, execution_id, limit=10000):
    """Messages of one execution up to and including execution_complete."""
    out = []
    for _ in range(limit):
        m = json.loads(await ws.recv())
        if m.get("executionId") not in (execution_id, None):
            continue
        out.append(m)
        if m["type"] == "execution_complete":
            return out
    raise AssertionError("no execution_complete")


def describe(pids):
    """state, parent and command of pids, for assertion messages."""
    out = []
    for p in pids[:10]:
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%d/cmdline" % p, "rb") as f:
                cmd = f.read().replace(b"\0", b" ")[:60]
            out.append((p, st[0], int(st[1]), cmd))
        except OSError:
            pass
    return out
