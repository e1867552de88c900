"""Warm pools (admin): sandboxes of one runtime kept started, so that a
create is a claim."""

from . import errors
from .client import _seg, client_for
from .models import WarmPoolStatus, _time


class WarmPool:
    """A warm pool. Make one with :meth:`create`, find them with
    :meth:`list` / :meth:`get`; change it with :meth:`update`, remove it
    with :meth:`delete`. Every call needs an admin key.

    Attributes mirror the API object: ``id`` (``wp-…``), ``name``,
    ``runtime``, ``min_size``, ``max_size``, ``security_level``,
    ``preload_packages``, ``preload_scripts`` (``[{"name", "content"}]``),
    ``auto_scaling`` (``{"enabled", "targetUtilization",
    "scaleDownDelay"}``), ``source`` (``api`` or ``manifest``: manifest
    pools cannot be changed through the API), ``created_at``,
    ``updated_at``, and ``raw``."""

    def __init__(self, client, doc):
        self._client = client
        self._load(doc)

    def _load(self, doc):
        self.raw = doc
        self.id = doc.get("id")
        self.name = doc.get("name")
        self.runtime = doc.get("runtime")
        self.min_size = doc.get("minSize")
        self.max_size = doc.get("maxSize")
        self.security_level = doc.get("securityLevel")
        self.preload_packages = doc.get("preloadPackages") or []
        self.preload_scripts = doc.get("preloadScripts") or []
        self.auto_scaling = doc.get("autoScaling") or {}
        self.source = doc.get("source")
        self.created_at = _time(doc.get("createdAt"))
        self.updated_at = _time(doc.get("updatedAt"))

    def __repr__(self):
        return "WarmPool(name=%r, runtime=%r, min_size=%r, max_size=%r)" % (
            self.name, self.runtime, self.min_size, self.max_size)

    @classmethod
    def create(cls, name, runtime, min_size=1, max_size=None,
               security_level="standard", preload_packages=None,
               preload_scripts=None, auto_scaling=None, api_key=None,
               api_url=None, client=None):
        """Create a pool; the controller starts ``min_size`` sandboxes for
        it. ``max_size`` defaults to ``min_size``."""
        client = client_for(client, api_key, api_url)
        body = {"name": name, "runtime": runtime, "minSize": int(min_size),
                "maxSize": int(max_size if max_size is not None
                               else min_size),
                "securityLevel": security_level}
        _fill(body, preload_packages, preload_scripts, auto_scaling)
        return cls(client, client._json("POST", "/warmpools",
                                        json_body=body))

    @classmethod
    def list(cls, api_key=None, api_url=None, client=None):
        client = client_for(client, api_key, api_url)
        doc = client._json("GET", "/warmpools")
        return [cls(client, d) for d in doc.get("warmPools", [])]

    @classmethod
    def get(cls, pool_id, api_key=None, api_url=None, client=None):
        """A pool by its ``wp-…`` id or its name."""
        client = client_for(client, api_key, api_url)
        return cls(client, client._json("GET", "/warmpools/" + _seg(pool_id)))

    def _p(self, tail=""):
        return "/warmpools/" + _seg(self.id or self.name) + tail

    def refresh(self):
        self._load(self._client._json("GET", self._p()))
        return self

    def update(self, min_size=None, max_size=None, preload_packages=None,
               preload_scripts=None, auto_scaling=None):
        """Change the given fields (the others stay)."""
        body = {}
        if min_size is not None:
            body["minSize"] = int(min_size)
        if max_size is not None:
            body["maxSize"] = int(max_size)
        _fill(body, preload_packages, preload_scripts, auto_scaling)
        if not body:
            raise ValueError("nothing to update")
        self._load(self._client._json("PATCH", self._p(), json_body=body))
        return self

    def delete(self):
        """Remove the pool: its unclaimed sandboxes are retired, claimed
        ones stay with their owners. A pool already gone is fine."""
        try:
            self._client._request("DELETE", self._p())
        except errors.NotFoundError:
            pass

    def status(self):
        """Available, assigned and pending sandboxes, as the controller
        last reported them."""
        return WarmPoolStatus.from_api(
            self._client._json("GET", self._p("/status")))


def _fill(body, preload_packages, preload_scripts, auto_scaling):
    if preload_packages is not None:
        body["preloadPackages"] = list(preload_packages)
    if preload_scripts is not None:
        body["preloadScripts"] = [dict(s) for s in preload_scripts]
    if auto_scaling is not None:
        a = dict(auto_scaling)
        for snake, camel in (("target_utilization", "targetUtilization"),
                             ("scale_down_delay", "scaleDownDelay")):
            if snake in a:
                a[camel] = a.pop(snake)
        body["autoScaling"] = a
