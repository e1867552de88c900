"""Cold sandboxes through lss:requests: create, run code (runc and runsc),
posture seen from inside, expiry, explicit delete, refused requests."""

import json
import os

import pytest

from conftest import needs_root, wait_until

pytestmark = needs_root

POSTURE = r"""
import ctypes, json, os, socket
st = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
def writable(p):
    try:
        with open(os.path.join(p, '.probe'), 'w') as f:
            f.write('x')
        os.unlink(os.path.join(p, '.probe'))
        return True
    except OSError:
        return False
def ifaces():
    # runc: sysfs lists them (netlink is denied by seccomp); gVisor: no
    # /sys/class/net, but netlink answers
    try:
        return sorted(os.listdir('/sys/class/net'))
    except OSError:
        return sorted(n for _, n in socket.if_nameindex())
def connects():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(('1.1.1.1', 53))
        return True
    except OSError:
        return False
    finally:
        s.close()
print(json.dumps({
    # gVisor's /proc/self/status has no NoNewPrivs line: ask prctl
    'seccomp': st['Seccomp'].strip(),
    'nnp': ctypes.CDLL(None).prctl(39, 0, 0, 0, 0),
    'capeff': st['CapEff'].strip(), 'uid': os.getuid(),
    'root_rw': writable('/') or writable('/usr'),
    'ws_rw': writable('/workspace'), 'tmp_rw': writable('/tmp'),
    'ifaces': ifaces(),
    'net': connects(),
    'token_env': any('TOKEN' in k for k in os.environ),
    'run_dir': os.access('/run/llmsafespace/token', os.R_OK),
    'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[:3],
}))
"""


@pytest.mark.parametrize("level", ["standard", "high"])
def test_cold_sandbox_runs_code_with_the_expected_posture(env, level):
    env.start()
    sid = env.create(level=level)
    wait_until(lambda: (env.record(sid) or ("",))[0] in ("Running",
                                                         "Failed"),
               60, what="Running")
    msg = env.q("SELECT message FROM sandboxes WHERE id = %s", sid)[0][0]
    assert env.record(sid)[0] == "Running", msg
    route = env.r.hgetall("lss:sb:" + sid)
    assert route["owner"] == "alice" and route["pool"] == ""
    assert int(route["expires"]) > 0
    assert [e["type"] for e in env.events(sid)] == ["ready"]
    rt = "runsc" if level == "high" else "runc"
    assert "lss-" + sid in env.containers()
    assert env.containers()["lss-" + sid] == "running"
    import os
    assert os.listdir(os.path.join(env.state, rt))

    out = env.execute(sid, POSTURE)
    assert out["status"] == "completed", out["stderr"]
    p = json.loads(out["stdout"])
    assert p["seccomp"] == "2"
    assert p["nnp"] == 1
    assert p["capeff"] == "0000000000000000"
    assert p["uid"] != 0
    assert not p["root_rw"]
    assert p["ws_rw"] and p["tmp_rw"]
    assert p["ifaces"] == ["lo"]
    assert not p["net"]
    assert not p["token_env"]
    assert not p["run_dir"]

    # a wrong token is refused by the runner
    with env.runner(sid) as c:
        r = c.post("/execute", headers={"X-LLMSafeSpace-Runner-Token": "x"},
                   json={"type": "code", "language": "python",
                         "content": "print(1)"})
        assert r.status_code == 401


def test_sandbox_expires_at_its_timeout(env):
    env.start()
    sid = env.create(timeout=3)
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="Running")
    assert env.r.exists("lss:sb:" + sid)
    wait_until(lambda: env.record(sid)[0] == "Terminated", 20,
               what="expiry")
    assert env.record(sid)[1] == "Expired"
    assert not env.r.exists("lss:sb:" + sid)
    assert "lss-" + sid not in env.containers()
    assert sid not in env.artifacts()
    assert [e["type"] for e in env.events(sid)] == [
        "ready", "terminating", "terminated"]
    # the request was acknowledged: nothing pending for the group
    assert env.r.xpending("lss:requests", "controllers")["pending"] == 0


