"""CPU is shared per user, not per sandbox (lsc_fairshare.c): one user's
busy sandboxes split one user's weight, so another user's sandbox keeps
its half of a contended CPU."""

import subprocess
import threading
import time

import pytest

from conftest import needs_root, wait_until

pytestmark = needs_root

SPIN = "import time\nt = time.time() + %d\nwhile time.time() < t:\n    pass\n"


def cgroup(sid, hierarchy, name, level="standard"):
    suffix = "-runsc" if level == "high" else ""
    with open("/sys/fs/cgroup/%s/llmsafespace/lss-%s%s/%s"
              % (hierarchy, sid, suffix, name)) as f:
        return int(f.read())


def spin(env, sid, seconds, out):
    try:
        out[sid] = env.execute(sid, SPIN % seconds)["status"]
    except Exception as e:          # noqa: the test reads it
        out[sid] = repr(e)


def cpu_used(sids, seconds):
    """CPU (ns) each sandbox used over the next `seconds`."""
    before = {s: cgroup(s, "cpuacct", "cpuacct.usage") for s in sids}
    time.sleep(seconds)
    return {s: cgroup(s, "cpuacct", "cpuacct.usage") - before[s]
            for s in sids}


@pytest.mark.parametrize("fair", [True, False])
def test_busy_sandboxes_of_one_user_split_its_share(env, fair):
    env.start(extra=() if fair else ("--fair-share", "0"))
    alice = [env.create(owner="alice") for _ in range(3)]
    bob = env.create(owner="bob")
    for sid in alice + [bob]:
        wait_until(lambda: (env.record(sid) or ("",))[0] == "Running",
                   timeout=90, what="%s running" % sid)

    # all four pinned to one CPU, so that they contend whatever the
    # host's size (what they fork later inherits it)
    out = {}
    threads = [threading.Thread(target=spin, args=(env, s, 12, out))
               for s in alice + [bob]]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        pin = []
        for sid in alice + [bob]:
            with open("/sys/fs/cgroup/cpu/llmsafespace/lss-%s/cgroup.procs"
                      % sid) as f:
                pin += f.read().split()
        for pid in pin:
            subprocess.run(["taskset", "-a", "-p", "-c", "0", pid],
                           capture_output=True)

        if fair:
            # alice's three busy sandboxes split one user's 1024
            wait_until(lambda: [cgroup(s, "cpu", "cpu.shares")
                                for s in alice] == [341] * 3
                       and cgroup(bob, "cpu", "cpu.shares") == 1024,
                       timeout=10, what="weights per user")
        used = cpu_used(alice + [bob], 4)
    finally:
        for t in threads:
            t.join()
    assert set(out.values()) == {"completed"}, out

    share_bob = used[bob] / sum(used.values())
    print("bob: %.2f of the contended CPU (fair share %s)" % (share_bob, fair))
    if fair:
        # about half of the contended CPU for bob, against a quarter
        assert share_bob > 0.4, used
    else:
        assert share_bob < 0.35, used
        assert cgroup(bob, "cpu", "cpu.shares") == 1024


def test_idle_sandboxes_keep_their_owners_share(env):
    env.start()
    a, b = [env.create(owner="carol") for _ in range(2)]
    for sid in (a, b):
        wait_until(lambda: (env.record(sid) or ("",))[0] == "Running",
                   timeout=90, what="%s running" % sid)
    # nothing runs: each keeps a whole share, ready for when it wakes
    time.sleep(1)
    assert cgroup(a, "cpu", "cpu.shares") == 1024
    assert cgroup(b, "cpu", "cpu.shares") == 1024
