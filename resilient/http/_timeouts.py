"""Layered timeouts for aiohttp: connect, socket, per attempt and total, all under the deadline.

One idea: no wait on a dependency outlives the budget it was given.

``Timeouts`` holds the layers. ``connect``, ``sock_connect``, ``sock_read``
and ``total`` become the session's ``aiohttp.ClientTimeout`` (each clipped to
``total``); aiohttp enforces them. ``total`` bounds the whole request,
retries included (the pipeline computes the request's expiry once, see
``resilient.http._pipeline``). ``attempt`` bounds one attempt, from sending
to the response headers, so that a retry still fits in ``total``; ``"auto"``
learns it per host from the latency the host shows while healthy:
``ATTEMPT_MULTIPLE`` (10) times the 90th percentile of recent good answers,
never below ``ATTEMPT_FLOOR`` (50 ms) nor the slow limit of the host's
breaker (so a timed-out attempt is a slow call), never above ``total``.

``TimeoutLayer.arm`` bounds each attempt at the tightest of: the attempt
timeout (idempotent requests only, the ones a retry can follow), what is
left of the total, and what is left of the current ``resilient.deadline``.
When an armed (``async with``) deadline is the tightest, nothing more is
armed: the deadline's timer fires and surfaces as ``DeadlineExceeded``.
Otherwise the bound goes on the layer's ``Watchdog`` (one loop timer for all
attempts), and an expiry fails the attempt with ``AttemptTimeoutError`` (an
``aiohttp.ServerTimeoutError``, so a ``TimeoutError`` and an
``aiohttp.ClientError``), which the breaker counts as a failure and the retry
layer retries. The bound is also what the deadline header carries.

The response body is read after the middlewares return: it is bounded by
aiohttp (``total``, ``sock_read``) and by an ``async with`` deadline, whose
timer cancels the read; the connection is released by aiohttp either way.

Concurrency: one event loop. The per-host learners are created on first use
and touched only from the loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import aiohttp
from aiohttp import ClientMiddlewareType, ClientRequest

from resilient.deadline import _current
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.http._breaker import guard
from resilient.http._retry import is_idempotent
from resilient.latency import Recent

if TYPE_CHECKING:
    from resilient.breaker import CircuitBreaker
    from resilient.http._pipeline import Host

__all__ = [
    "ATTEMPT_FLOOR",
    "ATTEMPT_MULTIPLE",
    "ATTEMPT_SAMPLE_GAP",
    "TOTAL_MARGIN",
    "AttemptTimeoutError",
    "TimeoutLayer",
    "Timeouts",
    "Watchdog",
    "attempt_bound",
    "expired",
    "publish_bound",
    "timeout_layer",
    "timeout_middleware",
]

#: "auto" attempt timeout: this many times ...
ATTEMPT_MULTIPLE: Final = 10.0
#: ... the 90th percentile of the host's recent healthy answers (not the 99th:
#: a pause that delays a few percent of them, a GC or a busy CPU, must not
#: inflate it) ...
ATTEMPT_QUANTILE: Final = 0.9
#: ... but never below this (seconds): fast hosts jitter, and a retry must be rare.
ATTEMPT_FLOOR: Final = 0.05
#: Answers the percentile is taken over, how many it is first learned from, and
#: how often (in answers) it is learned again.
ATTEMPT_SAMPLES: Final = 256
ATTEMPT_FIRST: Final = 32
ATTEMPT_RELEARN: Final = 64
#: Once learned, at most one answer per this many seconds is sampled (4,000 a
#: second): at higher rates a sample describes the host as well, and costs less.
ATTEMPT_SAMPLE_GAP: Final = 0.00025
#: The TCP connect timeout by default: one lost SYN is retransmitted after 1 s
#: (Linux's initial RTO), and a TLS handshake follows.
SOCK_CONNECT: Final = 2.0
#: How much earlier than aiohttp's own total timer a request's expiry is, so an
#: attempt that runs out of total time fails as a timeout the breaker can count
#: (aiohttp's timer, armed a few microseconds earlier, would cancel the task instead).
TOTAL_MARGIN: Final = 0.002

_ATTEMPT, _TOTAL, _DEADLINE = "attempt", "total", "deadline"

#: Loop time at which the current attempt's bound expires, for a deadline header
#: written by a later middleware (see ``publish_bound``).
_attempt_expiry: ContextVar[float | None] = ContextVar("resilient.http.attempt", default=None)


class AttemptTimeoutError(aiohttp.ServerTimeoutError):
    """An attempt ran out of time (its own timeout, or what was left of ``total``).

    Attributes:
        seconds: the bound that ran out.
        bound: ``"attempt"`` or ``"total"``.
    """

    def __init__(self, url: object, seconds: float, bound: str) -> None:
        self.seconds = seconds
        self.bound = bound
        what = "attempt timeout" if bound == _ATTEMPT else "total timeout"
        super().__init__(f"{what} of {seconds:.3f}s exceeded waiting for {url}")


def _seconds(name: str, value: object, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"Timeouts {name} must be a number, got {value!r}", field=name, value=value
        )
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"Timeouts {name} must be finite and > 0, got {value!r}", field=name, value=value
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The timeout layers of the HTTP layer (seconds).

    Args:
        connect: getting a connection: waiting for a free one in the pool plus
            opening it (aiohttp's ``connect``); ``None``: bounded by the rest.
        sock_connect: opening a TCP (and TLS) connection.
        sock_read: the longest gap between two reads of the response.
        total: the whole request, retries and the body included.
        attempt: one attempt, up to the response headers, for requests a
            retry may follow (idempotent ones): a number, ``"auto"`` (learned
            per host from its healthy latency), or ``None`` (only ``total``).

    Each of ``connect``, ``sock_connect``, ``sock_read`` and ``attempt`` is
    clipped to ``total``, and every one of them to the current deadline.

    Raises:
        ConfigError: a value is not a finite number > 0 (the message names it).
    """

    connect: float | None = None
    sock_connect: float | None = SOCK_CONNECT
    sock_read: float | None = None
    total: float = 10.0
    attempt: float | Literal["auto"] | None = "auto"

    def __post_init__(self) -> None:
        for name in ("connect", "sock_connect", "sock_read"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        object.__setattr__(self, "total", _seconds("total", self.total, optional=False))
        if self.attempt != "auto":
            object.__setattr__(self, "attempt", _seconds("attempt", self.attempt))

    def client_timeout(self) -> aiohttp.ClientTimeout:
        """The session's ``aiohttp.ClientTimeout``, every layer clipped to ``total``."""
        total = self.total
        return aiohttp.ClientTimeout(
            total=total,
            connect=_clip(self.connect, total),
            sock_connect=_clip(self.sock_connect, total),
            sock_read=_clip(self.sock_read, total),
        )


def _clip(value: float | None, total: float) -> float | None:
    return None if value is None else min(value, total)


def attempt_bound(req: ClientRequest) -> float | None:
    """Seconds left on the current attempt's bound, or None (for a deadline header).

    For a middleware after the HTTP layer's that writes its own deadline
    header (with ``propagate=False``); the layer's own propagation needs it not.
    """
    expiry = _attempt_expiry.get()
    if expiry is None:
        return None
    return expiry - asyncio.get_running_loop().time()


class _Learned:
    """The attempt timeout learned from one host's healthy answers.

    ``seconds`` is ``ATTEMPT_MULTIPLE`` times the ``ATTEMPT_QUANTILE`` of the
    last ``ATTEMPT_SAMPLES`` healthy answers, clipped to ``[floor, ceiling]``;
    it is ``ceiling`` (the total) until ``ATTEMPT_FIRST`` answers were seen,
    and is learned again every ``ATTEMPT_RELEARN`` answers. Only answers
    shorter than the timeout in force can be seen, so the estimate follows a
    host that slows down gradually, within the multiple's headroom. Once
    learned, it takes at most one answer per ``ATTEMPT_SAMPLE_GAP``.
    """

    __slots__ = ("_ceiling", "_floor", "_gap", "_next", "_recent", "seconds")

    def __init__(self, floor: float, ceiling: float) -> None:
        self._floor = floor
        self._ceiling = ceiling
        self._recent = Recent(ATTEMPT_SAMPLES, ATTEMPT_FIRST, ATTEMPT_RELEARN)
        self.seconds = ceiling
        # An answer is taken at ``_next`` (loop time) or later, then the next
        # one ``_gap`` after it: every answer until first learned, then a sample.
        self._next = -math.inf
        self._gap = 0.0

    def observe(self, duration: float, now: float) -> None:
        """A healthy answer that took ``duration`` ended at ``now`` (loop time)."""
        if now < self._next:
            return
        self._next = now + self._gap
        if self._recent.add(duration):
            typical = self._recent.quantile(ATTEMPT_QUANTILE)
            self.seconds = min(self._ceiling, max(self._floor, ATTEMPT_MULTIPLE * typical))
            self._gap = ATTEMPT_SAMPLE_GAP


#: A watched attempt: (expiry, its task, which bound, the bound's seconds).
Entry = tuple[float, "asyncio.Task[object]", str, float]


class Watchdog:
    """One loop timer for many attempts: cuts each one that runs past its expiry.

    An attempt is an entry, keyed by its request; the timer is armed for the
    earliest expiry known and, when it goes off, cuts what has expired and is
    armed again for the next. Most attempts end long before their expiry, so
    an attempt costs a dict store and a pop, where a timer of its own would
    cost a heap push and a cancelled handle left in the loop's heap.

    A cut waits one loop iteration (``call_soon``): when the loop itself was
    stalled (a GC pause, a busy CPU), an answer that arrived during the stall
    is handled in the same iteration, and its task's wake-up is queued before
    the cut, so the answer wins. A cut is ``task.cancel()``; ``release``
    tells the attempt it was cut, so it can ``uncancel()`` and fail as a
    timeout (``asyncio.timeout``'s protocol: a caller's own cancellation stays
    a cancellation).
    """

    __slots__ = ("_at", "_cut", "_handle", "_loop", "entries")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.entries: dict[object, Entry] = {}
        self._cut: set[object] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer goes off

    def watch(self, key: object, entry: Entry) -> None:
        self.entries[key] = entry
        expiry = entry[0]
        if expiry < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = expiry
            self._handle = self._loop.call_at(expiry, self._check)

    def release(self, key: object) -> Entry | None:
        """End ``key``'s watch; its entry if it was cut, else None."""
        entry = self.entries.pop(key)
        cut = self._cut
        if cut and key in cut:
            cut.discard(key)
            return entry
        return None

    def _check(self) -> None:
        now = self._loop.time()
        later = math.inf
        for key, entry in self.entries.items():
            expiry = entry[0]
            if expiry <= now:
                if key not in self._cut:
                    self._loop.call_soon(self._cut_one, key, entry)
            elif expiry < later:
                later = expiry
        self._at = later
        self._handle = None if later == math.inf else self._loop.call_at(later, self._check)

    def _cut_one(self, key: object, entry: Entry) -> None:
        if self.entries.get(key) is entry and key not in self._cut:
            self._cut.add(key)
            entry[1].cancel()


class TimeoutLayer:
    """The per-attempt timeout layer (see the module docstring).

    Built by ``timeout_middleware`` (alone) or ``resilient.http.session``;
    each host's learned attempt timeout lives in its ``Host``.
    """

    __slots__ = ("_fixed", "_floor", "_learn", "applies", "total", "watchdog")

    def __init__(self, timeouts: Timeouts, applies: Callable[[ClientRequest], bool]) -> None:
        self.total = timeouts.total
        self._learn = timeouts.attempt == "auto"
        attempt = timeouts.attempt
        self._fixed = attempt if isinstance(attempt, float) else math.inf
        self._floor = min(ATTEMPT_FLOOR, timeouts.total)
        self.applies = applies  # which requests get the attempt timeout
        self.watchdog: Watchdog | None = None  # made on first use, on the session's loop

    def adopt(self, host: Host, req: ClientRequest) -> None:
        if self._learn:
            host.learned = _Learned(self._floor, self.total)

    def arm(
        self,
        req: ClientRequest,
        applies: bool,
        host: Host,
        task: asyncio.Task[object],
        now: float,
        expiry: float,
        br: CircuitBreaker | None,
    ) -> float | None:
        """Bound the attempt of ``req`` starting at ``now``: the bound's seconds.

        ``applies``: whether the attempt timeout applies to ``req``. None when
        nothing of this layer's bounds the attempt: an armed deadline is the
        tightest (its own timer serves), or there is no bound at all.

        Raises:
            AttemptTimeoutError, DeadlineExceeded: no time is left.
        """
        limit, kind = expiry - now, _TOTAL
        if applies:
            learned = host.learned
            if learned is None:
                own = self._fixed  # the caller's own number, as it is
            else:
                own = learned.seconds
                if br is None:
                    br = guard()  # a breaker middleware of its own, before this one
                if br is not None and br._slow_seconds > own:
                    own = br._slow_seconds  # a timed-out attempt must count as slow
            if own < limit:
                limit, kind = own, _ATTEMPT
        scope = _current()
        if scope is not None:
            left = scope.remaining()
            if left <= limit:
                if scope.armed:
                    return None
                limit, kind = left, _DEADLINE
        if limit <= 0.0:
            raise _expired(req, kind, 0.0)
        if limit == math.inf:
            return None
        watchdog = self.watchdog
        if watchdog is None:
            watchdog = self.watchdog = Watchdog(req.loop)
        watchdog.watch(req, (now + limit, task, kind, limit))
        return limit


def publish_bound(expiry: float) -> Token[float | None]:
    """Publish the attempt's expiry (loop time) for a later middleware (see ``attempt_bound``)."""
    return _attempt_expiry.set(expiry)


def timeout_layer(
    timeouts: Timeouts | None = None,
    *,
    applies: Callable[[ClientRequest], bool] = is_idempotent,
) -> TimeoutLayer:
    """The timeout layer, for ``pipeline`` (see ``timeout_middleware`` for the arguments)."""
    if timeouts is None:
        timeouts = Timeouts()
    elif not isinstance(timeouts, Timeouts):
        raise ConfigError(
            f"timeouts must be a Timeouts, got {timeouts!r}", field="timeouts", value=timeouts
        )
    return TimeoutLayer(timeouts, applies)


def timeout_middleware(
    timeouts: Timeouts | None = None,
    *,
    applies: Callable[[ClientRequest], bool] = is_idempotent,
) -> ClientMiddlewareType:
    """A client middleware that bounds each attempt (see the module docstring).

    Put it after (inside) the breaker middleware, so a timed-out attempt is
    counted as a failure.

    Args:
        timeouts: the layers; ``Timeouts()`` if omitted. Without a retry
            middleware before it, the total is counted from this middleware.
        applies: which requests get the attempt timeout (idempotent ones by
            default; the others are bounded by the total and the deadline).

    Raises:
        ConfigError: ``timeouts`` is not a ``Timeouts``.
    """
    from resilient.http._pipeline import pipeline

    return pipeline(timeout=timeout_layer(timeouts, applies=applies))


def expired(req: ClientRequest, entry: Entry) -> Exception:
    """The error an attempt cut by its bound fails with."""
    return _expired(req, entry[2], entry[3])


def _expired(req: ClientRequest, bound: str, seconds: float) -> Exception:
    if bound == _DEADLINE:
        return DeadlineExceeded(f"deadline exceeded waiting for {req.url.host}")
    return AttemptTimeoutError(req.url.origin(), seconds, bound)
