"""The controller writes each sandbox's config.json from a template made
by runtimes/oci/mkbundle (one Python process per runtime instead of one
per sandbox).  Here: the result is exactly what mkbundle itself writes for
the same arguments, so the confinement is the runtimes' definition."""

import json
import os
import subprocess
import tempfile

from conftest import MKBUNDLE, ROOTFS, needs_root, wait_until

pytestmark = needs_root

UID_BASE = 1 << 20


def mkbundle_config(env, sid, memory, cpus, extra):
    slot = env.q("SELECT slot FROM sandboxes WHERE id = %s", sid)[0][0]
    with tempfile.TemporaryDirectory(dir=env.dir) as d:
        tok = os.path.join(d, "tok")
        with open(tok, "w") as f:
            f.write("x")
        argv = [MKBUNDLE, "--rootfs", os.path.join(ROOTFS, "python"),
                "--bundle", os.path.join(d, "b"),
                "--run-dir", os.path.join(env.state, "sandboxes", sid),
                "--token-file", tok, "--runtime", "runc",
                "--id", "lss-" + sid, "--memory", str(memory),
                "--pids", "256", "--cpus", cpus,
                "--uid-base", str(UID_BASE + slot * 65536),
                "--runner-arg=--languages", "--runner-arg=python,bash"]
        argv += ["--runner-arg=" + a for a in extra]
        # mkbundle rewrites the token in the run dir: give it the same one
        with open(os.path.join(env.state, "bundles", sid, "token")) as f:
            live = f.read()
        with open(tok, "w") as f:
            f.write(live)
        subprocess.run(argv, check=True)
        with open(os.path.join(d, "b", "config.json")) as f:
            return json.load(f)


def config(env, sid):
    with open(os.path.join(env.state, "bundles", sid, "config.json")) as f:
        return json.load(f)


def test_bundles_equal_mkbundle_output(env):
    env.pool("pre", minSize=1, maxSize=1, preloadPackages=["json", "numpy"],
             preloadScripts=[{"name": "s1", "content": "X = 1\n"}])
    env.start()
    sid = env.create(resources=json.dumps({"cpu": "500m",
                                           "memory": "300Mi"}))
    (warm,) = wait_until(lambda: env.ready("pre"), 60, what="warm")
    wait_until(lambda: (env.record(sid) or ("",))[0] == "Running", 60,
               what="cold Running")
    assert "mkbundle per sandbox" not in env.logs()

    got, want = config(env, sid), mkbundle_config(env, sid, 300 << 20,
                                                  "0.500", [])
    assert got["process"]["args"] == want["process"]["args"]
    assert got["process"] == want["process"]
    assert got == want
    assert config(env, warm) == mkbundle_config(
        env, warm, 512 << 20, "1.000",
        ["--preload-packages", "json,numpy", "--preload-script",
         "s1=/run/llmsafespace/preload-s1"])

    # and the sandboxes run: token and run dir as mkbundle makes them
    assert env.execute(sid, "print(2 + 2)")["stdout"] == "4\n"
    run = os.path.join(env.state, "sandboxes", sid)
    st = os.stat(run)
    assert oct(st.st_mode & 0o777) == "0o700"
    slot = env.q("SELECT slot FROM sandboxes WHERE id = %s", sid)[0][0]
    assert st.st_uid == UID_BASE + slot * 65536
    tst = os.stat(os.path.join(run, "token"))
    assert oct(tst.st_mode & 0o777) == "0o400"
    assert tst.st_uid == st.st_uid
