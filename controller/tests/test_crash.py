"""Crash safety and the single-instance lock: kill -9 in the middle of a
fill, restart, and the world adds up exactly; orphans go; a second
controller waits for the first."""

import json
import os
import secrets
import subprocess
import time

from conftest import MKBUNDLE, ROOTFS, needs_root, wait_until

pytestmark = needs_root


def live(env):
    return env.q("SELECT id, phase FROM sandboxes"
                 " WHERE phase NOT IN ('Terminated', 'Failed')")


def test_kill9_mid_fill_then_restart_settles_exactly(env):
    env.pool("py", minSize=4, maxSize=4)
    # one container per tick: the kill lands with work half done
    env.start(extra=["--max-creates", "1"])
    wait_until(lambda: len(env.containers()) >= 2, 60,
               what="the fill under way")
    env.kill9()
    before = env.containers()
    # the kill did land mid-fill: records not yet Running remain
    assert any(r[1] != "Running" for r in live(env)), live(env)

    # artifacts nobody owns: a stray bundle and run dir, and a route
    stray = "sb-0000000000000000dead"
    os.makedirs(os.path.join(env.state, "bundles", stray))
    os.makedirs(os.path.join(env.state, "sandboxes", stray))
    # a record that says Creating whose container never came
    ghost = "sb-00000000000000000001"
    env.q("INSERT INTO sandboxes (id, runtime, pool, phase, attempts)"
          " VALUES (%s, 'python', 'py', 'Creating', 1)", ghost)

    env.start(extra=["--max-creates", "1"])
    wait_until(lambda: len(env.ready("py")) == 4, 90, what="4 ready")
    # and it stays there: nothing more is started
    time.sleep(1.0)

    ready = sorted(env.ready("py"))
    running = env.running()
    assert running == sorted("lss-" + i for i in ready)
    assert set(env.containers()) == set(running)
    assert env.artifacts() == set(ready)
    rows = live(env)
    assert sorted(r[0] for r in rows) == ready
    assert all(r[1] == "Running" for r in rows)
    # containers running before the kill were adopted, not replaced
    adopted = [c for c, st in before.items() if st == "running"]
    assert adopted and set(adopted) <= set(running)
    assert env.record(ghost)[0] in ("Running", "Terminated", "Failed")
    for sid in ready:
        route = env.r.hgetall("lss:sb:" + sid)
        assert route["owner"] == "" and route["pool"] == "py"
    assert len(ready) == len(set(ready))


def test_routes_are_restored_after_redis_loses_them(env):
    env.pool("py", minSize=1, maxSize=1)
    env.start()
    (warm,) = wait_until(lambda: env.ready("py"), 60, what="warm")
    cold = env.create(owner="carol")
    wait_until(lambda: (env.record(cold) or ("",))[0] == "Running", 60,
               what="cold Running")

    env.r.flushall()
    # the stream and its group come back with the routes
    wait_until(lambda: env.r.exists("lss:sb:" + cold)
               and env.ready("py") == [warm], 30, what="restored")
    assert env.r.hget("lss:sb:" + cold, "owner") == "carol"
    assert env.r.hget("lss:sb:" + warm, "owner") == ""
    sid = env.create(owner="dave")
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="requests served after the flush")


def test_second_controller_waits_for_the_lock(env):
    env.pool("py", minSize=1, maxSize=1)
    first = env.start()
    wait_until(lambda: len(env.ready("py")) == 1, 60, what="warm")
    second = env.start()
    wait_until(lambda: "waiting" in env.logs(), 10, what="second waits")
    with open(os.path.join(env.state, "controller.lock")) as f:
        assert int(f.read()) == first.pid
    assert second.poll() is None

    env.kill9(first)
    # the second takes over and keeps the pool; the lock names it
    wait_until(lambda: open(os.path.join(env.state, "controller.lock"))
               .read().strip() == str(second.pid), 10, what="takeover")
    env.pool("py", minSize=2, maxSize=2)
    wait_until(lambda: len(env.ready("py")) == 2, 60, what="second works")
    assert len(env.running()) == 2
    env.stop(second)
    # stopping leaves the sandboxes serving
    assert len(env.running()) == 2


def test_redis_restart_is_ridden_out(env):
    env.pool("py", minSize=1, maxSize=1)
    env.start()
    (warm,) = wait_until(lambda: env.ready("py"), 60, what="warm")
    env.redis_proc.kill()
    env.redis_proc.wait()
    time.sleep(1.5)
    assert env.proc.poll() is None, "controller exited without Redis"
    env.restart_redis()
    # routes and ready lists come back from the records; requests flow
    wait_until(lambda: env.ready("py") == [warm], 30, what="restored")
    sid = env.create()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="served after the restart")
    assert env.r.hget("lss:sb:" + sid, "owner") == "alice"


def test_postgresql_outage_delays_requests_but_loses_none(env, pg_server):
    env.start()
    first = env.create()
    wait_until(lambda: (env.record(first) or ("",))[0] == "Running", 60,
               what="Running")
    env.pg.close()
    env.pg_ctl(pg_server, "stop")
    try:
        sid = env.create()
        time.sleep(1.5)
        assert env.proc.poll() is None, "controller exited without PG"
        # not acknowledged: it waits in the group's pending list
        assert env.r.xpending("lss:requests", "controllers")["pending"] >= 1
    finally:
        env.pg_ctl(pg_server, "start")
    env.reconnect_pg()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="served after the outage")
    assert env.record(first)[0] == "Running"
    assert env.r.xpending("lss:requests", "controllers")["pending"] == 0


def test_leftover_container_without_bundle_is_removed_before_create(env):
    # a container under the controller's runc root with a record's id but
    # no bundle in the state dir (left by hand, or a runtime that kept it
    # after its bundle went): the first create attempt must clear it
    import secrets
    import subprocess
    from conftest import MKBUNDLE, ROOTFS
    sid = "sb-" + secrets.token_hex(10)
    elsewhere = os.path.join(env.dir, "elsewhere")
    os.makedirs(os.path.join(elsewhere, "run"))
    tok = os.path.join(elsewhere, "token.src")
    with open(tok, "w") as f:
        f.write("x" * 32)
    subprocess.run([MKBUNDLE, "--rootfs", os.path.join(ROOTFS, "python"),
                    "--bundle", os.path.join(elsewhere, "bundle"),
                    "--run-dir", os.path.join(elsewhere, "run"),
                    "--token-file", tok, "--runtime", "runc",
                    "--id", "lss-" + sid], check=True)
    subprocess.run(["runc", "--root", os.path.join(env.state, "runc"),
                    "run", "--detach", "--bundle",
                    os.path.join(elsewhere, "bundle"), "lss-" + sid],
                   check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert env.containers().get("lss-" + sid) == "running"

    # the record first (as the gateway writes it), so that the container
    # is not an orphan but in the way of the record's own
    env.q("INSERT INTO sandboxes (id, owner, runtime, security_level,"
          " timeout_s, resources, phase) VALUES (%s, 'alice', 'python',"
          " 'standard', 600, %s, 'Pending')", sid,
          json.dumps({"cpu": "1", "memory": "256Mi"}))
    env.start()
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="Running")
    # started at the first attempt, by a container of its own bundle
    assert env.q("SELECT attempts FROM sandboxes WHERE id = %s",
                 sid)[0][0] == 1
    assert env.execute(sid, "print(1)")["stdout"] == "1\n"
