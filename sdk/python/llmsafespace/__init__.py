"""Python SDK of LLMSafeSpace: run code written by LLM agents in isolated
sandboxes.

    from llmsafespace import Sandbox

    with Sandbox("python") as sb:
        print(sb.run_code("print(6 * 7)").stdout)

The key comes from ``api_key=`` or ``$LLMSAFESPACE_API_KEY``, the gateway's
URL from ``api_url=`` or ``$LLMSAFESPACE_API_URL`` (default
``http://127.0.0.1:8080``).
"""

from .client import Client
from .errors import (AuthenticationError, ConflictError, LLMSafeSpaceError,
                     NotFoundError, QuotaExceeded, RateLimitError,
                     SandboxError, ServerUnavailableError, TimeoutError,
                     ValidationError)
from .models import (Condition, ExecutionResult, FileInfo, OutputEvent,
                     Profile, Runtime, SandboxInfo, SandboxStatus,
                     UploadResult, Usage, WarmPoolStatus)
from .sandbox import Sandbox, SandboxList
from .stream import Stream
from .warmpool import WarmPool

__version__ = "0.1.0"


def list_runtimes(api_key=None, api_url=None):
    """The runtimes a sandbox may be created with."""
    from .client import client_for
    return client_for(None, api_key, api_url).runtimes()


__all__ = [
    "AuthenticationError", "Client", "Condition", "ConflictError",
    "ExecutionResult", "FileInfo", "LLMSafeSpaceError", "NotFoundError",
    "OutputEvent", "Profile", "QuotaExceeded", "RateLimitError", "Runtime",
    "Sandbox", "SandboxError", "SandboxInfo", "SandboxList", "SandboxStatus",
    "ServerUnavailableError", "Stream", "TimeoutError", "UploadResult",
    "Usage", "ValidationError", "WarmPool", "WarmPoolStatus",
    "list_runtimes", "__version__",
]
