"""The user journey through the real stack with the SDK: create from the
warm pool, execute, stream (stdin, cancel), files, packages, status,
connect, list, terminate."""

import hashlib
import os
import resource
import subprocess
import sys
import threading

import pytest

import llmsafespace
from llmsafespace import Sandbox


def test_environment_configures_everything(stack, user, monkeypatch):
    monkeypatch.setenv("LLMSAFESPACE_API_KEY", user.key)
    monkeypatch.setenv("LLMSAFESPACE_API_URL", stack.api_url + "/api/v1")
    # no key and no URL given: both come from the environment
    assert llmsafespace.Client().whoami()["name"] == user.user["name"]
    assert isinstance(Sandbox.list(), llmsafespace.SandboxList)


def test_create_from_warm_pool_and_terminate_on_exit(user):
    with Sandbox("python", client=user, labels={"case": "warm"}) as sb:
        assert sb.id.startswith("sb-")
        assert sb.phase == "Running"
        # claimed from the stack's default pool, not started cold
        assert sb.info.pool
        assert sb.info.user == user.user["id"]
        assert sb.info.labels == {"case": "warm"}
        assert sb.run_code("print('up')").stdout == "up\n"
    after = Sandbox.connect(sb.id, client=user)
    assert after.phase in ("Terminating", "Terminated")
    with pytest.raises(llmsafespace.ConflictError) as e:
        after.run_code("print(1)")
    assert e.value.phase in ("Terminating", "Terminated")


def test_run_code(sandbox):
    r = sandbox.run_code("print(6 * 7)")
    assert (r.stdout, r.stderr, r.exit_code) == ("42\n", "", 0)
    assert r.success and r.status == "completed" and not r.truncated
    assert r.execution_id and r.execution_time >= 0
    assert r.usage is not None and r.usage.wall_time_ms is not None

    r = sandbox.run_code("import sys\nprint('bad', file=sys.stderr)\n"
                         "sys.exit(3)")
    assert (r.exit_code, r.status, r.success) == (3, "failed", False)
    assert r.stderr == "bad\n"

    r = sandbox.run_code("import os, sys\nprint(sys.stdin.read().upper(), "
                         "os.environ['WHO'], os.getcwd())",
                         stdin="hello", env={"WHO": "me"})
    assert r.stdout == "HELLO me /workspace\n"


def test_language_follows_the_runtime_or_is_given(sandbox):
    # python:3.11 lists bash too
    r = sandbox.run_code("echo $((6*7))", language="bash")
    assert r.stdout == "42\n"


def test_execution_timeout_is_a_result(sandbox):
    r = sandbox.run_code("while True: pass", timeout=1)
    assert r.status == "timeout" and not r.success


def test_output_over_the_cap_is_truncated(sandbox):
    r = sandbox.run_code("import sys\nsys.stdout.write('x' * (3 << 20))")
    assert r.truncated and not r.success
    assert 0 < len(r.stdout) <= (1 << 20) + 4096


def test_run_command(sandbox):
    r = sandbox.run_command("echo $A | tr a-z A-Z", env={"A": "shell"})
    assert r.stdout == "SHELL\n"
    # an argv never meets a shell: the ; is an argument like any other
    r = sandbox.run_command(["echo", "a; echo b", "$HOME"])
    assert r.stdout == "a; echo b $HOME\n"
    r = sandbox.run_command("printf", args=["%s-%s", "x", "y"])
    assert r.stdout == "x-y"
    r = sandbox.run_command(["false"])
    assert r.exit_code == 1 and r.status == "failed"


def test_stream_with_interactive_stdin(sandbox):
    code = ("import sys\n"
            "print('ready', flush=True)\n"
            "for line in sys.stdin:\n"
            "    print(line.strip().upper(), flush=True)\n"
            "print('eof', file=sys.stderr)\n")
    seen = []
    out = ""
    with sandbox.stream_code(code) as s:
        for ev in s:
            seen.append(ev)
            if ev.type != "output" or ev.stream != "stdout":
                continue
            # output comes in pieces as written, not in lines
            out += ev.content
            if out == "ready\n":
                s.send_stdin("one\n")
            elif out == "ready\nONE\n":
                s.send_stdin("two\n", eof=True)
    types = [e.type for e in seen]
    assert types[0] == "execution_start"
    assert types[-1] == "execution_complete"
    out = "".join(e.content for e in seen
                  if e.type == "output" and e.stream == "stdout")
    assert out == "ready\nONE\nTWO\n"
    assert s.result.stdout == out and s.result.stderr == "eof\n"
    assert s.result.exit_code == 0 and s.result.success
    assert all(e.execution_id == s.execution_id for e in seen)