def test_delete_request_terminates_and_is_idempotent(env):
    env.start()
    sid = env.create()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="Running")
    # the same create again (a retried gateway) changes nothing
    env.request(type="create", id=sid, owner="mallory", runtime="python",
                securityLevel="standard", timeout="600")
    env.request(type="delete", id=sid, owner="alice")
    env.request(type="delete", id=sid, owner="alice")
    wait_until(lambda: env.record(sid)[0] == "Terminated", 30,
               what="deleted")
    assert env.record(sid)[1] == "Deleted"
    assert env.record(sid)[2] == "alice"
    assert not env.r.exists("lss:sb:" + sid)
    assert env.running() == []
    assert env.q("SELECT count(*) FROM sandboxes")[0][0] == 1


def test_invalid_requests_are_refused_not_obeyed(env):
    env.start()
    bad_rt = env.create(runtime="cobol")
    bad_level = env.create(level="root")
    env.request(type="create", id="../../etc", owner="x", runtime="python")
    env.request(type="create", id="sb-UPPER", owner="x", runtime="python")
    env.request(type="explode", id="sb-0123456789abcdef")
    bad_res = env.create(resources="[1,2]")
    huge = env.create(timeout=10 ** 9)
    ok = env.create()

    wait_until(lambda: (env.record(ok) or ("",))[0] == "Running", 60,
               what="the valid request served")
    assert env.record(bad_rt)[:2] == ("Failed", "unknown runtime")
    assert env.record(bad_level)[:2] == ("Failed",
                                        "unsupported securityLevel")
    assert env.record(bad_res)[0] == "Failed"
    assert env.record(huge)[:2] == ("Failed", "invalid timeout")
    assert env.q("SELECT count(*) FROM sandboxes")[0][0] == 5
    assert env.running() == ["lss-" + ok]
    assert env.r.xpending("lss:requests", "controllers")["pending"] == 0
    failed = [e for e in env.events() if e["type"] == "failed"]
    assert {e["id"] for e in failed} == {bad_rt, bad_level, bad_res, huge}


def test_route_never_follows_what_the_sandbox_puts_in_its_run_dir(env):
    """The run dir is writable by the sandbox's root: a runner.sock
    swapped for a symlink to a host socket (here: Redis) must not become
    a path anyone connects to."""
    import os
    env.start()
    sid = env.create()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="Running")
    run_sock = os.path.join(env.state, "sandboxes", sid, "runner.sock")
    os.unlink(run_sock)
    os.symlink(env.redis_sock, run_sock)
    out = env.execute(sid, "print('still the runner')")
    assert out["stdout"] == "still the runner\n"

    # the route names the pinned link, which the sandbox cannot reach
    assert env.r.hget("lss:sb:" + sid, "runner") == \
        "unix:%s/routes/%s" % (env.state, sid)
    st = os.lstat(os.path.join(env.state, "routes", sid))
    import stat
    assert stat.S_ISSOCK(st.st_mode)


def test_container_log_rotates_past_log_max(env):
    # the runner logs a line per request; 4096 is the smallest --log-max
    env.start(extra=["--log-max", "4096"])
    sid = env.create()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="Running")
    log = os.path.join(env.state, "bundles", sid, "container.log")
    with env.runner(sid) as c:
        for i in range(300):
            assert c.get("/healthz").status_code == 200
    # 300 lines of ~60 bytes: the next ticks rotate it; the live log is
    # back under the cap and the previous part holds whole runner lines
    wait_until(lambda: os.path.exists(log + ".1")
               and os.path.getsize(log) <= 4096, 20, what="rotation")
    assert 4096 < os.path.getsize(log + ".1") < 64 * 1024
    with open(log + ".1", errors="replace") as f:
        old = f.read()
    assert "runner: GET /healthz 200" in old
    assert old.endswith("\n")
    # the runner keeps writing to the emptied file, at its new end
    with env.runner(sid) as c:
        assert c.get("/healthz").status_code == 200
    wait_until(lambda: "GET /healthz" in open(log).read(), 10,
               what="a line in the live log")
    assert not open(log, "rb").read().startswith(b"\0")
    assert env.execute(sid, "print(6 * 7)")["stdout"] == "42\n"
