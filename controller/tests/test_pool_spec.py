"""A warm pool's resources and ttl: each warm sandbox gets the pool's
limits (cgroups, and the runner's per-execution limit inside), an
unclaimed sandbox older than the ttl is replaced and then retired while a
claimed one is left alone, a change of the pool's resources renews its
sandboxes, and a manifest with an invalid resources or ttl is not
loaded."""

import json

from conftest import needs_root, wait_until

pytestmark = needs_root

MI = 1 << 20


def cgroup(sid, controller, name):
    with open("/sys/fs/cgroup/%s/llmsafespace/lss-%s/%s"
              % (controller, sid, name)) as f:
        return int(f.read())


def resources(env, sid):
    return env.q("SELECT resources FROM sandboxes WHERE id = %s", sid)[0][0]


def wait_recycled(env, sid, message):
    wait_until(lambda: env.record(sid)[:2] == ("Terminated", "Recycled"),
               60, what="%s recycled" % sid)
    assert env.q("SELECT message FROM sandboxes WHERE id = %s",
                 sid)[0][0] == message


def set_resources(env, pool, res):
    env.q("UPDATE warm_pools SET resources = %s::jsonb WHERE name = %s",
          json.dumps(res), pool)


def test_each_warm_sandbox_gets_the_pools_resources(env):
    env.pool("small", minSize=1, maxSize=1,
             resources={"cpu": "500m", "memory": "192Mi"})
    env.pool("plain", minSize=1, maxSize=1)
    env.start()
    (small,) = wait_until(lambda: env.ready("small"), 60, what="small")
    (plain,) = wait_until(lambda: env.ready("plain"), 60, what="plain")

    # stored as numbers with the defaults filled in: what the pool gives
    rows = dict(env.q("SELECT name, resources FROM warm_pools"))
    assert rows == {"small": {"cpu": 0.5, "memory": 192 * MI},
                    "plain": {"cpu": 1, "memory": 512 * MI}}
    assert resources(env, small) == rows["small"]
    assert resources(env, plain) == rows["plain"]

    # the container's cgroups, as the host sees them
    assert cgroup(small, "memory", "memory.limit_in_bytes") == 192 * MI
    assert cgroup(plain, "memory", "memory.limit_in_bytes") == 512 * MI
    assert cgroup(small, "cpu", "cpu.cfs_quota_us") * 2 == \
        cgroup(small, "cpu", "cpu.cfs_period_us")
    assert cgroup(plain, "cpu", "cpu.cfs_quota_us") == \
        cgroup(plain, "cpu", "cpu.cfs_period_us")

    # and from inside: an execution may use 3/4 of the sandbox's memory
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_DATA)[0])\n"
            "try:\n"
            "    b = bytearray(200 << 20)\n"
            "    print('200 MiB: yes')\n"
            "except MemoryError:\n"
            "    print('200 MiB: no')\n")
    for sid, mem, verdict in ((small, 192, "no"), (plain, 512, "yes")):
        assert env.claim(env.record(sid)[3], "alice") == sid
        out = env.execute(sid, code)
        assert out["stdout"] == "%d\n200 MiB: %s\n" % (mem * MI * 3 // 4,
                                                        verdict), out


def test_ttl_renews_unclaimed_sandboxes_and_spares_claimed_ones(env):
    env.pool("short", minSize=2, maxSize=2, ttl="5s")
    env.start()
    first = wait_until(lambda: len(env.ready("short")) == 2
                       and env.ready("short"), 60, what="2 warm")
    assert env.q("SELECT ttl_s FROM warm_pools")[0][0] == 5
    claimed = env.claim("short", "alice")
    (other,) = [s for s in first if s != claimed]

    wait_recycled(env, other, "older than the pool's ttl")
    assert any(e["type"] == "terminated" and e.get("reason") == "Recycled"
               for e in env.events(other))
    assert "lss-" + other not in env.containers()
    assert not env.r.exists("lss:sb:" + other)

    # replaced before it was retired: when it began terminating, two
    # other unclaimed sandboxes of the pool had become ready and were
    # still there, so the pool never ran short of what it promises
    (term,) = env.q("SELECT seq FROM sandbox_events WHERE sandbox_id = %s"
                    " AND phase = 'Terminating'", other)[0]
    ready_then = env.q(
        "SELECT count(DISTINCT sandbox_id) FROM sandbox_events e"
        " JOIN sandboxes s ON s.id = e.sandbox_id"
        " WHERE s.pool = 'short' AND s.id NOT IN (%s, %s)"
        " AND e.phase = 'Running' AND e.reason = 'Ready' AND e.seq < %s"
        " AND NOT EXISTS (SELECT 1 FROM sandbox_events t"
        "  WHERE t.sandbox_id = e.sandbox_id AND t.phase = 'Terminating'"
        "  AND t.seq < %s)", claimed, other, term, term)[0][0]
    assert ready_then >= 2

    # the claimed one is as old as the recycled one, and untouched
    assert env.record(claimed) == ("Running", "Claimed", "alice", "short")
    assert env.r.hget("lss:sb:" + claimed, "owner") == "alice"
    assert env.execute(claimed, "print(6 * 7)")["stdout"] == "42\n"
    wait_until(lambda: len(env.ready("short")) == 2
               and not {claimed, other} & set(env.ready("short")), 60,
               what="the pool full again")


