"""The config in force, as the fleet's hubs see it: an etcd prefix, followed.

One idea: the dashboard is one more watcher of the prefix. ``ConfigView`` is
the ``ConfigTarget`` an ``EtcdSource`` drives (the hubs' own source, with
its reconnects and revision bookkeeping), so the page shows exactly what the
hubs were given and at which revision. What a hub would refuse is recorded
as rejected: a value that is not a JSON object (the source's
``reject_config``) and a breaker whose merged fields fail the schema (the
same check ``resilient config validate`` makes).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from resilient.config.etcd import EtcdSource

__all__ = ["ConfigView"]

REJECTED: Final = 50  # rejections kept


class ConfigView:
    """The etcd view: defaults, per-breaker values, revision, and what was refused."""

    def __init__(self, source: EtcdSource) -> None:
        self.source = source
        self.defaults: dict[str, Any] = {}
        self.breakers: dict[str, dict[str, Any]] = {}
        self.revision: int | None = None
        self.origin: str | None = None
        self.rejected: deque[dict[str, Any]] = deque(maxlen=REJECTED)
        self._refused: dict[str, str] = {}  # key -> the problem last recorded for it
        self.on_change: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"ConfigView({self.source.describe()!r}, revision={self.revision})"

    async def start(self) -> None:
        await self.source.start(self)

    async def close(self) -> None:
        await self.source.close()

    # ------------------------------------------------------------------ ConfigTarget

    def apply_config(
        self,
        defaults: Mapping[str, Any] | None,
        breakers: Mapping[str, Mapping[str, Any]],
        *,
        revision: int | None,
        origin: str,
    ) -> None:
        from resilient.config.schema import validate_breaker

        self.defaults = dict(defaults or {})
        self.breakers = {name: dict(v) for name, v in breakers.items()}
        self.revision, self.origin = revision, origin
        refused: dict[str, str] = {}
        items = [("defaults", self.defaults)]
        items += [(f"breakers/{n}", {**self.defaults, **v}) for n, v in self.breakers.items()]
        for key, merged in items:
            problems = validate_breaker(merged)
            if problems:
                refused[key] = "; ".join(str(p) for p in problems)
        for key, reason in refused.items():
            if self._refused.get(key) != reason:
                self._record(key, reason, revision)
        self._refused = refused
        self.on_change()

    def reject_config(self, key: str, reason: str, *, revision: int | None) -> None:
        head = self.source.prefix + "/"
        self._record(key.removeprefix(head), reason, revision)  # relative, as the others
        self.on_change()

    def _record(self, key: str, reason: str, revision: int | None) -> None:
        self.rejected.append(
            {"key": key, "reason": reason, "revision": revision, "at": time.time()}
        )

    # ------------------------------------------------------------------ what the page shows

    def for_breaker(self, name: str) -> dict[str, Any]:
        """The fields in force for ``name`` (defaults under its own), and where each is from."""
        own = self.breakers.get(name, {})
        return {
            "fields": {**self.defaults, **own},
            "own": sorted(own),
            "refused": self._refused.get(f"breakers/{name}"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.describe(),
            "prefix": self.source.prefix,
            "revision": self.revision,
            "connected": self.source.connected,
            "defaults": self.defaults,
            "breakers": len(self.breakers),
            "rejected": list(self.rejected),
        }
