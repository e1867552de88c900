"""A sandbox: create (from a warm pool when one matches), execute, stream,
files, packages, terminate."""

import os
import secrets
import time
import urllib.parse

from . import errors
from ._transport import content_length
from .client import _seg, client_for
from .models import (ExecutionResult, FileInfo, SandboxInfo, SandboxStatus,
                     UploadResult)
from .stream import Stream, new_execution_id

# the longest ?wait= the API takes is 120 s; a shorter hold leaves room
# for polling with a fresh connection if a proxy drops slow answers
_CREATE_WAIT_MAX = 60
# an execution's own timeout is enforced inside the sandbox; the client
# waits that long plus this margin before it gives up on the answer
_EXEC_MARGIN = 30
# when no execution timeout is given the sandbox uses its default, at
# most its maximum (300 s for the shipped runtimes)
_EXEC_DEFAULT_WAIT = 300
_CHUNK = 1 << 20
_FINAL = ("Terminated", "Failed")


class SandboxList(list):
    """A list of :class:`Sandbox` with ``total``, the number of sandboxes
    that matched (all pages)."""

    total = 0


class Sandbox:
    """A sandbox of the caller's.

    ``Sandbox(runtime, ...)`` creates one and returns when it is
    ``Running``: claimed at once from a warm pool when one matches (same
    runtime and security level, at least the resources asked, no egress
    or profile asked), else started cold; the SDK then waits (``?wait=``, then polling) up to
    ``create_timeout`` seconds. A sandbox that fails to start raises
    :class:`~llmsafespace.SandboxError`; one that is still not running
    after ``create_timeout`` is terminated and raises
    :class:`~llmsafespace.TimeoutError`.

    ``timeout`` is the sandbox's lifetime in seconds (it is terminated
    after it). Use it as a context manager: the sandbox is terminated on
    exit. ``Sandbox.connect(id)`` attaches to an existing one.
    """

    def __init__(self, runtime, api_key=None, api_url=None, timeout=300,
                 security_level="standard", resources=None,
                 network_access=None, use_warm_pool=True, labels=None,
                 profile_ref=None, create_timeout=120, client=None):
        self._client = client_for(client, api_key, api_url)
        body = {"runtime": runtime, "useWarmPool": bool(use_warm_pool)}
        if timeout is not None:
            body["timeout"] = int(timeout)
        if security_level is not None:
            body["securityLevel"] = security_level
        if resources:
            body["resources"] = _camel(resources)
        if network_access:
            body["networkAccess"] = _camel(network_access)
        if labels:
            body["labels"] = dict(labels)
        if profile_ref:
            body["profileRef"] = profile_ref
        self._info = None
        self._set(self._create(body, create_timeout))

    # -- creating and attaching ---------------------------------------------

    def _create(self, body, create_timeout):
        deadline = time.monotonic() + create_timeout
        wait = max(0, min(_CREATE_WAIT_MAX, int(create_timeout)))
        resp = self._client._request(
            "POST", "/sandboxes", query={"wait": wait}, json_body=body,
            # the gateway may hold the answer for `wait` seconds
            timeout=max(self._client._t.timeout, wait + 15))
        info = SandboxInfo.from_api(resp.json())
        pause = 0.1
        while info.phase != "Running":
            if info.phase in _FINAL:
                raise errors.SandboxError(
                    "sandbox %s did not start: %s%s"
                    % (info.id, info.reason or info.phase,
                       " (%s)" % info.message if info.message else ""),
                    sandbox_id=info.id, phase=info.phase, reason=info.reason)
            if time.monotonic() >= deadline:
                # nobody holds a handle on it: do not leave it running
                # against the caller's quota
                try:
                    self._client._request("DELETE", "/sandboxes/" + info.id)
                except errors.LLMSafeSpaceError:
                    pass
                raise errors.TimeoutError(
                    "sandbox %s was still %s after %ss; it was terminated"
                    % (info.id, info.phase, create_timeout))
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 2.0)
            info = SandboxInfo.from_api(
                self._client._json("GET", "/sandboxes/" + _seg(info.id)))
        return info

    @classmethod
    def _attach(cls, client, info):
        self = cls.__new__(cls)
        self._client = client
        self._info = None
        self._set(info)
        return self

    @classmethod
    def connect(cls, sandbox_id, api_key=None, api_url=None, client=None):
        """Attach to an existing sandbox by id. Raises
        :class:`~llmsafespace.NotFoundError` for an unknown id (or another
        user's)."""
        client = client_for(client, api_key, api_url)
        doc = client._json("GET", "/sandboxes/" + _seg(sandbox_id))
        return cls._attach(client, SandboxInfo.from_api(doc))

    @classmethod
    def list(cls, api_key=None, api_url=None, phase=None, labels=None,
             user=None, limit=None, offset=None, client=None):
        """The caller's sandboxes (an admin's: everybody's, or ``user``'s),
        newest first. ``phase`` is one phase or a list; ``labels`` a dict
        that must all match. Answers a :class:`SandboxList`."""
        client = client_for(client, api_key, api_url)
        if isinstance(phase, (list, tuple)):
            phase = ",".join(phase)
        query = [("phase", phase), ("user", user), ("limit", limit),
                 ("offset", offset)]
        for k, v in (labels or {}).items():
            query.append(("label", "%s=%s" % (k, v)))
        doc = client._json("GET", "/sandboxes", query=query)
        out = SandboxList(cls._attach(client, SandboxInfo.from_api(d))
                          for d in doc.get("sandboxes", []))
        out.total = doc.get("total", len(out))
        return out

    def _set(self, info):
        self._info = info
        self.id = info.id

    # -- state ----------------------------------------------------------

    @property
    def info(self):
        """The sandbox object as last fetched (see :meth:`refresh`)."""
        return self._info

    @property
    def runtime(self):
        return self._info.runtime

    @property
    def phase(self):
        """The phase as last fetched; :meth:`refresh` asks again."""
        return self._info.phase

    @property
    def client(self):
        return self._client

    def refresh(self):
        """Fetch the sandbox object again; answers the
        :class:`SandboxInfo`."""
        self._set(SandboxInfo.from_api(self._client._json("GET", self._p())))
        return self._info

    def status(self):
        """``GET /sandboxes/{id}/status``: phase, conditions, resources."""
        return SandboxStatus.from_api(
            self._client._json("GET", self._p("/status")))

    def terminate(self, wait=False, timeout=60):
        """Terminate the sandbox. Idempotent: a sandbox already terminated
        answers its record. With ``wait=True``, poll until the controller
        reports it ``Terminated`` (or ``Failed``), up to ``timeout``
        seconds. Answers the :class:`SandboxInfo`."""
        info = SandboxInfo.from_api(
            self._client._json("DELETE", self._p()))
        deadline = time.monotonic() + timeout
        while wait and info.phase not in _FINAL:
            if time.monotonic() >= deadline:
                raise errors.TimeoutError(
                    "sandbox %s still %s after %ss"
                    % (self.id, info.phase, timeout))
            time.sleep(0.2)
            info = SandboxInfo.from_api(self._client._json("GET", self._p()))
        self._set(info)
        return info

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.terminate()
        except errors.NotFoundError:
            pass
        except errors.LLMSafeSpaceError:
            # an error inside the block is the one to report
            if exc_type is None:
                raise

    def __repr__(self):
        return "Sandbox(id=%r, runtime=%r, phase=%r)" % (
            self.id, self._info.runtime, self._info.phase)

    def _p(self, tail=""):
        return "/sandboxes/" + _seg(self.id) + tail

    # -- execution ------------------------------------------------------

    def _execute(self, body, timeout):
        wait = (timeout or _EXEC_DEFAULT_WAIT) + _EXEC_MARGIN
        doc = self._client._json("POST", self._p("/execute"),
                                 json_body=body, timeout=wait)
        return ExecutionResult.from_api(doc)

    def _code_body(self, code, language, timeout, env, working_dir,
                   context):
        language = language or self._client._language_of(self._info.runtime)
        body = {"type": "code", "content": code}
        if language:
            body["language"] = language
        _options(body, timeout, env, working_dir)
        if context:
            body["context"] = context
        return body

    def _command_body(self, command, args, timeout, env, working_dir):
        body = {"type": "command"}
        if isinstance(command, (list, tuple)):
            if args:
                raise ValueError("give the argv as a list or args=, "
                                 "not both")
            body["args"] = [str(a) for a in command]
        elif args is not None:
            body["args"] = [command] + [str(a) for a in args]
        else:
            body["content"] = command
        _options(body, timeout, env, working_dir)
        return body

    def run_code(self, code, language=None, timeout=None, env=None,
                 stdin=None, working_dir=None, context=None):
        """Run ``code`` and answer its :class:`ExecutionResult`.

        ``language`` defaults to the runtime's (python for ``python``);
        ``timeout`` is the execution's limit in seconds (the sandbox's
        default when None); ``env`` a dict of variables; ``stdin`` a
        string given to the program, then end of file; ``working_dir``
        relative to the workspace; ``context`` a name whose Python state
        survives between executions (a notebook kernel). An execution
        that times out is a result with ``status`` ``"timeout"``, not an
        exception."""
        body = self._code_body(code, language, timeout, env, working_dir,
                               context)
        if stdin is not None:
            body["stdin"] = stdin
        return self._execute(body, timeout)

    def run_command(self, command, args=None, timeout=None, env=None,
                    stdin=None, working_dir=None):
        """Run a command and answer its :class:`ExecutionResult`.

        A string without ``args`` runs with ``/bin/sh -c``. A list (or a
        string with ``args``) is the argv itself, run without any shell:
        nothing in it is interpreted, so untrusted values belong there."""
        body = self._command_body(command, args, timeout, env, working_dir)
        if stdin is not None:
            body["stdin"] = stdin
        return self._execute(body, timeout)

    def _stream(self, body, stdin, timeout):
        # the stream's execute message names the kind "mode"
        body = dict(body, mode=body["type"], type="execute",
                    executionId=new_execution_id())
        recv = (timeout or _EXEC_DEFAULT_WAIT) + _EXEC_MARGIN
        ws = self._client._websocket(self._p("/stream"),
                                     self._client._t.timeout)
        return Stream(ws, body, stdin=stdin, recv_timeout=recv)

    def stream_code(self, code, language=None, timeout=None, env=None,
                    stdin=None, working_dir=None, context=None):
        """Start ``code`` and answer a :class:`~llmsafespace.Stream` of its
        output events (see :meth:`run_code` for the arguments). Stdin
        stays open for :meth:`Stream.send_stdin` unless ``stdin`` is
        given, which is sent and then closed."""
        body = self._code_body(code, language, timeout, env, working_dir,
                               context)
        return self._stream(body, stdin, timeout)

    def stream_command(self, command, args=None, timeout=None, env=None,
                       stdin=None, working_dir=None):
        """:meth:`run_command`, streamed: answers a
        :class:`~llmsafespace.Stream`."""
        body = self._command_body(command, args, timeout, env, working_dir)
        return self._stream(body, stdin, timeout)

    def install(self, packages, manager="pip", timeout=None):
        """Install packages into the sandbox's workspace
        (``.packages/``), where later executions find them. Answers the
        install's :class:`ExecutionResult`: a package that cannot be
        found (no network, no such name) is a result with ``success``
        False and pip's or npm's message in ``stderr``."""
        if isinstance(packages, str):
            packages = [packages]
        body = {"packages": list(packages), "manager": manager}
        doc = self._client._json(
            "POST", self._p("/packages"), json_body=body,
            timeout=(timeout or _EXEC_DEFAULT_WAIT) + _EXEC_MARGIN)
        return ExecutionResult.from_api(doc)

    # -- files ------------------------------------------------------------

    def _fp(self, path):
        return self._p("/files/" + _file_path(path))

    def upload_file(self, source, remote_path, timeout=None):
        """Upload ``source`` to ``remote_path`` (relative to the
        workspace; ``/workspace/...`` means the same). ``source`` is a
        local path (a str or a path object: the file is streamed from
        disk), the content as bytes, or a binary file object (streamed;
        sent chunked when its size cannot be known).
        The directory must exist (see :meth:`make_dir`); an existing file
        is replaced only once the upload is complete. Answers an
        :class:`UploadResult`."""
        headers = {"Content-Type": "application/octet-stream"}
        timeout = timeout or max(self._client._t.timeout, 300)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                headers["Content-Length"] = str(os.fstat(f.fileno()).st_size)
                resp = self._client._request("PUT", self._fp(remote_path),
                                             body=f, headers=headers,
                                             timeout=timeout)
        else:
            if isinstance(source, (bytes, bytearray, memoryview)):
                headers["Content-Length"] = str(len(source))
            else:
                n = content_length(source)
                if n is not None:
                    headers["Content-Length"] = str(n)
            resp = self._client._request("PUT", self._fp(remote_path),
                                         body=source, headers=headers,
                                         timeout=timeout)
        return UploadResult.from_api(resp.json())

    def open_file(self, remote_path, timeout=None):
        """A file of the sandbox as a readable binary stream
        (``.read(n)``, ``.iter_chunks()``, ``.length``); close it (or use
        ``with``) when done."""
        return self._client._request("GET", self._fp(remote_path),
                                     stream=True, timeout=timeout)

    def download_file(self, remote_path, local_path=None, timeout=None):
        """Download a file. With ``local_path`` (a file, or a directory to
        put it in) it is streamed to disk piece by piece, written to a
        temporary file beside the target and renamed into place when
        complete; answers the path written. Without, answers the content
        as bytes (in memory: meant for small files)."""
        with self.open_file(remote_path, timeout=timeout) as body:
            if local_path is None:
                return body.read()
            local_path = os.fspath(local_path)
            if os.path.isdir(local_path):
                name = os.path.basename(str(remote_path).rstrip("/"))
                local_path = os.path.join(local_path, name)
            # a name of its own per download ("x": created, never an
            # existing file), so two downloads to one path never share
            # it; the mode follows the umask like any new file
            tmp = "%s.part-%s" % (local_path, secrets.token_hex(6))
            try:
                with open(tmp, "xb") as out:
                    for chunk in body.iter_chunks(_CHUNK):
                        out.write(chunk)
                if body.length is not None and \
                        os.path.getsize(tmp) != body.length:
                    raise errors.ServerUnavailableError(
                        "download of %s ended early" % remote_path)
                os.replace(tmp, local_path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        return local_path

    def list_files(self, path=""):
        """The entries of a directory of the workspace (its root by
        default), as :class:`FileInfo`."""
        doc = self._client._json("GET", self._p("/files"),
                                 query={"path": path or "."})
        if isinstance(doc, dict):
            doc = doc.get("files", [])
        return [FileInfo.from_api(e) for e in doc or []]

    def delete_file(self, path, recursive=False):
        """Delete a file, a link or an empty directory; a whole tree with
        ``recursive=True``."""
        self._client._request("DELETE", self._fp(path),
                              query={"recursive": 1} if recursive else None)

    def make_dir(self, path, parents=True):
        """Create a directory; with ``parents`` (the default) also the
        missing directories above it, and an existing one is fine."""
        parts = [p for p in _file_path(path).split("/") if p]
        if not parents:
            self._client._request("POST", self._fp(path),
                                  query={"mkdir": 1})
            return
        for i in range(1, len(parts) + 1):
            try:
                self._client._request(
                    "POST", self._p("/files/" + "/".join(parts[:i])),
                    query={"mkdir": 1})
            except errors.ConflictError as e:
                if e.phase is not None:
                    raise  # the sandbox is not running: not "it exists"


def _file_path(path):
    """A workspace path as the URL's tail: ``/workspace/a b`` and ``a b``
    both become ``a%20b``. Every other byte of the name is escaped, so a
    ``?`` or ``#`` in a file name stays part of it."""
    p = os.fspath(path)
    if p == "/workspace" or p.startswith("/workspace/"):
        p = p[len("/workspace"):]
    p = p.lstrip("/")
    if not p:
        raise ValueError("a file path is required")
    return urllib.parse.quote(p, safe="/")


def _options(body, timeout, env, working_dir):
    if timeout is not None:
        body["timeout"] = int(timeout)
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if working_dir:
        body["workingDir"] = working_dir


def _camel(obj):
    """Accept snake_case keys in the nested dicts the API takes
    (``ephemeral_storage`` → ``ephemeralStorage``)."""
    if isinstance(obj, dict):
        return {_camel_key(k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _camel_key(k):
    head, *rest = str(k).split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)