def test_stream_cancel(sandbox):
    s = sandbox.stream_code(
        "import time\nprint('started', flush=True)\ntime.sleep(120)")
    types = []
    for ev in s:
        types.append(ev.type)
        if ev.type == "output":
            s.cancel()
    assert "execution_cancelled" in types
    assert types[-1] == "execution_complete"
    assert s.result.status == "cancelled" and not s.result.success


def test_stream_cancel_from_another_thread(sandbox):
    s = sandbox.stream_command(["sh", "-c", "echo go; exec sleep 120"])
    started = threading.Event()
    canceller = threading.Thread(target=lambda: (started.wait(60),
                                                 s.cancel()))
    canceller.start()
    for ev in s:
        if ev.type == "output":
            started.set()
    canceller.join()
    assert s.result.status == "cancelled"


def test_stream_with_stdin_given_and_wait(sandbox):
    s = sandbox.stream_command("cat; echo done >&2", stdin="from stdin")
    r = s.wait()
    assert (r.stdout, r.stderr) == ("from stdin", "done\n")


def test_stream_timeout_event(sandbox):
    s = sandbox.stream_code("while True: pass", timeout=1)
    codes = [ev.code for ev in s if ev.type == "error"]
    assert codes == ["execution_timeout"]
    assert s.result.status == "timeout"


def test_stream_refused_execution(sandbox):
    with pytest.raises(llmsafespace.ValidationError):
        with sandbox.stream_code("x", language="cobol") as s:
            list(s)


def test_files(sandbox, tmp_path):
    sandbox.make_dir("data/sub")
    sandbox.make_dir("data/sub")  # exists: fine with parents
    up = sandbox.upload_file(b"alpha\n", "data/sub/a.txt")
    assert up.size == 6 and up.path.endswith("data/sub/a.txt")
    sandbox.upload_file(b"beta", "/workspace/data/b.txt")
    names = {f.name: f for f in sandbox.list_files("data")}
    assert set(names) == {"sub", "b.txt"}
    assert names["sub"].is_dir and not names["b.txt"].is_dir
    assert names["b.txt"].size == 4
    assert sandbox.download_file("data/sub/a.txt") == b"alpha\n"
    # what code in the sandbox sees is what was uploaded
    assert sandbox.run_code("print(open('data/b.txt').read())").stdout == \
        "beta\n"

    # a file the code wrote, downloaded into a directory
    sandbox.run_code("open('out.txt', 'w').write('from code')")
    path = sandbox.download_file("out.txt", tmp_path)
    assert path == str(tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "from code"

    # odd names stay names
    sandbox.upload_file(b"q", "data/what? #1.txt")
    assert "what? #1.txt" in [f.name for f in sandbox.list_files("data")]

    sandbox.delete_file("data/b.txt")
    with pytest.raises(llmsafespace.NotFoundError):
        sandbox.download_file("data/b.txt")
    with pytest.raises(llmsafespace.ConflictError):
        sandbox.delete_file("data")  # not empty
    sandbox.delete_file("data", recursive=True)
    assert "data" not in [f.name for f in sandbox.list_files()]
    with pytest.raises(llmsafespace.NotFoundError):
        sandbox.upload_file(b"x", "missing/dir/x")


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def test_large_file_round_trip_is_streamed(sandbox, tmp_path):
    size = 160 << 20
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(size >> 20):
            chunk = i.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    before = _maxrss_mib()

    up = sandbox.upload_file(src, "big.bin")
    assert up.size == size
    r = sandbox.run_command(["sha256sum", "big.bin"])
    assert r.stdout.split()[0] == digest.hexdigest()

    dst = sandbox.download_file("big.bin", tmp_path / "back.bin")
    back = hashlib.sha256()
    with open(dst, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            back.update(chunk)
    assert back.hexdigest() == digest.hexdigest()
    # neither direction held the file in this process's memory
    assert _maxrss_mib() - before < 64
    sandbox.delete_file("big.bin")


def test_upload_of_unknown_length_is_chunked(sandbox):
    r, w = os.pipe()
    data = b"piece " * 100000

    def feed():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(data), 65536):
                f.write(data[i:i + 65536])
    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as f:
        up = sandbox.upload_file(f, "piped.txt")
    t.join()
    assert up.size == len(data)
    with sandbox.open_file("piped.txt") as body:
        got = b"".join(body.iter_chunks(1 << 16))
    assert got == data


def _wheel(tmp_path, name, source):
    """A pure-Python wheel, built here by pip from a two-file project,
    offline (Debian's setuptools and wheel, no build isolation)."""
    proj = tmp_path / name
    proj.mkdir()
    (proj / (name + ".py")).write_text(source)
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\n'
        'build-backend = "setuptools.build_meta"\n'
        '[project]\nname = "%s"\nversion = "1.0"\n'
        '[tool.setuptools]\npy-modules = ["%s"]\n' % (name, name))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                    "--no-build-isolation", "--no-deps", "--no-index",
                    "-w", str(dist), str(proj)], check=True,
                   cwd=str(tmp_path))
    (wheel,) = dist.glob(name + "-1.0-*.whl")
    return wheel