def test_a_change_of_resources_renews_the_pools_sandboxes(env):
    env.start()
    env.q("INSERT INTO warm_pools (name, runtime, min_size, max_size,"
          " resources) VALUES ('grow', 'python', 1, 1,"
          " '{\"cpu\": 1, \"memory\": 134217728}')")
    (old,) = wait_until(lambda: env.ready("grow"), 60, what="warm")
    assert cgroup(old, "memory", "memory.limit_in_bytes") == 128 * MI

    # more than the old sandbox has: it may not serve a create any more
    set_resources(env, "grow", {"cpu": 1, "memory": 256 * MI})
    wait_recycled(env, old, "it has less than the pool's resources")
    (new,) = wait_until(lambda: env.ready("grow"), 60, what="replacement")
    assert cgroup(new, "memory", "memory.limit_in_bytes") == 256 * MI

    # less: the bigger one serves until its replacement is ready
    set_resources(env, "grow", {"cpu": 0.5, "memory": 256 * MI})
    wait_recycled(env, new, "it has other resources than the pool's")
    (newer,) = wait_until(lambda: env.ready("grow"), 60, what="warm")
    assert resources(env, newer) == {"cpu": 0.5, "memory": 256 * MI}
    (term,) = env.q("SELECT seq FROM sandbox_events WHERE sandbox_id = %s"
                    " AND phase = 'Terminating'", new)[0]
    (ready,) = env.q("SELECT seq FROM sandbox_events WHERE sandbox_id = %s"
                     " AND phase = 'Running'", newer)[0]
    assert ready < term


def test_manifest_resources_and_ttl_forms_and_refusals(env):
    good = {
        "quarter": dict(resources={"cpu": "250m", "memory": "128Mi",
                                   "ephemeralStorage": "1Gi"}, ttl="90m"),
        "whole": dict(resources={"cpu": 2, "memory": 268435456}, ttl=600),
        "days": dict(resources={"cpu": "0.125"}, ttl="2d"),
        "none": dict(ttl=None),
    }
    bad = {
        "lots": (dict(resources={"memory": "lots"}), "resources.memory"),
        "huge": (dict(resources={"memory": "16Gi"}), "resources.memory"),
        "tiny": (dict(resources={"memory": "1Mi"}), "resources.memory"),
        "fast": (dict(resources={"cpu": 4}), "resources.cpu"),
        "neg": (dict(resources={"cpu": "-1"}), "resources.cpu"),
        "disk": (dict(resources={"ephemeralStorage": "20T"}),
                 "resources.ephemeralStorage"),
        "gpu": (dict(resources={"gpu": 1}), "unknown field resources.gpu"),
        "list": (dict(resources=["cpu"]), "resources must be an object"),
        "soon": (dict(ttl="soon"), "ttl"),
        "zero": (dict(ttl=0), "ttl"),
        "minus": (dict(ttl="-5m"), "ttl"),
        "spaced": (dict(ttl=" 5m"), "ttl"),
        "weeks": (dict(ttl="31d"), "ttl"),
    }
    for name, spec in good.items():
        env.pool(name, minSize=0, maxSize=0, **spec)
    for name, (spec, _) in bad.items():
        env.pool(name, minSize=0, maxSize=0, **spec)
    env.start()

    wait_until(lambda: len(env.q("SELECT 1 FROM warm_pools")) == 4, 10,
               what="the valid pools mirrored")
    rows = {r[0]: r[1:] for r in env.q(
        "SELECT name, resources, ttl_s FROM warm_pools")}
    assert rows == {
        "quarter": ({"cpu": 0.25, "memory": 128 * MI,
                     "ephemeralStorage": 1 << 30}, 5400),
        "whole": ({"cpu": 2, "memory": 256 * MI}, 600),
        "days": ({"cpu": 0.125, "memory": 512 * MI}, 2 * 86400),
        "none": ({"cpu": 1, "memory": 512 * MI}, None),
    }
    log = wait_until(lambda: all("warm pool %s:" % n in env.logs()
                                 for n in bad) and env.logs(), 10,
                     what="every refusal logged")
    for name, (_, why) in bad.items():
        line = [ln for ln in log.splitlines()
                if "warm pool %s:" % name in ln][0]
        assert why in line, line
