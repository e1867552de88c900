"""Error kinds as the real stack produces them."""

import time

import pytest

import llmsafespace
from llmsafespace import Sandbox

BAD_KEY = "lsp_0000000000000000_" + "0" * 32


def test_bad_key_is_an_authentication_error(stack):
    c = stack.client(BAD_KEY)
    with pytest.raises(llmsafespace.AuthenticationError) as e:
        c.whoami()
    assert e.value.status == 401 and e.value.code == "unauthorized"
    with pytest.raises(llmsafespace.AuthenticationError):
        Sandbox("python", client=c)
    with pytest.raises(llmsafespace.AuthenticationError):
        Sandbox.list(client=c)


def test_revoked_key(stack, user):
    k = user.create_api_key("short-lived")
    c = stack.client(k["key"])
    assert c.whoami()["id"] == user.user["id"]
    user.revoke_api_key(k["id"])
    with pytest.raises(llmsafespace.AuthenticationError):
        c.whoami()


def test_other_users_sandbox_is_not_found(user, other, sandbox):
    with pytest.raises(llmsafespace.NotFoundError):
        Sandbox.connect(sandbox.id, client=other)
    assert sandbox.id not in [s.id for s in Sandbox.list(client=other)]
    # a handle on it in the other user's hands reaches nothing: every
    # route answers like a missing sandbox, the WebSocket included
    stolen = Sandbox._attach(other, sandbox.info)
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.run_code("print(1)")
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.stream_code("print(1)")
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.list_files()
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.upload_file(b"x", "planted.txt")
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.status()
    with pytest.raises(llmsafespace.NotFoundError):
        stolen.terminate()
    # and the owner's sandbox is untouched
    assert sandbox.run_code("print('still mine')").stdout == "still mine\n"


def test_missing_sandbox_is_not_found(user):
    with pytest.raises(llmsafespace.NotFoundError) as e:
        Sandbox.connect("sb-00000000000000000000", client=user)
    assert e.value.code == "not_found"


def test_bad_runtime_is_a_validation_error(user):
    with pytest.raises(llmsafespace.ValidationError) as e:
        Sandbox("cobol:85", client=user)
    assert e.value.field == "runtime"


def test_bad_values_are_validation_errors(user, sandbox):
    with pytest.raises(llmsafespace.ValidationError) as e:
        Sandbox("python", client=user, timeout=10 ** 6)
    assert e.value.field == "timeout"
    with pytest.raises(llmsafespace.ValidationError) as e:
        Sandbox("python", client=user, security_level="extreme")
    assert e.value.field == "securityLevel"
    with pytest.raises(llmsafespace.ValidationError):
        sandbox.run_code("print(1)", language="cobol")
    with pytest.raises(llmsafespace.ValidationError) as e:
        sandbox.run_code("print(1)", timeout=10 ** 6)
    assert e.value.field == "timeout"


def test_admin_routes_refuse_users(user):
    with pytest.raises(llmsafespace.AuthenticationError) as e:
        user.warm_pools()
    assert e.value.status == 403
    with pytest.raises(llmsafespace.AuthenticationError):
        user.create_user("nobody")


def test_rate_limited_reads(stack, admin):
    """A key that asks too fast gets RateLimitError with the time to wait;
    the budget then comes back. (Its own user: limits are per key.)"""
    _, key = admin.create_user("sdk-rate-%d" % int(time.monotonic() * 1000))
    c = stack.client(key, max_retries=0)
    err = None
    for _ in range(2000):
        try:
            c.whoami()
        except llmsafespace.RateLimitError as e:
            err = e
            break
    assert err is not None, "2000 requests in a row were never limited"
    assert err.status == 429
    # the key's limiter says when to come back; nginx's per-address
    # limit_req (local.conf) may answer first, without Retry-After
    if err.retry_after is not None:
        assert err.retry_after > 0
    time.sleep(min(err.retry_after or 2, 10) + 1)
    assert c.whoami()["role"] == "user"
