"""Streamed executions over the sandbox's WebSocket
(``/api/v1/sandboxes/{id}/stream``).

Each :class:`Stream` has its own WebSocket connection carrying one
execution, so that closing it (or the program dying) cancels exactly that
execution: the runner cancels a closed socket's executions.
"""

import json
import secrets
import threading

from . import errors
from .models import ExecutionResult, OutputEvent

# errors the runner gives for a refused execute message: the request was
# wrong, as a 422 would say on POST /execute
_REFUSED = ("invalid_request", "invalid_message", "unknown_message_type")


def new_execution_id():
    return "sdk-" + secrets.token_hex(10)


class Stream:
    """One streamed execution: iterate it for :class:`OutputEvent`\\ s, in
    the order the sandbox sent them; iteration ends after the
    ``execution_complete`` event, and :attr:`result` then holds the
    :class:`ExecutionResult` (with all of stdout and stderr).

    ``send_stdin`` and ``cancel`` may be called between events or from
    another thread while one thread iterates. Stdin stays open until
    ``send_stdin(..., eof=True)`` or ``close_stdin()`` (or when the stream
    was started with ``stdin=``, which is sent and closed at once).

    Use it as a context manager, or call :meth:`close`: closing before the
    end cancels the execution.
    """

    def __init__(self, ws, message, stdin=None, recv_timeout=None):
        self._ws = ws
        self.execution_id = message["executionId"]
        self.result = None
        self._out = {"stdout": [], "stderr": []}
        self._started = False
        self._done = False
        self._closed = False
        self._lock = threading.Lock()
        self._recv_timeout = recv_timeout
        try:
            self._send(message)
            if stdin is not None:
                self.send_stdin(stdin, eof=True)
        except BaseException:
            self.close()
            raise

    # -- client to sandbox ------------------------------------------------

    def _send(self, message):
        import websocket
        if self._closed:
            raise errors.LLMSafeSpaceError(
                "the stream of execution %s is closed" % self.execution_id)
        try:
            self._ws.send(json.dumps(message))
        except (websocket.WebSocketException, OSError) as e:
            self.close()
            raise errors.ServerUnavailableError(
                "the stream's connection was lost: %s" % e) from e

    def send_stdin(self, text, eof=False):
        """Write ``text`` (str) to the execution's stdin; ``eof=True``
        closes stdin after it."""
        msg = {"type": "stdin", "executionId": self.execution_id,
               "content": text}
        if eof:
            msg["eof"] = True
        self._send(msg)

    def close_stdin(self):
        self.send_stdin("", eof=True)

    def cancel(self):
        """Ask the sandbox to stop the execution. The events that follow
        are ``execution_cancelled`` and ``execution_complete`` (status
        ``cancelled``). Does nothing once the execution completed."""
        if self._done or self._closed:
            return
        self._send({"type": "cancel", "executionId": self.execution_id})

    # -- sandbox to client ------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._done or self._closed:
                raise StopIteration
            msg = self._recv()
            t = msg.get("type")
            eid = msg.get("executionId")
            if t == "pong" or (eid is not None and eid != self.execution_id):
                continue
            if t == "error" and not self._started and \
                    msg.get("code") in _REFUSED:
                self.close()
                raise errors.ValidationError(
                    msg.get("message") or "execution refused",
                    code=msg.get("code"), details=msg.get("details"))
            event = OutputEvent.from_api(msg)
            if t == "execution_start":
                self._started = True
            elif t == "output" and event.stream in self._out:
                self._out[event.stream].append(event.content)
            elif t == "execution_complete":
                self.result = ExecutionResult.from_api(
                    msg, stdout="".join(self._out["stdout"]),
                    stderr="".join(self._out["stderr"]))
                self.result.execution_id = self.execution_id
                self._done = True
                self.close()
            return event

    def _recv(self):
        import websocket
        try:
            if self._recv_timeout is not None:
                self._ws.settimeout(self._recv_timeout)
            data = self._ws.recv()
        except websocket.WebSocketTimeoutException as e:
            self.close()
            raise errors.TimeoutError(
                "no message from execution %s within %ss"
                % (self.execution_id, self._recv_timeout)) from e
        except (websocket.WebSocketException, OSError) as e:
            self.close()
            raise errors.ServerUnavailableError(
                "the stream closed before execution %s completed: %s"
                % (self.execution_id, e)) from e
        if not data:
            self.close()
            raise errors.ServerUnavailableError(
                "the stream closed before execution %s completed"
                % self.execution_id)
        try:
            msg = json.loads(data)
        except ValueError as e:
            self.close()
            raise errors.LLMSafeSpaceError(
                "the stream sent something that is not JSON") from e
        if not isinstance(msg, dict):
            self.close()
            raise errors.LLMSafeSpaceError(
                "the stream sent a message that is not an object")
        return msg

    def wait(self):
        """Read the remaining events and answer the
        :class:`ExecutionResult`."""
        for _ in self:
            pass
        if self.result is None:
            raise errors.LLMSafeSpaceError(
                "the stream of execution %s was closed before it completed"
                % self.execution_id)
        return self.result

    @property
    def done(self):
        return self._done

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._ws.close(timeout=2)
        except Exception:
            # closing is best effort: the connection may be gone already
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
