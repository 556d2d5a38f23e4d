"""Routing by tag: send gray traffic to the gray pool unless its breaker is open.

A canary pool is small and new; when it fails, its circuit breaker opens and
gray callers must not fail with it. ``route()`` picks the gray base URL for a
gray request, and the stable one for stable traffic *and* for gray traffic
while the gray pool's breaker refuses calls (OPEN or FORCED_OPEN). In
HALF_OPEN gray traffic goes to the gray pool again: those calls are the probes
that close the breaker.
"""

from __future__ import annotations

from typing import Protocol

from resilient.gray._context import current
from resilient.gray._tag import GrayTag
from resilient.state import State

__all__ = ["route"]

_REFUSING = (State.OPEN, State.FORCED_OPEN)


class _HasState(Protocol):
    @property
    def state(self) -> State: ...


class _Current:
    """Marker default: use the current request's tag."""


_CURRENT = _Current()


def route(
    stable: str,
    gray: str,
    *,
    breaker: _HasState | None = None,
    tag: GrayTag | _Current | None = _CURRENT,
) -> str:
    """The base URL for this request: ``gray`` for gray traffic, else ``stable``.

    Args:
        stable: the stable pool's base URL.
        gray: the gray pool's base URL.
        breaker: the gray pool's breaker (anything with a ``state``); while it
            is OPEN or FORCED_OPEN, gray traffic goes to ``stable``.
        tag: the tag to route by; by default the current request's.
    """
    found = current() if isinstance(tag, _Current) else tag
    if found is None or (breaker is not None and breaker.state in _REFUSING):
        return stable
    return gray
