"""What the local stack (tools/run.sh) needs from the controller:
--socket-group, so that nginx workers reach the runners without being
root, and --terminate-all, so that stopping the stack leaves no sandbox
running."""

import json
import os
import stat
import subprocess

import pytest

from conftest import BIN, ROOTFS, needs_root, wait_until

pytestmark = needs_root

# no group or user of these ids needs to exist: the kernel checks numbers
GROUP = 54321
NOBODY = 65534

# An HTTP/1.0 execute over the route's unix socket, run as another user
# (setpriv): prints the runner's status line and body, or "denied".
CLIENT = r"""
import json, socket, sys
path, token = sys.argv[1], sys.stdin.read().strip()
body = json.dumps({"type": "code", "language": "python",
                   "content": "print(6 * 7)"}).encode()
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
except PermissionError:
    print("denied")
    sys.exit(0)
s.sendall(b"POST /execute HTTP/1.0\r\nHost: runner\r\n"
          b"X-LLMSafeSpace-Runner-Token: " + token.encode() +
          b"\r\nContent-Type: application/json\r\nContent-Length: "
          + str(len(body)).encode() + b"\r\n\r\n" + body)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode())
print(rest.decode())
"""


def as_user(uid, gid, route):
    """The execute of CLIENT as uid:gid with no supplementary groups."""
    r = subprocess.run(
        ["setpriv", "--reuid", str(uid), "--regid", str(gid),
         "--clear-groups", "/usr/bin/python3", "-c", CLIENT,
         route["runner"][5:]],
        input=route["token"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def answered(lines):
    assert lines and lines[0].startswith("HTTP/"), lines
    assert lines[0].split()[1] == "200", lines
    out = json.loads("\n".join(lines[1:]))
    assert out["stdout"] == "42\n", out
    return True


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_socket_group_lets_only_the_group_reach_runners(env):
    env.pool("p", minSize=1)
    env.start()
    first = wait_until(lambda: env.ready("p"), 60, what="a warm sandbox")[0]
    route = env.r.hgetall("lss:sb:" + first)
    routes = os.path.join(env.state, "routes")

    # without the option: the runner's socket is the sandbox root's
    assert as_user(NOBODY, GROUP, route) == ["denied"]
    assert mode(routes) == 0o711

    # restarted with it: the adopted sandbox's socket gets the group
    env.stop()
    env.start(extra=["--socket-group", str(GROUP)])
    wait_until(lambda: os.lstat(routes).st_gid == GROUP, 30,
               what="routes/ given to the group")
    assert mode(routes) == 0o750 and os.lstat(routes).st_uid == 0
    st = os.lstat(route["runner"][5:])
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_gid == GROUP and mode(route["runner"][5:]) == 0o660
    assert answered(as_user(NOBODY, GROUP, route))
    # anyone else is refused, at the directory already
    assert as_user(NOBODY, NOBODY, route) == ["denied"]
    assert as_user(NOBODY + 1, NOBODY + 1, route) == ["denied"]

    # a sandbox started under the option (the refill of a claim) too
    assert env.claim("p", "alice") == first
    second = wait_until(lambda: [i for i in env.ready("p") if i != first],
                        60, what="the refill")[0]
    route2 = env.r.hgetall("lss:sb:" + second)
    assert os.lstat(route2["runner"][5:]).st_gid == GROUP
    assert answered(as_user(NOBODY, GROUP, route2))
    assert as_user(NOBODY, NOBODY, route2) == ["denied"]


def test_socket_group_under_runsc(env):
    env.start(extra=["--socket-group", str(GROUP)])
    sid = env.create(level="high")
    wait_until(lambda: (env.record(sid) or ("",))[0] in ("Running",
                                                         "Failed"),
               90, what="Running")
    assert env.record(sid)[0] == "Running", env.logs()
    route = env.r.hgetall("lss:sb:" + sid)
    assert answered(as_user(NOBODY, GROUP, route))
    assert as_user(NOBODY, NOBODY, route) == ["denied"]


def test_unknown_socket_group_is_refused(env):
    p = env.start(extra=["--socket-group", "no-such-group-lss"])
    assert p.wait(30) == 2
    assert "no group no-such-group-lss" in env.logs()


def terminate_all(env, timeout=120):
    return subprocess.run(
        [BIN, "--state", env.state, "--redis", "unix:" + env.redis_sock,
         "--pg", env.conninfo, "--pools", env.pools, "--rootfs", ROOTFS,
         "--terminate-all"], capture_output=True, text=True,
        timeout=timeout)


def test_terminate_all_leaves_nothing_running(env):
    env.pool("p", minSize=2)
    env.start()
    wait_until(lambda: len(env.ready("p")) == 2, 90, what="2 warm")
    claimed = env.claim("p", "alice")
    assert claimed
    cold = env.create(level="high")
    wait_until(lambda: (env.record(cold) or ("",))[0] == "Running", 90,
               what="the cold sandbox Running")
    wait_until(lambda: len(env.ready("p")) == 2, 90, what="the refill")
    wait_until(lambda: env.record(claimed)[2] == "alice", 30,
               what="the claim recorded")
    live = [r[0] for r in env.q("SELECT id FROM sandboxes WHERE phase"
                                " NOT IN ('Terminated', 'Failed')")]
    assert len(live) == 4 and len(env.running()) == 4

    # a running controller holds the lock: --terminate-all waits for it
    log = os.path.join(env.dir, "terminate-all.log")
    with open(log, "w") as f:
        p = subprocess.Popen(
            [BIN, "--state", env.state, "--redis", "unix:" + env.redis_sock,
             "--pg", env.conninfo, "--pools", env.pools, "--rootfs", ROOTFS,
             "--terminate-all"], stdout=f, stderr=f)
    wait_until(lambda: "waiting" in open(log).read() or
               p.poll() is not None, 30, what="--terminate-all to start")
    assert p.poll() is None, open(log).read()
    assert env.running(), "it must not have touched anything yet"
    env.stop()
    p.wait(120)
    out = open(log).read()
    assert p.returncode == 0, out

    assert env.containers() == {}
    assert env.artifacts() == set()
    rows = env.q("SELECT phase, reason FROM sandboxes WHERE id = ANY(%s)",
                 live)
    assert sorted(rows) == [("Terminated", "Shutdown")] * 4
    assert env.r.keys("lss:sb:*") == []
    assert env.ready("p") == []
    assert "every sandbox terminated" in out

    # nothing left to do: a second run is a no-op that succeeds
    r = terminate_all(env)
    assert r.returncode == 0, r.stderr

    # the next start fills the pool again, with new sandboxes
    env.start()
    again = wait_until(lambda: env.ready("p") if len(env.ready("p")) == 2
                       else None, 90, what="the pool refilled")
    assert not set(again) & set(live)
