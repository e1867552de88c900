"""Granted egress (networkAccess.egress) under runc and runsc: exactly the
listed names and ports are reachable, nothing else is (other ports, other
addresses, the host and its Redis, the metadata address, other
sandboxes); sandboxes without egress keep loopback only; every network
artifact goes with the sandbox, after a controller crash too.

No traffic leaves this machine: "the internet" is a network namespace
made here (a remote host at 10.254.0.2 and .3, reached through the host
at 10.254.0.1 like any routed destination), its names are given to the
controller with --hosts, and a real Redis listens on TCP on the host.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time

import pytest
import redis

from conftest import BIN, MKBUNDLE, ROOTFS, needs_root, wait_until

pytestmark = needs_root

SUBNET = "10.212.0.0/16"       # not the default: a local stack may use it
REMOTE = "10.254.0.2"          # the granted server
OTHER = "10.254.0.3"           # same server, an address not granted
GATEWAY = "10.254.0.1"         # the host's own address on that network
ALLOW = "10.254.0.0/24"        # --egress-allow: private, allowed here
ALLOWED, NOT_ALLOWED = 8080, 8081

SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        c.sendall(b'hello %d from %s\n' % (port, peer[0].encode()))
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print('up', flush=True)
threading.Event().wait()
"""

PROBE = r"""
import json, os, socket, sys
def connect(host, port):
    s = socket.socket()
    s.settimeout(5)
    try:
        try:
            s.connect((host, port))
        except socket.timeout:
            return 'timeout'
        except OSError as e:
            return 'refused: %s' % type(e).__name__
        # connected: what the server says first, if anything (Redis waits)
        s.settimeout(1)
        try:
            return s.recv(100).decode().strip() or 'connected'
        except OSError:
            return 'connected'
    finally:
        s.close()
def resolve(name):
    try:
        return sorted({a[4][0] for a in
                       socket.getaddrinfo(name, 80, socket.AF_INET)})
    except OSError:
        return []
def ifaces():
    try:
        return sorted(os.listdir('/sys/class/net'))
    except OSError:
        return sorted(n for _, n in socket.if_nameindex())
targets = json.loads(sys.argv[1]) if len(sys.argv) > 1 else []
print(json.dumps({
    'ifaces': ifaces(),
    'resolve': {n: resolve(n) for n in ('allowed.test', 'other.test')},
    'connect': [connect(h, p) for h, p in targets],
}))
"""

# B listens on its address (and proves it by connecting to itself),
# says so with a file, and lists who connected until told to stop
LISTEN = r"""
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000))
s.listen(16)
s.settimeout(0.1)
socket.create_connection((sys.argv[1], 7000), 5).close()
open('/workspace/listening', 'w').close()
peers = []
while not os.path.exists('/workspace/stop'):
    try:
        c, peer = s.accept()
        peers.append(peer[0])
        c.close()
    except socket.timeout:
        pass
print(' '.join(peers))
"""


def sh(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True,
                          check=check)


def ifname(sid):
    """The host end of a sandbox's link (docs/controller.md)."""
    h = 0xcbf29ce484222325
    for ch in sid.encode():
        h = ((h ^ ch) * 0x100000001b3) & 0xffffffffffffffff
    return "lss%012x" % (h & 0xffffffffffff)


def slot_ip(env, sid, k):
    """A sandbox's /30 in SUBNET is its slot's: .1 the host, .2 it."""
    slot = env.q("SELECT slot FROM sandboxes WHERE id = %s", sid)[0][0]
    n = slot * 4 + k
    return "10.212.%d.%d" % (n >> 8, n & 255)


def host_addresses():
    out = json.loads(sh("ip", "-j", "-4", "addr").stdout)
    return sorted(a["local"] for i in out for a in i.get("addr_info", [])
                  if not a["local"].startswith("127."))


def links_of(sid):
    out = json.loads(sh("ip", "-j", "-d", "link").stdout)
    return [i["ifname"] for i in out
            if i.get("ifalias") == sid or i["ifname"] == ifname(sid)]


def nft_table():
    r = sh("nft", "-j", "list", "table", "inet", "llmsafespace",
           check=False)
    if r.returncode != 0:
        return []
    return json.loads(r.stdout)["nftables"]


def nft_mentions(sid):
    """Chains and elements of the table that belong to the sandbox."""
    found = []
    for item in nft_table():
        for kind in ("chain", "set", "map"):
            o = item.get(kind)
            if o is None:
                continue
            if kind == "chain" and o["name"] == sid:
                found.append("chain")
            for e in o.get("elem", []) if kind != "chain" else []:
                key = e[0] if isinstance(e, list) else e
                if key == ifname(sid):
                    found.append(o["name"])
    return found


