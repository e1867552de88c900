"""The adversarial matrix (../shared/design/security.md, "Adversarial
cases"): every case through the public API of a real local stack, under
runc (securityLevel standard) and under runsc (high), as a hostile user
would try it.  The stack is the SDK tests' own (tools/run.sh in a
temporary directory, sdk/python/tests/conftest.py).  At the end a table
case x runtime says what holds: pass, fail, known failure (an open item,
with its reason) or not applicable (with the reason); it is printed and
written to build/security/matrix.md.
"""

import importlib.util
import os
import re
import secrets
import time

import httpx
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))

_spec = importlib.util.spec_from_file_location(
    "lss_sdk_stack", os.path.join(TOP, "sdk", "python", "tests",
                                  "conftest.py"))
_sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sdk)

stack = _sdk.stack          # the session's stack: tools/run.sh

RUNTIMES = {"runc": "standard", "runsc": "high"}


class Api:
    """A raw client of one user: hostile requests need no SDK."""

    def __init__(self, url, key, user_id=None):
        self.base = url + "/api/v1"
        self.url = url
        self.key = key
        self.user_id = user_id
        self.http = httpx.Client(timeout=120, headers={
            "Authorization": "Bearer " + key})

    def req(self, method, path, retry=True, **kw):
        """A request; one the rate limiter refused waits and goes again
        (retry=False to see the limiter: most cases are not about it)."""
        for _ in range(20):
            r = self.http.request(method, self.base + path, **kw)
            if r.status_code != 429 or not retry:
                return r
            time.sleep(float(r.headers.get("Retry-After", "1")))
        return r

    def execute(self, sid, content, type="code", **kw):
        body = dict(type=type, content=content, **kw)
        if type == "code":
            body.setdefault("language", "python")
        r = self.req("POST", "/sandboxes/%s/execute" % sid, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def py(self, sid, code, **kw):
        return self.execute(sid, code, **kw)


@pytest.fixture(scope="session")
def admin_api(stack):
    return Api(stack.api_url, stack.admin_key)


def _user(admin_api, what):
    r = admin_api.req("POST", "/users", json={
        "name": "sec-%s-%s" % (what, secrets.token_hex(3))})
    assert r.status_code == 201, r.text
    b = r.json()
    return Api(admin_api.url, b["apiKey"]["key"], b["user"]["id"])


@pytest.fixture(scope="session")
def alice(admin_api):
    return _user(admin_api, "alice")


@pytest.fixture(scope="session")
def bob(admin_api):
    return _user(admin_api, "bob")


_sandboxes = {}


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request):
    return request.param


@pytest.fixture
def sb(alice, runtime):
    """alice's sandbox under this runtime, made once per session."""
    if runtime not in _sandboxes:
        r = alice.req("POST", "/sandboxes?wait=120", json={
            "runtime": "python", "securityLevel": RUNTIMES[runtime],
            "timeout": 3600, "useWarmPool": False})
        assert r.status_code == 201, r.text
        assert r.json()["phase"] == "Running", r.text
        _sandboxes[runtime] = r.json()["id"]
    sid = _sandboxes[runtime]
    # a case that broke the sandbox fails, the next ones must not
    r = alice.req("GET", "/sandboxes/%s" % sid)
    if r.json().get("phase") != "Running":
        del _sandboxes[runtime]
        pytest.fail("the %s sandbox died in an earlier case: %s"
                    % (runtime, r.text))
    return sid


def alive(api, sid):
    r = api.execute(sid, "print('alive')")
    return r["status"] == "completed" and r["stdout"] == "alive\n"


# --- the table ---------------------------------------------------------------

_results = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    m = re.match(r"test_c(\d\d)_", item.name)
    if m is None or (rep.when != "call" and rep.passed):
        return
    rt = item.callspec.params.get("runtime", "-") \
        if hasattr(item, "callspec") else "-"
    key = (int(m.group(1)), rt)
    if hasattr(rep, "wasxfail"):
        v = "known: " + rep.wasxfail
    elif rep.skipped:
        v = "n/a: " + str(rep.longrepr[2]).replace("Skipped: ", "")
    elif rep.failed:
        v = "FAIL"
    else:
        v = "pass"
    # a case may be several tests: the worst of them
    old = _results.get(key)
    if old is None or old == "pass" or v == "FAIL":
        _results[key] = v


def known(reason):
    """A case that fails today for a reason an open item names: shown as
    known in the table.  Called only once the assertion failed, so a case
    that starts to hold shows pass by itself."""
    pytest.xfail(reason)


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    cases = sorted({c for c, _ in _results})
    lines = ["| case | runc | runsc |", "|---|---|---|"]
    for c in cases:
        row = []
        for rt in ("runc", "runsc"):
            v = _results.get((c, rt)) or _results.get((c, "-"))
            row.append(v or "not run")
        lines.append("| %d | %s | %s |" % (c, row[0], row[1]))
    out = os.path.join(TOP, "build", "security")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "matrix.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    terminalreporter.write_sep("=", "adversarial matrix (security.md)")
    for line in lines:
        terminalreporter.write_line(line)
