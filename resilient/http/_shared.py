"""What the HTTP layers share: each host's state, and what one middleware tells the next.

Every layer (``_retry``, ``_breaker``, ``_timeouts``) depends on this module
and on no other layer; ``_pipeline`` runs the layers, ``_middleware`` and
``_session`` build pipelines (docs/concepts/map.md).

- ``Host``: one session's state for one ``host:port``. Each layer keeps its
  slots in it, filled by its ``adopt`` when ``Hosts`` meets a new host.
- The published context: a pipeline that lacks a layer publishes, in context
  variables, what that layer would read if it came later as a middleware of
  its own: the request's expiry (``publish_expiry`` / ``outer_expiry``), the
  guarding breaker (``guarding`` / ``guard``), the attempt's bound
  (``publish_bound`` / ``attempt_bound``). So separately stacked middlewares
  cooperate as the single pipeline does.
- What a request is: ``is_idempotent``, ``replayable``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, MutableMapping, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp import ClientRequest

from resilient._deadline_header import LastFormatted

if TYPE_CHECKING:
    from resilient.breaker import CircuitBreaker
    from resilient.budget import RetryBudget

__all__ = [
    "IDEMPOTENT_METHODS",
    "Host",
    "Hosts",
    "Layer",
    "Learned",
    "Outgoing",
    "attempt_bound",
    "guard",
    "guarding",
    "is_idempotent",
    "loop_clock",
    "outer_expiry",
    "publish_bound",
    "publish_expiry",
    "replayable",
]

#: Methods RFC 9110 defines as idempotent: sending one twice has the effect of sending it once.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Host:
    """One session's state for one ``host:port``: each layer keeps its slots here."""

    __slots__ = (
        "breaker",
        "budget",
        "clock",
        "deadline_text",
        "deposit_at",
        "learned",
        "pending",
        "streak",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the loop's (see ``loop_clock``)
        self.breaker: CircuitBreaker | None = None  # the breaker layer's (per host)
        self.budget: RetryBudget | None = None  # the retry layer's budget ...
        self.pending = 0  # ... requests not yet deposited in it ...
        self.deposit_at = -math.inf  # ... the loop time their batch is due ...
        self.streak = 0  # ... and its count of failed attempts in a row
        self.learned: Learned | None = None  # the timeout layer's attempt timeout
        self.deadline_text = LastFormatted()  # the deadline header's value of a bound


class Layer(Protocol):
    """What the host table asks of a layer: fill its slots of a new ``Host``."""

    def adopt(self, host: Host, req: Any) -> None: ...


class Hosts:
    """The ``Host`` of each ``(host, port)`` a session has sent to, made on first use."""

    __slots__ = ("_layers", "by_key")

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)
        self.by_key: dict[tuple[str | None, int | None], Host] = {}

    def add(self, req: ClientRequest) -> Host:
        """The request's ``Host``, made (each layer filling its slots) if it is new."""
        url = req.url
        key = (url.raw_host, url.port)
        found = self.by_key.get(key)
        if found is None:
            host = Host(loop_clock(req.loop))
            for layer in self._layers:
                layer.adopt(host, req)
            found = self.by_key.setdefault(key, host)
        return found


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The loop's clock: for asyncio's own loops, ``time.monotonic`` itself.

    A breaker reading the same clock (the default) then shares the
    pipeline's readings: one reading at each end of an attempt, not two.
    """
    return time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time


class Learned(Protocol):
    """The timeout layer's learned attempt timeout, as the pipeline feeds it."""

    seconds: float  # the attempt timeout in force
    next_at: float  # loop time before which no sample is wanted
    attempts: int  # attempts it bounded ...
    hung_until: int  # ... hang symptoms while there are fewer than this

    def observe(self, duration: float, now: float) -> None: ...

    def overran(self) -> bool: ...


# ---------------------------------------------------------------------- the published context

#: Loop time by which the current request (all its attempts) must end, or None.
_expiry: ContextVar[float | None] = ContextVar("resilient.http.expiry", default=None)


#: The expiry published by a retry middleware before this one, or None (the
#: variable's own ``get``: no Python call on the success path).
outer_expiry: Callable[[], float | None] = _expiry.get


def publish_expiry(expiry: float) -> Token[float | None]:
    """Publish the request's expiry for a timeout middleware after this one."""
    return _expiry.set(expiry)


#: The breaker guarding the attempt being sent (see ``guard``).
_guard_var: ContextVar[CircuitBreaker | None] = ContextVar("resilient.http.guard", default=None)


def guard() -> CircuitBreaker | None:
    """The breaker a breaker middleware before this one admitted the attempt through, or None.

    A timeout middleware after it reads its slow limit: an attempt timeout is
    never shorter, so a timed-out attempt also counts as a slow call, and a
    host whose requests all time out opens the breaker even while other
    requests to it hang.
    """
    return _guard_var.get()


def guarding(br: CircuitBreaker) -> Token[CircuitBreaker | None]:
    """Publish ``br`` as the attempt's breaker for a later middleware (see ``guard``)."""
    return _guard_var.set(br)


#: Loop time at which the current attempt's bound expires, for a deadline header
#: written by a later middleware (see ``publish_bound``).
_attempt_expiry: ContextVar[float | None] = ContextVar("resilient.http.attempt", default=None)


def publish_bound(expiry: float) -> Token[float | None]:
    """Publish the attempt's expiry (loop time) for a later middleware (see ``attempt_bound``)."""
    return _attempt_expiry.set(expiry)


def attempt_bound(req: ClientRequest) -> float | None:
    """Seconds left on the current attempt's bound, or None (for a deadline header).

    For a middleware after the HTTP layer's that writes its own deadline
    header (with ``propagate=False``); the layer's own propagation needs it not.
    """
    expiry = _attempt_expiry.get()
    if expiry is None:
        return None
    return expiry - asyncio.get_running_loop().time()


# ---------------------------------------------------------------------- what a request is

_IDEMPOTENCY_KEY: Final = "Idempotency-Key"


class Outgoing(Protocol):
    """What the layers read of a request in any client (aiohttp's, httpx's): method, headers."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> MutableMapping[str, str]: ...


def is_idempotent(req: Outgoing) -> bool:
    """Whether sending ``req`` twice is as safe as sending it once."""
    return req.method in IDEMPOTENT_METHODS or _IDEMPOTENCY_KEY in req.headers


def replayable(req: ClientRequest) -> bool:
    """A streamed body (a generator, an unseekable file) cannot be sent again."""
    return not getattr(req.body, "consumed", False)
