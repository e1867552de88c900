"""What the SDK does on its own, without the stack: configuration, how
error answers become exceptions, and what it does when the server is
unreachable, silent or drops connections (plain loopback sockets stand in
for such a server)."""

import builtins
import io
import os
import socket
import threading

import pytest

import llmsafespace
from llmsafespace import errors
from llmsafespace._transport import content_length
from llmsafespace.sandbox import _file_path

KEY = "lsp_0123456789abcdef_" + "A" * 32


def test_no_key_is_an_authentication_error(monkeypatch):
    monkeypatch.delenv("LLMSAFESPACE_API_KEY", raising=False)
    with pytest.raises(llmsafespace.AuthenticationError) as e:
        llmsafespace.Client()
    assert "LLMSAFESPACE_API_KEY" in str(e.value)


def test_environment_and_url_forms(monkeypatch):
    monkeypatch.setenv("LLMSAFESPACE_API_KEY", KEY)
    monkeypatch.delenv("LLMSAFESPACE_API_URL", raising=False)
    assert llmsafespace.Client().api_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("LLMSAFESPACE_API_URL", "http://10.0.0.1:9000/api/v1/")
    assert llmsafespace.Client().api_url == "http://10.0.0.1:9000"
    c = llmsafespace.Client(api_url="https://gw.example/lss")
    assert c.api_url == "https://gw.example:443/lss"
    with pytest.raises(ValueError):
        llmsafespace.Client(api_url="ftp://x")


def _body(code, message="m", details=None):
    import json
    return json.dumps({"error": {"code": code, "message": message,
                                 "details": details or {}}}).encode()


@pytest.mark.parametrize("status,code,cls", [
    (400, "bad_request", llmsafespace.ValidationError),
    (401, "unauthorized", llmsafespace.AuthenticationError),
    (403, "forbidden", llmsafespace.AuthenticationError),
    (403, "quota_exceeded", llmsafespace.QuotaExceeded),
    (404, "not_found", llmsafespace.NotFoundError),
    (409, "conflict", llmsafespace.ConflictError),
    (413, "payload_too_large", llmsafespace.ValidationError),
    (422, "validation_error", llmsafespace.ValidationError),
    (429, "rate_limited", llmsafespace.RateLimitError),
    (500, "internal", llmsafespace.LLMSafeSpaceError),
    (502, "unavailable", llmsafespace.ServerUnavailableError),
    (503, "unavailable", llmsafespace.ServerUnavailableError),
])
def test_error_kinds(status, code, cls):
    e = errors.error_from_response(status, {}, _body(code, "why"))
    assert type(e) is cls
    assert (e.status, e.code, e.message) == (status, code, "why")


def test_error_details():
    e = errors.error_from_response(
        422, {}, _body("validation_error", "bad", {"field": "runtime"}))
    assert e.field == "runtime"
    e = errors.error_from_response(
        429, {"Retry-After": "3", "RateLimit-Limit": "41"},
        _body("rate_limited"))
    assert (e.retry_after, e.limit) == (3, 41)
    e = errors.error_from_response(
        403, {}, _body("quota_exceeded", "q", {"limit": 20, "current": 20}))
    assert (e.limit, e.current) == (20, 20)
    e = errors.error_from_response(
        409, {}, _body("conflict", "c", {"phase": "Terminating"}))
    assert e.phase == "Terminating"
    # not the API's JSON: the status and the start of the body are kept
    e = errors.error_from_response(502, {}, b"<html>Bad Gateway</html>")
    assert isinstance(e, llmsafespace.ServerUnavailableError)
    assert "502" in str(e) and "Bad Gateway" in str(e)


def test_timeout_error_is_also_the_builtin():
    assert issubclass(llmsafespace.TimeoutError, builtins.TimeoutError)
    assert issubclass(llmsafespace.TimeoutError,
                      llmsafespace.LLMSafeSpaceError)


def test_file_paths():
    assert _file_path("a b/c") == "a%20b/c"
    assert _file_path("/workspace/x/y") == "x/y"
    assert _file_path("/x") == "x"
    # a ? or # in a name is part of the name, never the URL's query
    assert _file_path("q?x=1#f") == "q%3Fx%3D1%23f"
    assert _file_path("workspacefile") == "workspacefile"
    with pytest.raises(ValueError):
        _file_path("/workspace")


def test_content_length(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    with open(p, "rb") as f:
        f.read(100)
        assert content_length(f) == 900
    assert content_length(io.BytesIO(b"abc")) == 3
    r, w = os.pipe()
    with os.fdopen(r, "rb") as f, os.fdopen(w, "wb"):
        assert content_length(f) is None


class Listener:
    """A loopback TCP server that accepts and then, per connection,
    closes at once or stays silent; it counts connections."""

    def __init__(self, mode):
        self.mode = mode
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "close":
                c.recv(65536)
                c.close()
            else:
                self.held.append(c)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def listener(request):
    servers = []

    def make(mode):
        s = Listener(mode)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def test_connection_refused_is_server_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on the port any more
    c = llmsafespace.Client(api_key=KEY, api_url="http://127.0.0.1:%d" % port,
                            max_retries=1)
    with pytest.raises(llmsafespace.ServerUnavailableError):
        c.whoami()


def test_reads_are_retried_writes_never(listener):
    srv = listener("close")
    c = llmsafespace.Client(api_key=KEY,
                            api_url="http://127.0.0.1:%d" % srv.port,
                            max_retries=2)
    with pytest.raises(llmsafespace.ServerUnavailableError):
        c.whoami()
    assert srv.accepted == 3  # the first try and two retries
    with pytest.raises(llmsafespace.ServerUnavailableError):
        c.create_api_key("x")
    assert srv.accepted == 4  # a POST is sent once


def test_silent_server_is_a_client_timeout(listener):
    srv = listener("silent")
    c = llmsafespace.Client(api_key=KEY,
                            api_url="http://127.0.0.1:%d" % srv.port,
                            request_timeout=0.5)
    with pytest.raises(builtins.TimeoutError) as e:
        c.whoami()
    assert isinstance(e.value, llmsafespace.TimeoutError)
    assert srv.accepted == 1  # a timeout is not retried