def net_artifacts(env, sid):
    """Everything of the sandbox's network that exists now."""
    left = []
    if os.path.exists("/run/netns/lss-" + sid):
        left.append("netns")
    left += ["link " + n for n in links_of(sid)]
    left += ["nft " + n for n in nft_mentions(sid)]
    if os.path.exists(os.path.join(env.state, "bundles", sid, "egress")):
        left.append("marker")
    return left


class World:
    """The remote host's namespace, its server, a TCP Redis on the host,
    and a hosts file for the controller."""

    def __init__(self, env):
        self.env = env
        tag = secrets.token_hex(3)
        self.ns = "lsst-" + tag
        self.link = "lsst" + tag
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.link, "type", "veth", "peer", "name",
           "eth0", "netns", self.ns)
        sh("ip", "addr", "add", GATEWAY + "/24", "dev", self.link)
        sh("ip", "link", "set", self.link, "up")
        for a in (REMOTE, OTHER):
            sh("ip", "-n", self.ns, "addr", "add", a + "/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        # no route back: replies reach it only because the host NATs
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "/usr/bin/python3", "-c",
             SERVER, str(ALLOWED), str(NOT_ALLOWED)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.server.stdout.readline().strip() == "up"

        s = socket.socket()
        s.bind(("0.0.0.0", 0))
        self.redis_port = s.getsockname()[1]
        s.close()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind",
             "0.0.0.0", "--protected-mode", "no", "--save", "",
             "--appendonly", "no", "--dir", env.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.hosts = os.path.join(env.dir, "hosts")
        with open(self.hosts, "w") as f:
            f.write("# names the controller resolves before the host's\n"
                    "%s allowed.test\n%s other.test\n%s hostself.test\n"
                    "169.254.169.254 metadata.test\n"
                    "10.99.0.7 lan.test\n192.168.77.7 home.test\n"
                    "100.64.1.1 cgnat.test\n198.51.100.7 docs.test\n"
                    "198.18.0.9 bench.test\n255.255.255.255 bcast.test\n"
                    % (REMOTE, OTHER, GATEWAY))

    def start(self, **kw):
        # "the internet" here is a private network the operator allows
        return self.env.start(extra=["--hosts", self.hosts,
                                     "--egress-subnet", SUBNET,
                                     "--egress-allow", ALLOW], **kw)

    def ping_redis(self, host):
        c = redis.Redis(host=host, port=self.redis_port,
                        socket_timeout=5)
        try:
            return c.ping()
        finally:
            c.close()

    def close(self):
        env = self.env
        # every sandbox the usual way (routes, containers, links, rules)
        env.stop()
        if os.path.isdir(env.state):
            subprocess.run([BIN, "--state", env.state, "--redis",
                            "unix:" + env.redis_sock, "--pg", env.conninfo,
                            "--pools", env.pools, "--rootfs", ROOTFS,
                            "--terminate-all"], capture_output=True,
                           timeout=120)
        for p in (self.server, self.redis):
            p.kill()
            p.wait()
        sh("ip", "netns", "delete", self.ns, check=False)
        sh("ip", "link", "delete", self.link, check=False)


@pytest.fixture
def world(env):
    w = World(env)
    yield w
    w.close()


def create(env, level, domains, **kw):
    return env.create(level=level, networkAccess=json.dumps(
        {"egress": domains}), **kw)


def running(env, *sids):
    for sid in sids:
        wait_until(lambda: (env.record(sid) or ("",))[0] in ("Running",
                                                             "Failed"),
                   90, what="Running")
        msg = env.q("SELECT message FROM sandboxes WHERE id = %s", sid)
        assert env.record(sid)[0] == "Running", msg


def probe(env, sid, targets):
    out = env.execute(sid, "import sys; sys.argv = ['p', %r]\n%s"
                      % (json.dumps(targets), PROBE))
    assert out["status"] == "completed", out
    return json.loads(out["stdout"])


def config(env, sid):
    with open(os.path.join(env.state, "bundles", sid, "config.json")) as f:
        return json.load(f)


def mkbundle_config(env, sid, level, extra):
    """mkbundle's own output for the sandbox's arguments."""
    slot = env.q("SELECT slot FROM sandboxes WHERE id = %s", sid)[0][0]
    rt = "runsc" if level == "high" else "runc"
    d = os.path.join(env.dir, "mk-" + sid)
    os.mkdir(d)
    tok = os.path.join(d, "tok")
    shutil.copy(os.path.join(env.state, "bundles", sid, "token"), tok)
    run = os.path.join(d, "run")
    argv = [MKBUNDLE, "--rootfs", os.path.join(ROOTFS, "python"),
            "--bundle", os.path.join(d, "b"), "--run-dir", run,
            "--token-file", tok, "--runtime", rt, "--id", "lss-" + sid,
            "--memory", str(256 << 20), "--pids", "256", "--cpus", "1.000",
            "--uid-base", str((1 << 20) + slot * 65536),
            "--runner-arg=--languages", "--runner-arg=python,bash"] + extra
    subprocess.run(argv, check=True)
    with open(os.path.join(d, "b", "config.json")) as f:
        cfg = json.load(f)
    shutil.rmtree(d)
    # the run dir is the sandbox's own, wherever mkbundle was pointed
    real = os.path.join(env.state, "sandboxes", sid)
    for m in cfg["mounts"]:
        if m["source"].startswith(run):
            m["source"] = real + m["source"][len(run):]
    return cfg


@pytest.mark.parametrize("level", ["standard", "high"])
def test_egress_reaches_exactly_what_was_granted(env, world, level):
    world.start()
    a = create(env, level, [{"domain": "allowed.test",
                             "ports": [ALLOWED]}])
    b = create(env, level, [{"domain": "allowed.test"}])
    none = env.create(level=level)
    running(env, a, b, none)
    ip_a, ip_b = slot_ip(env, a, 2), slot_ip(env, b, 2)
    slot_gw = slot_ip(env, a, 1)

    # what the sandbox is refused below is there: the host reaches it
    for host, port in ((REMOTE, NOT_ALLOWED), (OTHER, ALLOWED)):
        with socket.create_connection((host, port), 5) as s:
            assert s.recv(100).startswith(b"hello")
    for host in host_addresses() + [slot_gw]:
        assert world.ping_redis(host), host

    host_targets = [[h, world.redis_port] for h in host_addresses()]
    targets = [["allowed.test", ALLOWED], ["allowed.test", NOT_ALLOWED],
               [OTHER, ALLOWED], ["169.254.169.254", 80],
               [slot_gw, world.redis_port]] + host_targets
    got = probe(env, a, targets)
    assert got["ifaces"] == ["eth0", "lo"]
    # names come from the sandbox's /etc/hosts: only the granted one
    assert got["resolve"] == {"allowed.test": [REMOTE], "other.test": []}
    first, *refused = got["connect"]
    # granted: through, NATed to the host's address on that network
    assert first == "hello %d from %s" % (ALLOWED, GATEWAY)
    assert all(r.startswith("refused") for r in refused), \
        list(zip(targets[1:], refused))

    # without egress: loopback only, the granted server unreachable
    got = probe(env, none, [[REMOTE, ALLOWED]])
    assert got["ifaces"] == ["lo"]
    assert got["connect"][0].startswith("refused")
    assert got["resolve"]["allowed.test"] == []
    assert "/etc/hosts" not in [m["destination"]
                                for m in config(env, none)["mounts"]]

    # ports default to 80 and 443: 8080 is not among them for b
    got = probe(env, b, [["allowed.test", ALLOWED]])
    assert got["connect"][0].startswith("refused")

    # other sandboxes: b listens on its address, a cannot reach it
    result = {}

    def listen():
        result["out"] = env.execute(b, "import sys; sys.argv = ['l', %r]\n%s"
                                    % (ip_b, LISTEN))

    t = threading.Thread(target=listen)
    t.start()
    with env.runner(b) as c:
        wait_until(lambda: c.get("/files/listening").status_code == 200,
                   30, what="b listening")
        got = probe(env, a, [[ip_b, 7000]])
        assert c.put("/files/stop", content=b"").status_code == 201
    t.join(60)
    assert got["connect"][0].startswith("refused")
    # b saw itself only
    assert result["out"]["stdout"].split() == [ip_b], result

    # the bundle is mkbundle's with the same network arguments
    hosts = os.path.join(env.state, "sandboxes", a, "hosts")
    if level == "high":
        extra = ["--hosts", hosts, "--netns", "lss-" + a]
    else:
        extra = ["--hosts", hosts, "--veth", "%s,%s/30,%s/30,%s"
                 % (ifname(a), slot_gw, ip_a, a)]
    assert config(env, a) == mkbundle_config(env, a, level, extra)
    assert links_of(a) == [ifname(a)]
    assert sorted(nft_mentions(a)) == ["chain", "egress", "ifaces"]
    assert (os.path.exists("/run/netns/lss-" + a)) == (level == "high")

    # deleted: every network artifact goes with it
    env.request(type="delete", id=a, owner="alice")
    wait_until(lambda: env.record(a)[0] == "Terminated", 60,
               what="deleted")
    assert net_artifacts(env, a) == []
    assert net_artifacts(env, b) != []


@pytest.mark.parametrize("domain, why", [
    ("*.allowed.test", "wildcard"),
    ("hostself.test", "no sandbox may reach (10.254.0.1: this host's own"),
    ("metadata.test", "no sandbox may reach (169.254.169.254: link-local"),
    # private and special ranges, unless --egress-allow names them
    ("lan.test", "(10.99.0.7: private network 10.0.0.0/8, not allowed"),
    ("home.test", "(192.168.77.7: private network 192.168.0.0/16"),
    ("cgnat.test", "(100.64.1.1: shared address space (CGNAT)"),
    ("docs.test", "(198.51.100.7: documentation (TEST-NET-2)"),
    ("bench.test", "(198.18.0.9: benchmarking 198.18.0.0/15"),
    ("bcast.test", "(255.255.255.255: reserved (and broadcast)"),
    # address literals resolve to themselves, in every spelling
    ("10.99.0.8", "(10.99.0.8: private network"),
    ("167772161", "(10.0.0.1: private network"),
    ("0xc0a80001", "(192.168.0.1: private network"),
])
def test_egress_that_cannot_be_granted_fails_with_the_reason(env, world,
                                                              domain, why):
    world.start()
    sid = create(env, "standard", [{"domain": domain}])
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Failed", 60,
               what="Failed")
    msg = env.q("SELECT message FROM sandboxes WHERE id = %s", sid)[0][0]
    assert why in msg and "egress" in msg, msg
    assert "lss-" + sid not in env.containers()
    assert net_artifacts(env, sid) == []


