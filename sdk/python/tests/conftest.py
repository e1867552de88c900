"""The SDK's tests run against a real local stack: nginx with the module,
Redis, PostgreSQL, the controller and runc sandboxes, started by
tools/run.sh in a temporary directory on a free port, and stopped at the
end of the session.

LSS_TEST_API_URL and LSS_TEST_ADMIN_KEY point the tests at a stack that
already runs instead (nothing is started or stopped then).
"""

import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
TOP = os.path.dirname(os.path.dirname(SDK))

# the SDK under test is this checkout's, not an installed copy
sys.path.insert(0, SDK)

import llmsafespace  # noqa: E402

# a cold start builds the runtime's root filesystem the first time
_START_TIMEOUT = 1800


def _free_port():
    # below the ephemeral range, like the gateway harness: a port bound
    # now cannot be taken meanwhile by some outgoing connection
    for _ in range(200):
        port = random.randint(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class Stack:
    def __init__(self, api_url, admin_key):
        self.api_url = api_url
        self.admin_key = admin_key

    def client(self, key, **kw):
        return llmsafespace.Client(api_key=key, api_url=self.api_url, **kw)


@pytest.fixture(scope="session")
def stack():
    url = os.environ.get("LSS_TEST_API_URL")
    key = os.environ.get("LSS_TEST_ADMIN_KEY")
    if url and key:
        yield Stack(url, key)
        return

    run = tempfile.mkdtemp(prefix="lss-sdk-")
    os.chmod(run, 0o755)  # PostgreSQL runs as its own user below it
    port = _free_port()
    env = dict(os.environ, LSS_RUN=run, LSS_PORT=str(port), LSS_DETACH="1")
    log = os.path.join(run, "run.log")
    try:
        with open(log, "w") as out:
            rc = subprocess.run([os.path.join(TOP, "tools", "run.sh")],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=_START_TIMEOUT).returncode
        if rc != 0:
            with open(log) as f:
                pytest.fail("tools/run.sh failed (%d):\n%s"
                            % (rc, f.read()[-4000:]))
        with open(os.path.join(run, "admin.key")) as f:
            key = f.read().strip()
        s = Stack("http://127.0.0.1:%d" % port, key)
        s.run_dir = run          # its logs (t/security reads them)
        yield s
    finally:
        subprocess.run([os.path.join(TOP, "tools", "run.sh"), "stop"],
                       env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=300)
        if not os.environ.get("LSS_TEST_KEEP"):
            shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def admin(stack):
    return stack.client(stack.admin_key)


def _new_user(stack, admin, what):
    user, key = admin.create_user("sdk-%s-%s" % (what, secrets.token_hex(4)))
    c = stack.client(key)
    c.user = user
    c.key = key
    return c


@pytest.fixture(scope="session")
def user(stack, admin):
    """A normal user of the tests' own (not the admin)."""
    return _new_user(stack, admin, "user")


@pytest.fixture(scope="session")
def other(stack, admin):
    """A second normal user: must never see the first one's sandboxes."""
    return _new_user(stack, admin, "other")


@pytest.fixture(scope="module")
def sandbox(user):
    """One warm sandbox of the user's, shared by a module's tests."""
    sb = llmsafespace.Sandbox("python", client=user, timeout=1800)
    yield sb
    try:
        sb.terminate()
    except llmsafespace.LLMSafeSpaceError:
        pass


@pytest.fixture
def unique():
    return secrets.token_hex(4)


def pytest_report_header(config):
    return "llmsafespace SDK from %s" % llmsafespace.__file__
