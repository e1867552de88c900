"""Exceptions of the SDK, one class per kind of failure a caller handles
differently.

Every error the API answers is JSON, ``{"error": {"code", "message",
"details"}}``; :func:`error_from_response` turns it into the class of its
kind, keeping ``status``, ``code``, ``message`` and ``details``.

An execution that times out or fails inside the sandbox is *not* an
exception: it is an :class:`~llmsafespace.ExecutionResult` with ``status``
``"timeout"`` or ``"failed"``.
"""

import builtins
import json


class LLMSafeSpaceError(Exception):
    """Base of every SDK error.

    ``status`` is the HTTP status (``None`` when no answer came), ``code``
    the API's error code (``"not_found"``...), ``details`` its details
    object (a dict, maybe empty).
    """

    def __init__(self, message, status=None, code=None, details=None,
                 headers=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details if isinstance(details, dict) else {}
        self.headers = dict(headers or {})

    def __str__(self):
        parts = [self.message]
        if self.code:
            parts.append("(%s%s)" % (self.code, ", HTTP %d" % self.status
                                     if self.status else ""))
        return " ".join(parts)


class AuthenticationError(LLMSafeSpaceError):
    """401: no key, a malformed, unknown or revoked key; 403: the key's
    role may not use the route."""


class NotFoundError(LLMSafeSpaceError):
    """404: no such object. Another user's sandbox answers exactly like a
    missing one."""


class ConflictError(LLMSafeSpaceError):
    """409: the object is not in a state for this request (a sandbox that
    is not Running yet or any more: ``phase`` says which; a name taken;
    a directory not empty...)."""

    @property
    def phase(self):
        return self.details.get("phase")


class ValidationError(LLMSafeSpaceError):
    """400 / 422 (and 413): the request was refused for its content.
    ``field`` names the offending field when the API says which."""

    @property
    def field(self):
        return self.details.get("field")


class RateLimitError(LLMSafeSpaceError):
    """429: too many requests for the key's budget.

    ``retry_after`` is the number of seconds the API asks to wait (from
    ``Retry-After``), ``limit`` the budget (``RateLimit-Limit``), both
    ``None`` when the answer did not carry them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = _number(_header(self.headers, "Retry-After"))
        limit = _header(self.headers, "RateLimit-Limit")
        if limit is None:
            limit = self.details.get("limit")
        self.limit = _number(limit)
        self.reset = _number(_header(self.headers, "RateLimit-Reset")
                             or self.details.get("reset"))


class QuotaExceeded(LLMSafeSpaceError):
    """403 ``quota_exceeded``: the user already holds as many live
    sandboxes as allowed. ``limit`` and ``current`` come from the
    answer."""

    @property
    def limit(self):
        return self.details.get("limit")

    @property
    def current(self):
        return self.details.get("current")


class TimeoutError(LLMSafeSpaceError, builtins.TimeoutError):
    """The client gave up waiting: no answer within the request timeout,
    or a sandbox that did not start within ``create_timeout``. Also a
    :class:`builtins.TimeoutError`, so either name catches it."""


class ServerUnavailableError(LLMSafeSpaceError):
    """The API could not be reached (connection refused or reset) or
    answered 502 / 503 / 504: retry later."""


class SandboxError(LLMSafeSpaceError):
    """The sandbox failed: it ended in phase ``Failed`` (``reason`` says
    why, e.g. ``CreateFailed``), or went away while it was awaited."""

    def __init__(self, message, sandbox_id=None, phase=None, reason=None,
                 **kwargs):
        super().__init__(message, **kwargs)
        self.sandbox_id = sandbox_id
        self.phase = phase
        self.reason = reason


def _header(headers, name):
    name = name.lower()
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def _number(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else f


_BY_STATUS = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
    429: RateLimitError,
    502: ServerUnavailableError,
    503: ServerUnavailableError,
    504: ServerUnavailableError,
}


def error_from_response(status, headers, body):
    """The exception for an error answer: ``status`` (int), ``headers``
    (a mapping) and ``body`` (bytes, maybe truncated or not JSON)."""
    code = message = None
    details = {}
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message")
        if isinstance(err.get("details"), dict):
            details = err["details"]
    if not isinstance(message, str) or not message:
        # not the API's JSON (a proxy in between, a wrong URL): say what
        # came back rather than nothing
        text = body[:200].decode("utf-8", "replace").strip() if body else ""
        message = "HTTP %d%s" % (status, ": " + text if text else "")

    if status == 403 and code == "quota_exceeded":
        cls = QuotaExceeded
    else:
        cls = _BY_STATUS.get(status, LLMSafeSpaceError)
    return cls(message, status=status, code=code, details=details,
               headers=headers)
