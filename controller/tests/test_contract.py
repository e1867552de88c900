"""The Redis contract's scripts on their own (docs/architecture.md): the
gateway's claim, the controller's publish and retire, and the races
between them.  Real Redis, no controller: these are the guarantees both
sides build on."""

import os
import threading
import time

import pytest
import redis

from conftest import CONTROLLER_DIR, needs_root

pytestmark = needs_root


def script(env, name):
    with open(os.path.join(CONTROLLER_DIR, "contract", name)) as f:
        return env.r.register_script(f.read())


def warm(env, sid, pool="p", owner=""):
    env.r.hset("lss:sb:" + sid, mapping={
        "owner": owner, "runner": "unix:/x/%s/runner.sock" % sid,
        "token": "t" * 64, "expires": 0, "runtime": "python",
        "pool": pool, "phase": "Running"})


def test_claim_takes_only_unclaimed_live_sandboxes(env):
    assert env.claim("p", "alice") is None
    warm(env, "sb-aaaaaaaaaaaa")
    warm(env, "sb-bbbbbbbbbbbb", owner="mallory")
    warm(env, "sb-cccccccccccc")
    # a stale id (route deleted first on termination) and an owned one
    env.r.rpush("lss:pool:p:ready", "sb-deadbeef0000", "sb-bbbbbbbbbbbb",
                "sb-aaaaaaaaaaaa", "sb-cccccccccccc")

    before = int(time.time() * 1000)
    assert env.claim("p", "alice", ttl_ms=5000) == "sb-aaaaaaaaaaaa"
    route = env.r.hgetall("lss:sb:sb-aaaaaaaaaaaa")
    assert route["owner"] == "alice"
    assert before + 5000 <= int(route["expires"]) <= before + 60000
    assert env.r.hget("lss:sb:sb-bbbbbbbbbbbb", "owner") == "mallory"
    assert env.ready("p") == ["sb-cccccccccccc"]
    assert not env.r.exists("lss:sb:sb-deadbeef0000")
    ev = env.events("sb-aaaaaaaaaaaa")
    assert len(ev) == 1 and ev[0]["type"] == "claimed"
    assert ev[0]["pool"] == "p" and ev[0]["owner"] == "alice"

    assert env.claim("p", "bob") == "sb-cccccccccccc"
    assert env.claim("p", "bob") is None


def test_claim_rejects_bad_arguments(env):
    warm(env, "sb-aaaaaaaaaaaa")
    env.r.rpush("lss:pool:p:ready", "sb-aaaaaaaaaaaa")
    c = script(env, "claim.lua")
    with pytest.raises(redis.exceptions.ResponseError):
        c(keys=["lss:pool:p:ready", "lss:events"], args=["", 1, 1])
    with pytest.raises(redis.exceptions.ResponseError):
        c(keys=["lss:pool:p:ready", "lss:events"], args=["a", "soon", 1])
    with pytest.raises(redis.exceptions.ResponseError):
        c(keys=["lss:sb:x", "lss:events"], args=["a", 1, 1])
    assert env.ready("p") == ["sb-aaaaaaaaaaaa"]


def test_concurrent_claims_never_share_a_sandbox(env):
    ids = ["sb-%012d" % i for i in range(10)]
    for sid in ids:
        warm(env, sid)
    env.r.rpush("lss:pool:p:ready", *ids)
    got, lock = [], threading.Lock()

    def worker(n):
        r = redis.Redis(unix_socket_path=env.redis_sock,
                        decode_responses=True)
        with open(os.path.join(CONTROLLER_DIR, "contract", "claim.lua")) as f:
            c = r.register_script(f.read())
        for _ in range(3):
            v = c(keys=["lss:pool:p:ready", "lss:events"],
                  args=["user%d" % n, 1, 1])
            if v:
                with lock:
                    got.append((v, "user%d" % n))

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert sorted(v for v, _ in got) == ids
    for v, owner in got:
        assert env.r.hget("lss:sb:" + v, "owner") == owner


def test_publish_and_retire_lose_to_a_claim(env):
    pub = script(env, "publish.lua")
    ret = script(env, "retire.lua")
    keys = ["lss:sb:sb-aaaaaaaaaaaa", "lss:pool:p:ready", "lss:events"]

    def publish(owner, announce="1"):
        return pub(keys=keys, args=["sb-aaaaaaaaaaaa", owner, "unix:/s",
                                    "tok", 0, "python", "p", 1, announce])

    assert publish("") == 1
    assert publish("", "0") == 1        # republish: listed once
    assert env.ready("p") == ["sb-aaaaaaaaaaaa"]
    assert [e["type"] for e in env.events()] == ["ready"]

    assert env.claim("p", "alice") == "sb-aaaaaaaaaaaa"
    # the controller, with a stale record (no owner), cannot undo it
    assert publish("") == 0
    assert env.r.hget(keys[0], "owner") == "alice"
    assert env.ready("p") == []
    assert ret(keys=keys[:2], args=["sb-aaaaaaaaaaaa"]) == 0
    assert env.r.exists(keys[0])
    # restoring the route of the claimed sandbox for its owner works
    assert publish("alice", "0") == 1
    assert env.ready("p") == []

    env.r.delete(keys[0])
    assert publish("") == 1
    assert ret(keys=keys[:2], args=["sb-aaaaaaaaaaaa"]) == 1
    assert not env.r.exists(keys[0]) and env.ready("p") == []