def test_network_artifacts_go_after_a_crash(env, world):
    world.start()
    kept = create(env, "high", [{"domain": "allowed.test",
                                 "ports": [ALLOWED]}])
    lost = create(env, "standard", [{"domain": "allowed.test"}])
    running(env, kept, lost)
    env.kill9()
    assert net_artifacts(env, lost) != []

    # its record vanishes while the controller is down: an orphan now
    env.q("DELETE FROM sandbox_events WHERE sandbox_id = %s", lost)
    env.q("DELETE FROM sandboxes WHERE id = %s", lost)
    # and a create interrupted half way: marker, namespace, link, rules
    ghost = "sb-" + secrets.token_hex(10)
    bundle = os.path.join(env.state, "bundles", ghost)
    os.makedirs(bundle)
    with open(os.path.join(bundle, "egress"), "w") as f:
        f.write("%s 10.212.63.254/30 lss-%s\n" % (ifname(ghost), ghost))
    sh("ip", "netns", "add", "lss-" + ghost)
    sh(os.path.join(os.path.dirname(MKBUNDLE), "net-up"), ifname(ghost),
       "10.212.63.253/30", "10.212.63.254/30", ghost, "lss-" + ghost)
    sh("nft", "add chain inet llmsafespace %s; add element inet "
       "llmsafespace ifaces { \"%s\" }; add element inet llmsafespace "
       "egress { \"%s\" : jump %s }" % (ghost, ifname(ghost),
                                        ifname(ghost), ghost))
    assert len(net_artifacts(env, ghost)) == 6

    world.start()
    wait_until(lambda: net_artifacts(env, lost) == []
               and net_artifacts(env, ghost) == [], 60,
               what="orphans removed")
    assert "lss-" + lost not in env.containers()
    # the live one was adopted, its grant untouched, and still works
    assert sorted(nft_mentions(kept)) == ["chain", "egress", "ifaces"]
    got = probe(env, kept, [["allowed.test", ALLOWED],
                            ["allowed.test", NOT_ALLOWED]])
    assert got["connect"][0].startswith("hello")
    assert got["connect"][1].startswith("refused")


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.1.0.0/8", "fd00::/8",
                                 "10.0.0.0/33", "10.0.0.0/", "ten/8"])
def test_egress_allow_takes_ipv4_networks_only(bad):
    r = subprocess.run([BIN, "--egress-allow", "10.20.0.0/16",
                        "--egress-allow", bad], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert "--egress-allow" in r.stderr, r.stderr
