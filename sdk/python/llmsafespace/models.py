"""The objects the API answers, as plain Python objects with snake_case
attributes. Each keeps the document it was made from in ``raw``, so a
field the SDK does not know yet is still reachable."""

import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


def _time(value):
    """ISO 8601 from the API (``2026-11-24T00:16:04Z``) as an aware
    datetime; None stays None, anything unparsable is kept as given."""
    if not isinstance(value, str):
        return value
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value


@dataclass
class Usage:
    cpu_time_ms: Optional[int] = None
    wall_time_ms: Optional[int] = None
    max_rss_kb: Optional[int] = None

    @classmethod
    def from_api(cls, d):
        if not isinstance(d, dict):
            return None
        return cls(cpu_time_ms=d.get("cpuTimeMs"),
                   wall_time_ms=d.get("wallTimeMs"),
                   max_rss_kb=d.get("maxRssKb"))


@dataclass
class ExecutionResult:
    """What an execution (code, command, or a package install) produced.

    ``status`` is ``completed`` (exit code 0), ``failed`` (non-zero exit,
    killed at the output cap, or could not start: ``error`` says why),
    ``timeout`` or ``cancelled``. ``success`` is ``status ==
    "completed"``. ``execution_time`` is the wall time in seconds as the
    sandbox measured it. ``truncated`` means some output was dropped at
    the sandbox's output cap."""

    stdout: str
    stderr: str
    exit_code: Optional[int]
    execution_time: float
    success: bool
    truncated: bool = False
    status: str = "completed"
    execution_id: Optional[str] = None
    usage: Optional[Usage] = None
    started_at: Any = None
    completed_at: Any = None
    error: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d, stdout=None, stderr=None):
        usage = Usage.from_api(d.get("usage"))
        started, completed = _time(d.get("startedAt")), \
            _time(d.get("completedAt"))
        if usage is not None and usage.wall_time_ms is not None:
            seconds = usage.wall_time_ms / 1000.0
        elif isinstance(started, datetime.datetime) and \
                isinstance(completed, datetime.datetime):
            seconds = (completed - started).total_seconds()
        else:
            seconds = 0.0
        status = d.get("status") or "failed"
        error = d.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("code")
        return cls(
            stdout=d.get("stdout", "") if stdout is None else stdout,
            stderr=d.get("stderr", "") if stderr is None else stderr,
            exit_code=d.get("exitCode"),
            execution_time=seconds,
            success=status == "completed",
            truncated=bool(d.get("truncated")),
            status=status,
            execution_id=d.get("executionId"),
            usage=usage,
            started_at=started,
            completed_at=completed,
            error=error,
            raw=d)


@dataclass
class OutputEvent:
    """One message of a streamed execution.

    ``type`` is the protocol's: ``execution_start``, ``output``,
    ``error`` (``code`` ``execution_timeout`` when the execution ran out
    of time), ``execution_cancelled`` and, always last,
    ``execution_complete``. For ``output``, ``stream`` is ``stdout`` or
    ``stderr`` and ``content`` the text; other types have ``stream``
    None and ``content`` "" (``error`` carries its message)."""

    type: str
    stream: Optional[str] = None
    content: str = ""
    execution_id: Optional[str] = None
    timestamp: Any = None
    code: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        t = d.get("type")
        content = d.get("content") if t == "output" else d.get("message")
        return cls(type=t, stream=d.get("stream") if t == "output" else None,
                   content=content if isinstance(content, str) else "",
                   execution_id=d.get("executionId"),
                   timestamp=d.get("timestamp"), code=d.get("code"), data=d)

    def __str__(self):
        return self.content


@dataclass
class FileInfo:
    name: str
    path: str
    size: int
    mode: int
    mod_time: Any
    is_dir: bool
    is_symlink: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        return cls(name=d.get("name"), path=d.get("path"),
                   size=d.get("size", 0), mode=d.get("mode", 0),
                   mod_time=_time(d.get("modTime")),
                   is_dir=bool(d.get("isDir")),
                   is_symlink=bool(d.get("isSymlink")), raw=d)


@dataclass
class UploadResult:
    path: str
    size: int
    created_at: Any = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        d = d or {}
        return cls(path=d.get("path"), size=d.get("size"),
                   created_at=_time(d.get("createdAt")), raw=d)


