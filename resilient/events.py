"""Events a breaker or hub reports to its listeners.

One frozen, slotted dataclass per event, named in the past tense. An event is
built only when someone listens, and delivered after the change is committed,
outside any guard. A listener that raises is reported once to the
``resilient`` logger and never to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from resilient.state import State

if TYPE_CHECKING:
    from resilient.config import BreakerConfig

__all__ = [
    "CallRejected",
    "ConfigChanged",
    "ConfigRejected",
    "Event",
    "Listener",
    "StateChanged",
    "UnknownFieldsIgnored",
    "deliver",
]

log = logging.getLogger("resilient")


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A breaker moved from ``old`` to ``new``; ``at`` is epoch seconds."""

    breaker: str
    old: State
    new: State
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class CallRejected:
    """A breaker refused a call (the function was not called)."""

    breaker: str
    state: State
    retry_after: float
    reason: str


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """A breaker's config was replaced (``revision`` is the source's, if any)."""

    breaker: str
    old: BreakerConfig
    new: BreakerConfig
    revision: int | None


@dataclass(frozen=True, slots=True)
class ConfigRejected:
    """A config value was refused; the last good config stays in force."""

    breaker: str | None
    key: str
    reason: str
    revision: int | None


@dataclass(frozen=True, slots=True)
class UnknownFieldsIgnored:
    """A config value named fields this version does not know (a newer writer)."""

    key: str
    fields: tuple[str, ...]
    revision: int | None


Event = Union[StateChanged, CallRejected, ConfigChanged, ConfigRejected, UnknownFieldsIgnored]  # noqa: UP007
Listener = Callable[[Event], object]

_reported: set[int] = set()


def deliver(listeners: tuple[Listener, ...], event: Event) -> None:
    """Call every listener with ``event``; a failing listener is logged once, never raised."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            if id(listener) not in _reported:
                _reported.add(id(listener))
                log.exception("resilient: listener %r failed (reported once)", listener)
