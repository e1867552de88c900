"""Fixtures of the controller's tests.

Real parts only: the controller binary, runc and runsc, the runner inside
the python rootfs (make -C runtimes rootfs), and a Redis and a PostgreSQL
started here in temporary directories on unix sockets.  The gateway's side
of the contract is played by issuing exactly the commands the gateway
issues (the claim script loaded from controller/contract/claim.lua,
XADD to lss:requests).

Every test gets its own Redis, its own database, its own state dir and
its own controller; teardown removes every container, bundle and cgroup
left under that state dir, pass or fail.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import psycopg2
import pytest
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
CONTROLLER_DIR = os.path.dirname(HERE)
TOP = os.path.dirname(CONTROLLER_DIR)
BUILD = os.environ.get("LSS_BUILD", os.path.join(TOP, "build"))
BIN = os.path.join(BUILD, "controller", "llmsafespace-controller")
ROOTFS = os.path.join(BUILD, "rootfs")
MKBUNDLE = os.path.join(TOP, "runtimes", "oci", "mkbundle")
CLAIM_LUA = os.path.join(CONTROLLER_DIR, "contract", "claim.lua")
SCHEMA = os.path.join(TOP, "sql", "controller.sql")
PGBIN = "/usr/lib/postgresql/15/bin"
TOKEN_HEADER = "X-LLMSafeSpace-Runner-Token"

IS_ROOT = os.geteuid() == 0
# LSC_VALGRIND=1: every controller under memcheck; a test fails on any
# memory error or definite leak reported at a clean exit
VALGRIND = os.environ.get("LSC_VALGRIND") == "1"
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="runc, runsc and PostgreSQL as postgres need root")


def wait_until(pred, timeout=30.0, step=0.05, what="condition"):
    """Bounded poll: returns the predicate's first true value or fails."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.0fs waiting for %s"
                        % (timeout, what))
        time.sleep(step)


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL for the session; each test gets its own database."""
    if not IS_ROOT:
        pytest.skip("needs root")
    d = tempfile.mkdtemp(prefix="lsc-pg-")
    os.chmod(d, 0o755)
    shutil.chown(d, "postgres")
    data = os.path.join(d, "data")

    def as_pg(*argv):
        return subprocess.run(["runuser", "-u", "postgres", "--"]
                              + list(argv), check=True,
                              capture_output=True, text=True)

    as_pg(PGBIN + "/initdb", "-D", data, "-A", "trust", "-U", "postgres")
    as_pg(PGBIN + "/pg_ctl", "-D", data, "-w", "-l",
          os.path.join(d, "log"), "-o",
          "-k %s -c listen_addresses='' -c fsync=off" % d, "start")
    try:
        yield d
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--",
                        PGBIN + "/pg_ctl", "-D", data, "-m", "immediate",
                        "-w", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


class Env:
    """One test's world: Redis, a database, a state dir, a controller."""

    def __init__(self, pg_dir):
        self.dir = tempfile.mkdtemp(prefix="lsc-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "st")
        self.pools = os.path.join(self.dir, "pools")
        os.mkdir(self.pools)
        self.log = os.path.join(self.dir, "controller.log")
        self.proc = None
        self.procs = []

        self.redis_sock = os.path.join(self.dir, "redis.sock")
        self.restart_redis()

        self.db = "t_" + secrets.token_hex(6)
        admin = psycopg2.connect(host=pg_dir, user="postgres",
                                 dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE " + self.db)
        admin.close()
        self.conninfo = "host=%s user=postgres dbname=%s" % (pg_dir, self.db)
        self.reconnect_pg()
        # applied here too (the controller applies it at start): the
        # schema is idempotent, and tests may read before it starts
        with open(SCHEMA) as f:
            self.q(f.read())

        with open(CLAIM_LUA) as f:
            self.claim_script = self.r.register_script(f.read())

    def restart_redis(self):
        """A fresh, empty Redis on this test's socket."""
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.redis_sock,
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.r = redis.Redis(unix_socket_path=self.redis_sock,
                             decode_responses=True)
        wait_until(self._redis_up, 10, what="redis")
        if hasattr(self, "claim_script"):
            with open(CLAIM_LUA) as f:
                self.claim_script = self.r.register_script(f.read())

    def reconnect_pg(self):
        self.pg = psycopg2.connect(self.conninfo)
        self.pg.autocommit = True

    @staticmethod
    def pg_ctl(pg_dir, action):
        argv = ["runuser", "-u", "postgres", "--", PGBIN + "/pg_ctl", "-D",
                os.path.join(pg_dir, "data"), "-w"]
        if action == "stop":
            argv += ["-m", "fast", "stop"]
        else:
            argv += ["-l", os.path.join(pg_dir, "log"), "-o",
                     "-k %s -c listen_addresses='' -c fsync=off" % pg_dir,
                     "start"]
        subprocess.run(argv, check=True, capture_output=True)

    def _redis_up(self):
        try:
            return self.r.ping()
        except redis.exceptions.ConnectionError:
            return False

    # -- the controller ---------------------------------------------------

    def start(self, tick_ms=100, extra=()):
        argv = [BIN, "--state", self.state,
                "--redis", "unix:" + self.redis_sock,
                "--pg", self.conninfo, "--pools", self.pools,
                "--rootfs", ROOTFS, "--tick-ms", str(tick_ms)] + list(extra)
        if VALGRIND:
            argv = ["valgrind", "--leak-check=full",
                    "--errors-for-leak-kinds=definite",
                    "--log-file=%s/valgrind.%%p.log" % self.dir] + argv
        log = open(self.log, "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(p)
        self.proc = p
        return p

    def stop(self, p=None):
        p = p or self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill9(self, p=None):
        p = p or self.proc
        p.send_signal(signal.SIGKILL)
        p.wait()

    def logs(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    # -- manifests ----------------------------------------------------------

    def pool(self, name, **spec):
        doc = dict(name=name, runtime=spec.pop("runtime", "python"))
        doc.update(spec)
        with open(os.path.join(self.pools, name + ".yaml"), "w") as f:
            # JSON is YAML: no serializer needed to write a manifest
            json.dump(doc, f)

    # -- observations -------------------------------------------------------

    def q(self, sql, *args):
        with self.pg.cursor() as c:
            c.execute(sql, args)
            return c.fetchall() if c.description else None

    def record(self, sid):
        rows = self.q("SELECT phase, reason, owner, pool FROM sandboxes"
                      " WHERE id = %s", sid)
        return rows[0] if rows else None

    def ready(self, pool):
        return self.r.lrange("lss:pool:%s:ready" % pool, 0, -1)

    def containers(self):
        """{container id: status} under this controller's runtime roots."""
        out = {}
        for rt, fmt in (("runc", "--format"), ("runsc", "-format")):
            root = os.path.join(self.state, rt)
            if not os.path.isdir(root) or not os.listdir(root):
                continue
            # runc list fails while a container is half deleted: retry
            for _ in range(20):
                r = subprocess.run([rt, "--root", root, "list", fmt,
                                    "json"], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(0.05)
            r.check_returncode()
            for c in json.loads(r.stdout or "null") or []:
                out[c["id"]] = c["status"]
        return out

    def running(self):
        return sorted(k for k, v in self.containers().items()
                      if v == "running")

    def artifacts(self):
        ids = set()
        for sub in ("bundles", "sandboxes", "routes"):
            d = os.path.join(self.state, sub)
            if os.path.isdir(d):
                ids.update(os.listdir(d))
        return ids

    def claim(self, pool, owner, ttl_ms=600000):
        now = int(time.time() * 1000)
        return self.claim_script(
            keys=["lss:pool:%s:ready" % pool, "lss:events"],
            args=[owner, now + ttl_ms, now])

    def request(self, **fields):
        fields.setdefault("requestedAt", str(int(time.time() * 1000)))
        return self.r.xadd("lss:requests", fields)

    def create(self, runtime="python", level="standard", timeout=600,
               owner="alice", **extra):
        sid = "sb-" + secrets.token_hex(10)
        fields = dict(type="create", id=sid, owner=owner, runtime=runtime,
                      securityLevel=level, timeout=str(timeout),
                      resources=json.dumps({"cpu": "1", "memory": "256Mi"}),
                      networkAccess="{}", labels="{}")
        fields.update(extra)
        self.request(**fields)
        return sid

    def events(self, sid=None):
        out = []
        for _, f in self.r.xrange("lss:events"):
            if sid is None or f.get("id") == sid:
                out.append(f)
        return out

    def runner(self, sid):
        """An HTTP client to the sandbox's runner, from its route."""
        route = self.r.hgetall("lss:sb:" + sid)
        assert route["runner"].startswith("unix:")
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=route["runner"][5:]),
            base_url="http://runner",
            headers={TOKEN_HEADER: route["token"]}, timeout=60)

    def execute(self, sid, code, language="python"):
        with self.runner(sid) as c:
            r = c.post("/execute", json={"type": "code",
                                         "language": language,
                                         "content": code})
            assert r.status_code == 200, r.text
            return r.json()

    # -- teardown -------------------------------------------------------------

    def valgrind_errors(self):
        bad = []
        for name in os.listdir(self.dir):
            if not name.startswith("valgrind."):
                continue
            with open(os.path.join(self.dir, name), errors="replace") as f:
                text = f.read()
            if "ERROR SUMMARY:" in text and \
                    "ERROR SUMMARY: 0 errors" not in text:
                bad.append(text[-3000:])
        return bad

    def close(self):
        errors = []
        for p in self.procs:
            if VALGRIND and p.poll() is None:
                # a clean exit, so memcheck reports leaks
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.kill()
                p.wait()
        if VALGRIND:
            errors = self.valgrind_errors()
        for cid in self.containers():
            rt = "runc"
            if os.path.exists(os.path.join(self.state, "runsc")) and \
                    cid in self._runsc_ids():
                rt = "runsc"
            subprocess.run([rt, "--root", os.path.join(self.state, rt),
                            "delete", "--force", cid], capture_output=True)
        bundles = os.path.join(self.state, "bundles")
        if os.path.isdir(bundles):
            for b in os.listdir(bundles):
                cfg = os.path.join(bundles, b, "config.json")
                if os.path.exists(cfg):
                    subprocess.run([MKBUNDLE, "cgroup-remove", "--bundle",
                                    os.path.join(bundles, b)],
                                   capture_output=True)
                for c in ("memory", "pids", "cpu", "cpuacct", "blkio",
                          "devices", "freezer", "cpuset", "systemd"):
                    try:
                        os.rmdir("/sys/fs/cgroup/%s/llmsafespace/lss-%s"
                                 % (c, b))
                    except OSError:
                        pass
        self.redis_proc.kill()
        self.redis_proc.wait()
        if not self.pg.closed:
            self.pg.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not errors, "valgrind:\n" + "\n".join(errors)

    def _runsc_ids(self):
        root = os.path.join(self.state, "runsc")
        if not os.listdir(root):
            return set()
        r = subprocess.run(["runsc", "--root", root, "list", "-quiet"],
                           capture_output=True, text=True)
        return set(r.stdout.split())


@pytest.fixture
def env(pg_server, request):
    if not os.path.exists(BIN):
        pytest.fail("no controller at %s: make -C controller" % BIN)
    if not os.path.isdir(os.path.join(ROOTFS, "python", "usr")):
        pytest.fail("no python rootfs: make -C runtimes rootfs")
    e = Env(pg_server)
    yield e
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") \
            else False:
        print("---- controller log ----\n" + e.logs())
    e.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
