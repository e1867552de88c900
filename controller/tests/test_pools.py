"""Warm pools: fill, claim through the gateway's Lua script, refill,
autoscaling, and a container that dies on its own."""

import subprocess
import os

from conftest import needs_root, wait_until

pytestmark = needs_root


def test_pool_fills_to_min_size_and_refills_after_a_claim(env):
    env.pool("py", minSize=2, maxSize=4)
    env.start()

    ready = wait_until(lambda: len(env.ready("py")) == 2 and env.ready("py"),
                       60, what="2 ready warm sandboxes")
    # every artifact maps back to its record
    assert env.running() == sorted("lss-" + i for i in ready)
    assert env.artifacts() == set(ready)
    for sid in ready:
        assert env.record(sid) == ("Running", "Ready", None, "py")
        route = env.r.hgetall("lss:sb:" + sid)
        assert route["owner"] == ""
        assert route["pool"] == "py"
        assert route["runner"] == "unix:%s/routes/%s" % (env.state, sid)
        assert len(route["token"]) == 64
    status = wait_until(lambda: env.q(
        "SELECT status FROM warm_pools WHERE name = 'py'")[0][0].get(
            "availablePods") == 2 and env.q(
        "SELECT status FROM warm_pools WHERE name = 'py'")[0][0],
        10, what="pool status")
    assert status["conditions"][0]["type"] == "Ready"
    assert status["conditions"][0]["status"] == "True"

    # the gateway's fast path
    got = env.claim("py", "alice")
    assert got in ready
    route = env.r.hgetall("lss:sb:" + got)
    assert route["owner"] == "alice"
    claimed = [e for e in env.events(got) if e["type"] == "claimed"]
    assert claimed and claimed[0]["owner"] == "alice"

    # the claimed sandbox serves its new owner, as it was, no restart
    out = env.execute(got, "print(6 * 7)")
    assert out["status"] == "completed" and out["stdout"] == "42\n"

    # refilled with a new sandbox; the claimed one never comes back
    wait_until(lambda: len(env.ready("py")) == 2
               and got not in env.ready("py"), 60, what="refill")
    wait_until(lambda: env.record(got)[2] == "alice", 10,
               what="claim recorded")
    assert len(env.running()) == 3
    for _ in range(2):
        again = env.claim("py", "bob")
        assert again is not None and again != got
    assert env.r.hget("lss:sb:" + got, "owner") == "alice"


def test_autoscale_up_under_claims_and_down_after_the_delay(env):
    env.pool("auto", minSize=1, maxSize=3,
             autoScaling={"enabled": True, "targetUtilization": 50,
                          "scaleDownDelay": "2s"})
    env.start()
    wait_until(lambda: len(env.ready("auto")) == 1, 60, what="min size")

    claimed = []
    for n in range(3):
        sid = wait_until(lambda: env.claim("auto", "user%d" % n), 60,
                         what="a claimable sandbox")
        claimed.append(sid)
    # 3 assigned at 50% target utilisation: 3 warm wanted, maxSize 3
    wait_until(lambda: len(env.ready("auto")) == 3, 90, what="scale up")
    st = env.q("SELECT status FROM warm_pools WHERE name = 'auto'")[0][0]
    assert st["desiredPods"] == 3 and st["lastScaleTime"]

    # releasing the claims: back to minSize, only after the delay
    for sid in claimed:
        env.request(type="delete", id=sid, owner=env.record(sid)[2] or "")
    wait_until(lambda: all(env.record(s)[0] == "Terminated"
                           for s in claimed), 30, what="claims deleted")
    wait_until(lambda: len(env.ready("auto")) == 1
               and len(env.running()) == 1, 30, what="scale down")
    retired = env.q("SELECT count(*) FROM sandboxes WHERE pool = 'auto'"
                    " AND reason = 'ScaledDown'")[0][0]
    assert retired == 2
    # a released sandbox is destroyed, never handed to another owner
    for sid in claimed:
        assert "lss-" + sid not in env.containers()
        assert not env.r.exists("lss:sb:" + sid)