def test_install_from_an_uploaded_wheel(sandbox, tmp_path):
    wheel = _wheel(tmp_path, "sdkwheel", "ANSWER = 42\n")
    sandbox.make_dir("wheels")
    sandbox.upload_file(wheel, "wheels/" + wheel.name)
    r = sandbox.install("/workspace/wheels/" + wheel.name)
    assert r.success, r.stderr
    assert sandbox.run_code("import sdkwheel\nprint(sdkwheel.ANSWER)") \
        .stdout == "42\n"


def test_install_without_network_is_a_clear_failure(sandbox):
    # sandboxes have no egress: an index package cannot come
    r = sandbox.install(["surely-not-a-package-llmsafespace"], timeout=60)
    assert not r.success and r.status in ("failed", "timeout")
    assert r.exit_code != 0
    assert r.stderr


def test_install_refuses_option_injection(sandbox):
    with pytest.raises(llmsafespace.ValidationError):
        sandbox.install(["--index-url=http://evil"])


def test_status_connect_list(user, sandbox):
    st = sandbox.status()
    assert st.id == sandbox.id and st.phase == "Running"
    ready = [c for c in st.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True"

    again = Sandbox.connect(sandbox.id, client=user)
    assert again.id == sandbox.id and again.runtime == sandbox.runtime
    assert again.run_code("print('via connect')").stdout == "via connect\n"

    listed = Sandbox.list(client=user, phase="Running")
    assert sandbox.id in [s.id for s in listed]
    assert listed.total >= 1
    assert all(s.phase == "Running" for s in listed)
    assert sandbox.refresh().phase == "Running"


def test_labels_filter_the_list(user, unique):
    with Sandbox("python", client=user, labels={"batch": unique}) as sb:
        listed = Sandbox.list(client=user, labels={"batch": unique})
        assert [s.id for s in listed] == [sb.id]
        assert Sandbox.list(client=user, labels={"batch": "no-" + unique}) \
            == []


def test_terminate_is_idempotent_and_can_wait(user):
    sb = Sandbox("python", client=user)
    first = sb.terminate(wait=True)
    assert first.phase == "Terminated"
    assert sb.terminate().phase == "Terminated"
    assert Sandbox.connect(sb.id, client=user).phase == "Terminated"


def test_cold_create_polls_until_running(user, monkeypatch):
    # the gateway does not hold the answer: 202, then the SDK polls
    monkeypatch.setattr(llmsafespace.sandbox, "_CREATE_WAIT_MAX", 0)
    with Sandbox("python", client=user, use_warm_pool=False,
                 resources={"memory": "256Mi",
                            "ephemeral_storage": "512Mi"}) as sb:
        assert sb.phase == "Running" and not sb.info.pool
        assert sb.info.resources == {"memory": "256Mi",
                                     "ephemeralStorage": "512Mi"}
        assert sb.run_code("print('cold')").stdout == "cold\n"


def test_cold_create_under_gvisor(user):
    with Sandbox("python", client=user, security_level="high") as sb:
        assert sb.info.security_level == "high"
        assert sb.run_code("print('high')").stdout == "high\n"
