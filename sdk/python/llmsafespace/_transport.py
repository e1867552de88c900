"""HTTP to the gateway: a small pool of keep-alive connections
(http.client), error answers turned into exceptions, bounded retries of
idempotent reads, and streamed bodies both ways.

http.client rather than urllib: a download must be read piece by piece
from the socket into a file and an upload sent from a file object with a
known length, and both must reuse connections; urllib.request opens a new
connection per request.
"""

import builtins
import http.client
import json
import os
import select
import ssl
import stat
import threading
import time
import urllib.parse

from . import errors

# an idle connection older than this is not reused: nginx closes idle
# keep-alive connections after keepalive_timeout (75 s by default), and a
# request written into a connection the server is closing is lost
_IDLE_MAX = 30.0
_POOL_MAX = 8
_ERROR_BODY_MAX = 64 * 1024
_RETRY_STATUS = (502, 503, 504)
_IDEMPOTENT = ("GET", "HEAD")

USER_AGENT = "llmsafespace-python"


def _split_url(api_url):
    u = urllib.parse.urlsplit(api_url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("api_url must be http(s)://host[:port][/path], "
                         "not %r" % api_url)
    base = u.path.rstrip("/")
    # the gateway's base path is /api/v1; accept the URL with or without
    # it (a gateway mounted below a prefix keeps the prefix)
    if base.endswith("/api/v1"):
        base = base[:-len("/api/v1")]
    port = u.port or (443 if u.scheme == "https" else 80)
    return u.scheme, u.hostname, port, base


class StreamingBody:
    """A response body read piece by piece; the connection goes back to
    the pool only when the body was read to its end."""

    def __init__(self, transport, conn, resp):
        self._transport = transport
        self._conn = conn
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        length = resp.getheader("Content-Length")
        self.length = int(length) if length and length.isdigit() else None

    def read(self, n=-1):
        try:
            return self._resp.read(n) if n is not None and n >= 0 \
                else self._resp.read()
        except builtins.TimeoutError as e:
            self.close()
            raise errors.TimeoutError("timed out reading the answer: %s"
                                      % e) from e
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise errors.ServerUnavailableError(
                "connection lost while reading the answer: %s" % e) from e

    def iter_chunks(self, size=1 << 20):
        while True:
            chunk = self.read(size)
            if not chunk:
                self.close()
                return
            yield chunk

    def close(self):
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        if self._resp.isclosed() and not self._resp.will_close:
            self._transport._release(conn)
        else:
            # unread bytes would be taken for the next answer
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Response:
    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    def json(self):
        if not self.data:
            return None
        try:
            return json.loads(self.data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise errors.LLMSafeSpaceError(
                "the API answered something that is not JSON (HTTP %d)"
                % self.status, status=self.status) from e


class Transport:
    def __init__(self, api_url, api_key, timeout=30.0, max_retries=3):
        self.scheme, self.host, self.port, self.base = _split_url(api_url)
        self.api_url = "%s://%s:%d%s" % (self.scheme, self.host, self.port,
                                         self.base)
        self.prefix = self.base + "/api/v1"
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self._idle = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() \
            if self.scheme == "https" else None

    # -- connections ------------------------------------------------------

    def _new_conn(self, timeout):
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self._ssl,
                blocksize=1 << 16)
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout, blocksize=1 << 16)

    def _acquire(self, timeout):
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < _IDLE_MAX and not _dropped(conn):
                    conn.timeout = timeout
                    conn.sock.settimeout(timeout)
                    return conn
                conn.close()
        return self._new_conn(timeout)

    def _release(self, conn):
        with self._lock:
            if len(self._idle) < _POOL_MAX and conn.sock is not None:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    # -- requests ---------------------------------------------------------

    def url(self, path, query=None):
        url = self.prefix + path
        if query:
            items = [(k, v) for k, v in _query_items(query) if v is not None]
            if items:
                url += "?" + urllib.parse.urlencode(items)
        return url

    def headers(self, extra=None):
        h = {"Authorization": "Bearer " + self.api_key,
             "User-Agent": USER_AGENT, "Accept": "application/json"}
        if extra:
            h.update(extra)
        return h

    def request(self, method, path, query=None, json_body=None, body=None,
                headers=None, timeout=None, stream=False):
        """One API request. Answers a :class:`Response` (or a
        :class:`StreamingBody` with ``stream=True``) for a 2xx status,
        raises the error's class otherwise.

        GET is retried, a bounded number of times with growing pauses, on
        502/503/504 and on connection failures; nothing else is ever
        retried (an execution or an upload must not happen twice)."""
        url = self.url(path, query)
        hdrs = self.headers(headers)
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        timeout = self.timeout if timeout is None else timeout
        retries = self.max_retries if method in _IDEMPOTENT else 0

        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                conn, resp = self._exchange(method, url, body, hdrs, timeout)
            except errors.ServerUnavailableError:
                if last:
                    raise
                _pause(attempt, None)
                continue
            if 200 <= resp.status < 300:
                if stream:
                    return StreamingBody(self, conn, resp)
                data = self._read_all(conn, resp)
                return Response(resp.status, resp.headers, data)
            data = self._read_all(conn, resp, _ERROR_BODY_MAX)
            err = errors.error_from_response(resp.status,
                                             dict(resp.headers), data)
            if resp.status in _RETRY_STATUS and not last:
                _pause(attempt, getattr(err, "headers", {}))
                continue
            raise err

    def _exchange(self, method, url, body, hdrs, timeout):
        conn = self._acquire(timeout)
        try:
            try:
                conn.request(method, url, body=body, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError):
                # the server may have refused the body early (413 while
                # the upload was still being sent) and said why: read it
                pass
            return conn, conn.getresponse()
        except builtins.TimeoutError as e:
            conn.close()
            raise errors.TimeoutError(
                "no answer from %s within %ss" % (self.api_url, timeout)) \
                from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            why = str(e) or type(e).__name__
            raise errors.ServerUnavailableError(
                "cannot reach %s: %s" % (self.api_url, why)) from e
        except BaseException:
            conn.close()
            raise

    def _read_all(self, conn, resp, limit=None):
        try:
            data = resp.read() if limit is None else resp.read(limit)
        except builtins.TimeoutError as e:
            conn.close()
            raise errors.TimeoutError("timed out reading the answer") from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise errors.ServerUnavailableError(
                "connection lost while reading the answer: %s" % e) from e
        if resp.isclosed() and not resp.will_close:
            self._release(conn)
        else:
            conn.close()
        return data


def _query_items(query):
    items = query.items() if isinstance(query, dict) else query
    for k, v in items:
        if isinstance(v, (list, tuple)):
            for x in v:
                yield k, x
        elif isinstance(v, bool):
            yield k, "1" if v else "0"
        else:
            yield k, v


def _dropped(conn):
    """A keep-alive connection the server closed meanwhile is readable
    (EOF); writing a request into it would lose the request."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _pause(attempt, headers):
    delay = min(0.25 * (2 ** attempt), 2.0)
    retry_after = errors._number(errors._header(headers or {}, "Retry-After"))
    if retry_after is not None and 0 < retry_after <= 5:
        delay = max(delay, retry_after)
    time.sleep(delay)


def content_length(fileobj):
    """The number of bytes left in a file object, or None when it cannot
    be known (a pipe, a socket, a generator): then the upload is sent
    chunked."""
    try:
        st = os.fstat(fileobj.fileno())
    except (AttributeError, OSError, ValueError):
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return None
    try:
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None

