"""POST /packages: pip from a local wheel directory, npm from the registry."""

import os
import shutil

import pytest


def test_pip_from_local_wheels(runner):
    r = runner.client.post("/packages", json={"packages": ["lsshello"],
                                              "manager": "pip"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["status"] == "completed", j
    assert "executionId" in j and "usage" in j
    r = runner.execute("import lsshello\nprint(lsshello.hello())")
    assert r["stdout"] == "hello from a wheel\n", r
    # installed with the exec identity, inside the workspace
    st = os.stat(os.path.join(runner.workspace, ".packages/python"))
    assert st.st_uid != 0


def test_pip_missing_package_fails_cleanly(runner):
    r = runner.client.post("/packages", json={"packages": ["nosuchpkg"],
                                              "manager": "pip"})
    assert r.status_code == 200
    assert r.json()["status"] == "failed"


@pytest.mark.parametrize("name", [
    "-r/etc/passwd", "--index-url=http://evil", "-e.", "a b", "x;id",
    "$(id)", "pkg\nname", "", "a" * 300, "`id`"])
def test_package_names_validated(runner, name):
    for mgr in ("pip", "npm"):
        r = runner.client.post("/packages", json={"packages": [name],
                                                  "manager": mgr})
        assert r.status_code == 422, (mgr, name, r.text)
        assert r.json()["error"]["details"]["field"] == "packages"


def test_package_request_validation(runner):
    c = runner.client
    assert c.post("/packages", json={"packages": []}).status_code == 422
    assert c.post("/packages", json={"packages": "x"}).status_code == 422
    assert c.post("/packages", json={"packages": ["x"],
                                     "manager": "apt"}).status_code == 422
    assert c.post("/packages", content=b"{").status_code == 400


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_npm_from_registry(runner):
    r = runner.client.post("/packages", json={"packages": ["is-number@7"],
                                              "manager": "npm"})
    assert r.status_code == 200, r.text
    j = r.json()
    if j["status"] != "completed" and ("ENOTFOUND" in j["stderr"]
                                       or "EAI_AGAIN" in j["stderr"]
                                       or j["status"] == "timeout"):
        pytest.skip("npm registry unreachable: " + j["stderr"][-200:])
    assert j["status"] == "completed", j
    r = runner.execute("console.log(require('is-number')(5), "
                       "require('is-number')('x'))", language="javascript")
    assert r["stdout"] == "true false\n", r
