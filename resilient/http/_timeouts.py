"""Layered timeouts for aiohttp: connect, socket, per attempt and total, all under the deadline.

One idea: no wait on a dependency outlives the budget it was given.

``Timeouts`` holds the layers. ``connect``, ``sock_connect``, ``sock_read``
and ``total`` become the session's ``aiohttp.ClientTimeout`` (each clipped to
``total``); aiohttp enforces them. ``total`` bounds the whole request,
retries included (the retry layer publishes its expiry, see
``resilient.http._retry.request_expiry``). ``attempt`` bounds one attempt,
from sending to the response headers, so that a retry still fits in
``total``; ``"auto"`` learns it per host from the latency the host shows
while healthy: ``ATTEMPT_MULTIPLE`` (10) times the 90th percentile of recent good
answers, never below ``ATTEMPT_FLOOR`` (50 ms) nor the slow limit of the
host's breaker (so a timed-out attempt is a slow call), never above ``total``.

``timeout_middleware`` arms one timer per attempt at the tightest of: the
attempt timeout (idempotent requests only, the ones a retry can follow),
what is left of the total, and what is left of the current
``resilient.deadline``. When an armed (``async with``) deadline is the
tightest, no timer of its own is armed: the deadline's fires and surfaces as
``DeadlineExceeded``. Otherwise an expiry raises ``AttemptTimeoutError`` (an
``aiohttp.ServerTimeoutError``, so a ``TimeoutError`` and an
``aiohttp.ClientError``), which the breaker counts as a failure and the retry
layer retries. The timer's expiry is published (``attempt_bound``) for the
deadline header, which carries the tightest bound on the attempt.

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
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from resilient.deadline import _current
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.http._breaker import Host, Inner, chain, guard, slow_limit
from resilient.http._retry import TOTAL_MARGIN, is_idempotent, request_expiry

__all__ = [
    "ATTEMPT_FLOOR",
    "ATTEMPT_MULTIPLE",
    "AttemptTimeoutError",
    "TimeoutLayer",
    "Timeouts",
    "attempt_bound",
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
#: The TCP connect timeout by default: one lost SYN is retransmitted after 1 s
#: (Linux's initial RTO), and a TLS handshake follows.
SOCK_CONNECT: Final = 2.0

_ATTEMPT, _TOTAL, _DEADLINE = "attempt", "total", "deadline"

#: Loop time at which the current attempt's timer fires (for the deadline header).
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
    """Seconds left on the current attempt's timer, or None (for the deadline header)."""
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
    host that slows down gradually, within the multiple's headroom.
    """

    __slots__ = ("_ceiling", "_count", "_due", "_floor", "_ring", "seconds")

    def __init__(self, floor: float, ceiling: float) -> None:
        self._floor = floor
        self._ceiling = ceiling
        self._ring = [0.0] * ATTEMPT_SAMPLES
        self._count = 0  # answers seen
        self._due = ATTEMPT_FIRST  # the count at which it is learned next
        self.seconds = ceiling

    def observe(self, duration: float) -> None:
        count = self._count
        self._ring[count % ATTEMPT_SAMPLES] = duration
        self._count = count = count + 1
        if count < self._due:
            return
        self._due = count + ATTEMPT_RELEARN
        recent = sorted(self._ring[:count] if count < ATTEMPT_SAMPLES else self._ring)
        typical = recent[min(len(recent) - 1, math.ceil(ATTEMPT_QUANTILE * len(recent)) - 1)]
        self.seconds = min(self._ceiling, max(self._floor, ATTEMPT_MULTIPLE * typical))


class _Timer:
    """An attempt's timer: when it goes off, cancel the task on the next loop iteration.

    The one-iteration grace matters when the event loop itself was stalled
    (a GC pause, a busy CPU): the answer that arrived during the stall is
    handled in the same iteration as the late timer, and the task's wake-up
    is queued before this cancellation, so the answer wins. The cancel and
    ``uncancel()`` protocol is ``asyncio.timeout``'s, so a caller's own
    cancellation stays a cancellation.
    """

    __slots__ = ("_handle", "_loop", "_task", "fired")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], when: float
    ) -> None:
        self._loop = loop
        self._task = task
        self.fired = False
        self._handle: asyncio.Handle = loop.call_at(when, self._soon)

    def _soon(self) -> None:
        self._handle = self._loop.call_soon(self._cut)

    def _cut(self) -> None:
        self.fired = True
        self._task.cancel()

    def disarm(self) -> None:
        self._handle.cancel()


def _is_healthy(response: ClientResponse) -> bool:
    status = response.status
    return status < 500 and status != 429


class TimeoutLayer:
    """The per-attempt timeout layer (see the module docstring).

    Built by ``timeout_middleware`` (alone) or ``resilient.http.session``;
    the learned attempt timeout of each host lives in the request's ``Host``.
    """

    __slots__ = ("_applies", "_fixed", "_floor", "_learn", "_total", "inner")

    def __init__(self, timeouts: Timeouts, applies: Callable[[ClientRequest], bool]) -> None:
        self._total = timeouts.total
        self._learn = timeouts.attempt == "auto"
        attempt = timeouts.attempt
        self._fixed = attempt if isinstance(attempt, float) else math.inf
        self._floor = min(ATTEMPT_FLOOR, timeouts.total)
        self._applies = applies
        self.inner: Inner | None = None

    def adopt(self, host: Host, req: ClientRequest) -> None:
        if self._learn:
            host.learned = _Learned(self._floor, self._total)

    async def __call__(
        self, req: ClientRequest, handler: ClientHandlerType, host: Host
    ) -> ClientResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        expiry = request_expiry()
        if expiry is None:
            expiry = started + self._total - TOTAL_MARGIN
        limit, bound = expiry - started, _TOTAL
        learned = None
        if self._applies(req):
            learned = host.learned
            if learned is not None:
                own = learned.seconds
                br = guard()
                if br is not None and slow_limit(br) > own:
                    own = slow_limit(br)  # a timed-out attempt must count as slow
            else:
                own = self._fixed
            if own < limit:
                limit, bound = own, _ATTEMPT
        inner = self.inner
        scope = _current()
        if scope is not None:
            left = scope.remaining()
            if left <= limit:
                if scope.armed:  # the deadline's own timer serves
                    response = await (handler(req) if inner is None else inner(req, handler, host))
                    if learned is not None and _is_healthy(response):
                        learned.observe(loop.time() - started)
                    return response
                limit, bound = left, _DEADLINE
        if limit <= 0.0:
            raise _expired(req, bound, 0.0)
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("the HTTP timeout layer needs to run in an asyncio task")
        cancelling = task.cancelling()
        fires_at = started + limit
        timer = _Timer(loop, task, fires_at)
        token = _attempt_expiry.set(fires_at)
        try:
            response = await (handler(req) if inner is None else inner(req, handler, host))
        except asyncio.CancelledError as exc:
            if timer.fired:
                timer.fired = False
                if task.uncancel() <= cancelling:
                    raise _expired(req, bound, limit) from exc
            raise
        finally:
            _attempt_expiry.reset(token)
            timer.disarm()
            if timer.fired:  # it fired, but the attempt finished anyway
                task.uncancel()
        if learned is not None and _is_healthy(response):
            learned.observe(loop.time() - started)
        return response


def timeout_layer(
    timeouts: Timeouts | None = None,
    *,
    applies: Callable[[ClientRequest], bool] = is_idempotent,
) -> TimeoutLayer:
    """The timeout layer, for ``chain`` (see ``timeout_middleware`` for the arguments)."""
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
            layer outside it, the total is counted from this middleware.
        applies: which requests get the attempt timeout (idempotent ones by
            default; the others are bounded by the total and the deadline).

    Raises:
        ConfigError: ``timeouts`` is not a ``Timeouts``.
    """
    return chain([timeout_layer(timeouts, applies=applies)])


def _expired(req: ClientRequest, bound: str, seconds: float) -> Exception:
    if bound == _DEADLINE:
        return DeadlineExceeded(f"deadline exceeded waiting for {req.url.host}")
    return AttemptTimeoutError(req.url.origin(), seconds, bound)
