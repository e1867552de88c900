"""The connection settings and the calls that are not about one sandbox:
runtimes, profiles, warm pools, users."""

import os
import threading

from . import errors
from ._transport import Transport, USER_AGENT
from .models import Profile, Runtime

DEFAULT_API_URL = "http://127.0.0.1:8080"
ENV_API_KEY = "LLMSAFESPACE_API_KEY"
ENV_API_URL = "LLMSAFESPACE_API_URL"


class Client:
    """API key, gateway URL and a pool of connections, shared by every
    :class:`~llmsafespace.Sandbox` and :class:`~llmsafespace.WarmPool`
    made from it.

    ``api_key`` defaults to ``$LLMSAFESPACE_API_KEY``, ``api_url`` to
    ``$LLMSAFESPACE_API_URL`` or ``http://127.0.0.1:8080`` (with or
    without ``/api/v1``). ``request_timeout`` bounds each request that is
    not an execution (seconds without an answer); ``max_retries`` is how
    often a read (GET) is retried on 502/503/504 or a failed
    connection."""

    def __init__(self, api_key=None, api_url=None, request_timeout=30.0,
                 max_retries=3):
        api_key = api_key or os.environ.get(ENV_API_KEY)
        if not api_key:
            raise errors.AuthenticationError(
                "no API key: pass api_key= or set %s" % ENV_API_KEY)
        api_url = api_url or os.environ.get(ENV_API_URL) or DEFAULT_API_URL
        self._t = Transport(api_url, api_key, timeout=request_timeout,
                            max_retries=max_retries)
        self._languages = {}
        self._lock = threading.Lock()

    @property
    def api_url(self):
        return self._t.api_url

    def close(self):
        """Close idle connections (the client stays usable)."""
        self._t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "Client(api_url=%r)" % self.api_url

    # -- plumbing shared with Sandbox and WarmPool --------------------------

    def _request(self, method, path, **kw):
        return self._t.request(method, path, **kw)

    def _json(self, method, path, **kw):
        return self._t.request(method, path, **kw).json()

    def _websocket(self, path, timeout):
        """A connected WebSocket (websocket-client) to ``path`` below
        /api/v1, the key in the Authorization header (never in the
        URL, where logs could catch it)."""
        import websocket

        t = self._t
        url = "%s://%s:%d%s%s" % ("wss" if t.scheme == "https" else "ws",
                                  t.host, t.port, t.prefix, path)
        try:
            return websocket.create_connection(
                url, timeout=timeout, enable_multithread=True,
                header=["Authorization: Bearer " + t.api_key,
                        "User-Agent: " + USER_AGENT],
                suppress_origin=True)
        except websocket.WebSocketBadStatusException as e:
            headers = e.resp_headers or {}
            raise errors.error_from_response(
                e.status_code, headers,
                b'{"error": {"message": "WebSocket handshake refused: '
                b'HTTP %d"}}' % e.status_code) from e
        except websocket.WebSocketTimeoutException as e:
            raise errors.TimeoutError(
                "no WebSocket handshake with %s within %ss"
                % (t.api_url, timeout)) from e
        except (websocket.WebSocketException, OSError) as e:
            raise errors.ServerUnavailableError(
                "cannot open a WebSocket to %s: %s" % (t.api_url, e)) from e

    def _language_of(self, runtime):
        """The default language of a runtime (``python:3.11`` → python),
        asked once per runtime name; None when it cannot be known (the
        sandbox then uses its own default)."""
        if not runtime:
            return None
        with self._lock:
            if runtime in self._languages:
                return self._languages[runtime]
        try:
            lang = self.runtime(runtime).language
        except errors.LLMSafeSpaceError:
            return None
        with self._lock:
            self._languages[runtime] = lang
        return lang

    # -- sandboxes ------------------------------------------------------

    def sandbox(self, runtime, **kwargs):
        """Create a sandbox with this client: ``Sandbox(runtime, client=
        self, ...)``."""
        from .sandbox import Sandbox
        return Sandbox(runtime, client=self, **kwargs)

    def connect(self, sandbox_id):
        from .sandbox import Sandbox
        return Sandbox.connect(sandbox_id, client=self)

    def list_sandboxes(self, **kwargs):
        from .sandbox import Sandbox
        return Sandbox.list(client=self, **kwargs)

    # -- runtimes and profiles --------------------------------------------

    def runtimes(self):
        doc = self._json("GET", "/runtimes")
        return [Runtime.from_api(r) for r in doc.get("runtimes", [])]

    def runtime(self, name):
        """One runtime by its name (``python:3.11``) or short form
        (``python``)."""
        return Runtime.from_api(self._json("GET", "/runtimes/" + _seg(name)))

    def profiles(self):
        doc = self._json("GET", "/profiles")
        return [Profile.from_api(p) for p in doc.get("profiles", [])]

    def profile(self, name):
        return Profile.from_api(self._json("GET", "/profiles/" + _seg(name)))

    # -- warm pools (admin) -----------------------------------------------

    def warm_pools(self):
        from .warmpool import WarmPool
        return WarmPool.list(client=self)

    def warm_pool(self, pool_id):
        from .warmpool import WarmPool
        return WarmPool.get(pool_id, client=self)

    def create_warm_pool(self, name, runtime, **kwargs):
        from .warmpool import WarmPool
        return WarmPool.create(name, runtime, client=self, **kwargs)

    # -- users and keys -----------------------------------------------------

    def whoami(self):
        """``GET /user``: ``{"id", "name", "role", "keyId"}``."""
        return self._json("GET", "/user")

    def create_user(self, name, role="user"):
        """(admin) Create a user; answers ``(user, api_key)``, the key
        being the only copy of its secret."""
        doc = self._json("POST", "/users",
                         json_body={"name": name, "role": role})
        return doc["user"], doc["apiKey"]["key"]

    def delete_user(self, user_id):
        """(admin) Delete a user and revoke its keys."""
        return self._json("DELETE", "/users/" + _seg(user_id))

    def create_api_key(self, name=None):
        """A new key of the caller's own; answers the key object, whose
        ``key`` is the secret, shown this once."""
        body = {"name": name} if name else {}
        return self._json("POST", "/user/apikeys", json_body=body)

    def revoke_api_key(self, key_id):
        return self._json("DELETE", "/user/apikeys/" + _seg(key_id))


def _seg(value):
    """One path segment: an id or a name, escaped so it cannot reach
    another route."""
    import urllib.parse
    return urllib.parse.quote(str(value), safe="")


_default = None
_default_lock = threading.Lock()


def client_for(client=None, api_key=None, api_url=None):
    """The client to use: the one given, else one made from the given key
    and URL, else (no key, no URL given) one shared client made from the
    environment, so that connections are reused across sandboxes."""
    global _default
    if client is not None:
        return client
    if api_key or api_url:
        return Client(api_key=api_key, api_url=api_url)
    with _default_lock:
        env = (os.environ.get(ENV_API_KEY), os.environ.get(ENV_API_URL))
        if _default is None or _default[0] != env:
            _default = (env, Client())
        return _default[1]