def test_container_killed_from_outside_ends_failed_and_is_replaced(env):
    env.pool("py", minSize=1, maxSize=1)
    env.start()
    (sid,) = wait_until(lambda: env.ready("py"), 60, what="warm sandbox")
    subprocess.run(["runc", "--root", os.path.join(env.state, "runc"),
                    "kill", "lss-" + sid, "KILL"], check=True)

    wait_until(lambda: env.record(sid)[0] == "Failed", 30,
               what="record Failed")
    assert env.record(sid)[1] == "ContainerExited"
    assert not env.r.exists("lss:sb:" + sid)
    assert sid not in env.artifacts()
    types = [e["type"] for e in env.events(sid)]
    assert types[-2:] == ["terminating", "failed"]
    phases = [r[0] for r in env.q(
        "SELECT phase FROM sandbox_events WHERE sandbox_id = %s"
        " ORDER BY seq", sid)]
    assert phases == ["Pending", "Creating", "Running", "Terminating",
                      "Failed"]

    new = wait_until(lambda: env.ready("py"), 60, what="replacement")
    assert new[0] != sid
    assert env.running() == ["lss-" + new[0]]


def test_preloads_from_a_custom_resource_manifest(env):
    # the WarmPool custom resource form, as kubectl would take it
    with open(os.path.join(env.pools, "np.yaml"), "w") as f:
        f.write("""\
apiVersion: llmsafespace.dev/v1
kind: WarmPool
metadata:
  name: np
spec:
  runtime: python:3.11
  minSize: 1
  maxSize: 2
  preloadPackages: [numpy]
  preloadScripts:
    - name: setup
      content: |
        GREETING = "preloaded " + str(numpy.arange(3).sum())
""")
    env.start()
    (sid,) = wait_until(lambda: env.ready("np"), 60, what="warm np")
    row = env.q("SELECT runtime, min_size, max_size, source,"
                " preload_packages FROM warm_pools WHERE name = 'np'")
    assert row == [("python:3.11", 1, 2, "manifest", ["numpy"])]
    env.claim("np", "alice")
    out = env.execute(sid, "import sys\nprint('numpy' in sys.modules, "
                           "GREETING)")
    assert out["stdout"] == "True preloaded 3\n", out
    # the script is the runner's, not the code's
    out = env.execute(sid, "print(open('/run/llmsafespace/preload-setup')"
                           ".read())")
    assert out["status"] == "failed" and "Permission" in out["stderr"]

    # the manifest removed: the pool goes, its unclaimed sandboxes retire,
    # the claimed one stays with its owner
    os.unlink(os.path.join(env.pools, "np.yaml"))
    wait_until(lambda: not env.q("SELECT 1 FROM warm_pools"
                                 " WHERE name = 'np'"), 10,
               what="pool removed")
    wait_until(lambda: env.running() == ["lss-" + sid], 30,
               what="unclaimed retired")
    assert env.r.hget("lss:sb:" + sid, "owner") == "alice"


def test_pools_written_to_postgresql_by_the_api(env):
    import json
    env.start()
    env.q("INSERT INTO warm_pools (name, runtime, min_size, max_size)"
          " VALUES ('apipool', 'python', 1, 2)")
    wait_until(lambda: len(env.ready("apipool")) == 1, 60, what="filled")
    # written by the reconcile after the one that listed the sandbox
    st = wait_until(lambda: json.loads(
        env.r.get("lss:pool:apipool:status") or "{}").get(
            "availablePods") == 1 and json.loads(
        env.r.get("lss:pool:apipool:status")), 10, what="status in Redis")
    assert st["desiredPods"] == 1 and st["pendingPods"] == 0
    assert st["conditions"][0]["reason"] == "PoolReady"
    # the API's row is not a manifest's: the controller leaves it alone
    assert env.q("SELECT source FROM warm_pools"
                 " WHERE name = 'apipool'")[0][0] == "api"

    env.q("UPDATE warm_pools SET min_size = 2 WHERE name = 'apipool'")
    wait_until(lambda: len(env.ready("apipool")) == 2, 60, what="grown")
    env.q("DELETE FROM warm_pools WHERE name = 'apipool'")
    wait_until(lambda: env.running() == [] and env.ready("apipool") == [],
               30, what="retired")
    reasons = {r[0] for r in env.q("SELECT reason FROM sandboxes")}
    assert reasons == {"PoolRemoved"}