@dataclass
class SandboxInfo:
    """The sandbox object of the API (``GET /sandboxes/{id}``)."""

    id: str
    phase: Optional[str] = None
    reason: Optional[str] = None
    message: Optional[str] = None
    runtime: Optional[str] = None
    security_level: Optional[str] = None
    timeout: Optional[int] = None
    resources: Dict[str, Any] = field(default_factory=dict)
    network_access: Dict[str, Any] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    pool: Optional[str] = None
    user: Optional[str] = None
    created_at: Any = None
    started_at: Any = None
    expires_at: Any = None
    terminated_at: Any = None
    endpoints: Dict[str, str] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        return cls(id=d.get("id"), phase=d.get("phase"),
                   reason=d.get("reason"), message=d.get("message"),
                   runtime=d.get("runtime"),
                   security_level=d.get("securityLevel"),
                   timeout=d.get("timeout"),
                   resources=d.get("resources") or {},
                   network_access=d.get("networkAccess") or {},
                   labels=d.get("labels") or {}, pool=d.get("pool"),
                   user=d.get("user"), created_at=_time(d.get("createdAt")),
                   started_at=_time(d.get("startedAt")),
                   expires_at=_time(d.get("expiresAt")),
                   terminated_at=_time(d.get("terminatedAt")),
                   endpoints=d.get("endpoints") or {}, raw=d)


@dataclass
class Condition:
    type: str
    status: str
    reason: Optional[str] = None
    message: Optional[str] = None
    last_transition_time: Any = None

    @classmethod
    def from_api(cls, d):
        return cls(type=d.get("type"), status=d.get("status"),
                   reason=d.get("reason"), message=d.get("message"),
                   last_transition_time=_time(d.get("lastTransitionTime")))


def _conditions(value):
    return [Condition.from_api(c) for c in value or []
            if isinstance(c, dict)]


@dataclass
class SandboxStatus:
    """``GET /sandboxes/{id}/status``."""

    id: str
    phase: Optional[str] = None
    reason: Optional[str] = None
    message: Optional[str] = None
    conditions: List[Condition] = field(default_factory=list)
    started_at: Any = None
    expires_at: Any = None
    resources: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        return cls(id=d.get("id"), phase=d.get("phase"),
                   reason=d.get("reason"), message=d.get("message"),
                   conditions=_conditions(d.get("conditions")),
                   started_at=_time(d.get("startedAt")),
                   expires_at=_time(d.get("expiresAt")),
                   resources=d.get("resources") or {}, raw=d)


@dataclass
class Runtime:
    name: str
    version: Optional[str] = None
    language: Optional[str] = None
    languages: List[str] = field(default_factory=list)
    description: Optional[str] = None
    image: Optional[str] = None
    preinstalled_packages: List[str] = field(default_factory=list)
    package_managers: List[str] = field(default_factory=list)
    security_levels: List[str] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        return cls(name=d.get("name"), version=d.get("version"),
                   language=d.get("language"),
                   languages=d.get("languages") or [],
                   description=d.get("description"), image=d.get("image"),
                   preinstalled_packages=d.get("preinstalledPackages") or [],
                   package_managers=d.get("packageManagers") or [],
                   security_levels=d.get("securityLevels") or [], raw=d)


@dataclass
class Profile:
    name: str
    description: Optional[str] = None
    security_level: Optional[str] = None
    network_access: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        return cls(name=d.get("name"), description=d.get("description"),
                   security_level=d.get("securityLevel"),
                   network_access=d.get("networkAccess") or {}, raw=d)


@dataclass
class WarmPoolStatus:
    """``GET /warmpools/{id}/status``."""

    available_pods: int = 0
    assigned_pods: int = 0
    pending_pods: int = 0
    last_scale_time: Any = None
    conditions: List[Condition] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, d):
        d = d if isinstance(d, dict) else {}
        return cls(available_pods=d.get("availablePods") or 0,
                   assigned_pods=d.get("assignedPods") or 0,
                   pending_pods=d.get("pendingPods") or 0,
                   last_scale_time=_time(d.get("lastScaleTime")),
                   conditions=_conditions(d.get("conditions")), raw=d)
