"""Layered timeouts for aiohttp: connect, socket, per attempt and total, all under the deadline.

One idea: no wait on a dependency outlives the budget it was given.

``Timeouts`` holds the layers. ``connect``, ``sock_connect``, ``sock_read``
and ``total`` become the session's ``aiohttp.ClientTimeout`` (each clipped to
``total``); aiohttp enforces them. ``total`` bounds the whole request,
retries included (the pipeline computes the request's expiry once, see
``resilient.http._pipeline``). ``attempt`` bounds one attempt, from sending
to the response headers, so that a retry still fits in ``total``; ``"auto"``
learns it per host from the latency the host shows while healthy
(``resilient.http._attempt``: the typical answers, and the tail that
succeeds), never below the slow limit of the host's breaker (so a timed-out
attempt is a slow call), never above ``total``. An attempt that reaches a
learned bound at a host without hang symptoms is not cut there but given
``ATTEMPT_PATIENCE`` times the bound (within ``total`` and the deadline):
the bound is learned from censored data, and only a slow answer let through
shows the learner the tail it would otherwise cut and retry for ever. A
fixed ``attempt`` is the caller's own number and is always cut at.

``TimeoutLayer.arm`` bounds each attempt at the tightest of: the attempt
timeout (idempotent requests only, the ones a retry can follow), what is
left of the total, and what is left of the current ``resilient.deadline``.
When an armed (``async with``) deadline is the tightest, nothing more is
armed: the deadline's timer fires and surfaces as ``DeadlineExceeded``.
Otherwise the bound goes on the layer's ``Watchdog`` (one loop timer for all
attempts), and an expiry fails the attempt with ``AttemptTimeoutError`` (an
``aiohttp.ServerTimeoutError``, so a ``TimeoutError`` and an
``aiohttp.ClientError``), which the breaker counts as a failure and the retry
layer retries. The bound is also what the deadline header carries: for a
learned bound at a host without hang symptoms, the patience beyond it.

The response body is read after the middlewares return, and ``total``
bounds it too. A middleware alone leaves that to aiohttp's own ``total`` (the
session's ``ClientTimeout``), which costs a timer per request. ``session()``
instead gives aiohttp no ``total`` and builds its layer with
``bounds_body=True``: a body that has not all arrived with the headers goes on
the same ``Watchdog``, whose expiry fails the waiting read with
``AttemptTimeoutError`` (``bound="total"``) through the stream's public
``set_exception``. A body that came with the headers (most answers) costs
nothing. ``sock_read`` stays aiohttp's, and an ``async with`` deadline's
timer cancels the read; the connection is released by aiohttp either way.

Concurrency: one event loop. The per-host learners are created on first use
and touched only from the loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final, Literal, Protocol

import aiohttp
from aiohttp import ClientRequest, ClientResponse, StreamReader

from resilient.deadline import _current
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.http._attempt import ATTEMPT_FLOOR, ATTEMPT_PATIENCE, AttemptLearner
from resilient.http._shared import guard, is_idempotent

if TYPE_CHECKING:
    from resilient.breaker import CircuitBreaker
    from resilient.deadline import deadline
    from resilient.http._shared import Host, Learned

__all__ = [
    "TOTAL_MARGIN",
    "AttemptTimeoutError",
    "Bounding",
    "TimedOut",
    "TimeoutLayer",
    "Timeouts",
    "Watchdog",
    "expired",
    "timed_out",
    "timeout_layer",
    "uncount",
]

#: The TCP connect timeout by default: one lost SYN is retransmitted after 1 s
#: (Linux's initial RTO), and a TLS handshake follows.
SOCK_CONNECT: Final = 2.0
#: How much earlier than aiohttp's own total timer a request's expiry is, so an
#: attempt that runs out of total time fails as a timeout the breaker can count
#: (aiohttp's timer, armed a few microseconds earlier, would cancel the task instead).
#: In ``session()``, where aiohttp keeps no total, it only ends a request 2 ms early.
TOTAL_MARGIN: Final = 0.002

_ATTEMPT, _TOTAL, _DEADLINE, _BODY = "attempt", "total", "deadline", "body"


class TimedOut(Exception):
    """An attempt ran out of time (its own timeout, or what was left of ``total``), any client.

    Each client's error is this and the client's own timeout error.

    Attributes:
        seconds: the bound that ran out.
        bound: ``"attempt"`` or ``"total"``.
    """

    def __init__(self, url: object, seconds: float, bound: str) -> None:
        self.seconds = seconds
        self.bound = bound
        what = "attempt timeout" if bound == _ATTEMPT else "total timeout"
        super().__init__(f"{what} of {seconds:.3f}s exceeded waiting for {url}")


class AttemptTimeoutError(TimedOut, aiohttp.ServerTimeoutError):
    """aiohttp's ``TimedOut``: an ``aiohttp.ServerTimeoutError``, a ``TimeoutError`` too."""


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

    def client_timeout(self, *, total: bool = True) -> aiohttp.ClientTimeout:
        """The session's ``aiohttp.ClientTimeout``, every layer clipped to ``total``.

        ``total=False`` leaves the total out, for a session whose timeout
        layer keeps it (``bounds_body``), as ``session()``'s does.
        """
        return aiohttp.ClientTimeout(
            total=self.total if total else None,
            connect=_clip(self.connect, self.total),
            sock_connect=_clip(self.sock_connect, self.total),
            sock_read=_clip(self.sock_read, self.total),
        )


def _clip(value: float | None, total: float) -> float | None:
    return None if value is None else min(value, total)


class _Cuttable(Protocol):
    def cancel(self) -> object: ...


#: What a learned bound does when an attempt reaches it: (the learner, the
#: expiry it may wait on to, which bound that is and its seconds); the expiry
#: is the entry's own when the host showed hang symptoms at the start, and
#: ``math.inf`` when an armed deadline's own timer serves.
Patience = tuple["Learned", float, str, float]
#: A watched attempt: (expiry, its task, which bound, the bound's seconds, its
#: ``Patience`` if the bound was learned, else None), or a body: (expiry, its
#: ``_BodyCut``, "body", the total, None).
Entry = tuple[float, _Cuttable, str, float, Patience | None]
#: What bounds one attempt (``TimeoutLayer.plan``): (the bound's seconds, which
#: bound, its ``Patience`` if the bound was learned, the seconds in force: what
#: the attempt may wait on to, and what the deadline header carries).
Bounding = tuple[float, str, Patience | None, float]


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
    a cancellation). A body's entry is cut by failing its stream, and is
    dropped then or when the body ends (``forget``): nobody asks after it.

    An attempt that reaches a learned bound is reported to its learner
    (``AttemptLearner.overran``); if the host shows no hang symptoms and the
    attempt's ``Patience`` allows, its entry is replaced by one at the longer
    expiry instead of being cut.

    ``entries`` (key -> entry) and ``cut`` (keys cut, not yet released) are
    public because the pipeline's success path writes ``watch`` and
    ``release`` out rather than call them.
    """

    __slots__ = ("_at", "_handle", "_loop", "cut", "entries")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.entries: dict[object, Entry] = {}
        self.cut: set[object] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer goes off

    def watch(self, key: object, entry: Entry) -> None:
        self.entries[key] = entry
        if entry[0] < self._at:
            self._arm(entry[0])

    def _arm(self, expiry: float) -> None:
        """Go off at ``expiry``, sooner than the timer was set for."""
        if self._handle is not None:
            self._handle.cancel()
        self._at = expiry
        self._handle = self._loop.call_at(expiry, self._check)

    def release(self, key: object) -> Entry | None:
        """End ``key``'s watch; its entry if it was cut, else None."""
        entry = self.entries.pop(key)
        cut = self.cut
        if cut and key in cut:
            cut.discard(key)
            return entry
        return None

    def withdraw(self, key: object) -> None:
        """End the watch of an attempt that will not be made (its breaker refused it).

        It is not one of the attempts a learned bound counts either.
        """
        entry = self.entries.pop(key)
        self.cut.discard(key)
        uncount(entry[4])

    def forget(self, key: object) -> None:
        """End a body's watch, if it is still watched (its stream ended, or the connection went)."""
        self.entries.pop(key, None)

    def _check(self) -> None:
        now = self._loop.time()
        later = math.inf
        for key, entry in self.entries.items():
            expiry = entry[0]
            if expiry <= now:
                if key not in self.cut:
                    self._loop.call_soon(self._cut_one, key, entry)
            elif expiry < later:
                later = expiry
        self._at = later
        self._handle = None if later == math.inf else self._loop.call_at(later, self._check)

    def _cut_one(self, key: object, entry: Entry) -> None:
        if self.entries.get(key) is entry and key not in self.cut:
            if entry[2] is _BODY:
                del self.entries[key]
            else:
                patience = entry[4]
                if patience is not None:
                    learned, later, bound, seconds = patience
                    if learned.overran() and later > entry[0]:
                        # No hang symptoms: a slow answer may be on its way (the
                        # host's tail, which the learner has yet to see). Wait on.
                        self.watch(key, (later, entry[1], bound, seconds, None))
                        return
                self.cut.add(key)
            entry[1].cancel()


class _BodyCut:
    """Fails the waiting (and every later) read of a body that ran past the total."""

    __slots__ = ("_content", "_seconds", "_url")

    def __init__(self, content: StreamReader, url: object, seconds: float) -> None:
        self._content = content
        self._url = url
        self._seconds = seconds

    def cancel(self) -> None:
        content = self._content
        if content.exception() is None and not content.is_eof():
            content.set_exception(AttemptTimeoutError(self._url, self._seconds, _TOTAL))


class TimeoutLayer:
    """The per-attempt timeout layer (see the module docstring).

    Built by ``timeout_middleware`` (alone) or ``resilient.http.session``;
    each host's learned attempt timeout lives in its ``Host``.
    """

    __slots__ = ("_fixed", "_floor", "_learn", "applies", "bounds_body", "total", "watchdog")

    def __init__(
        self,
        timeouts: Timeouts,
        applies: Callable[[ClientRequest], bool],
        *,
        bounds_body: bool = False,
    ) -> None:
        self.total = timeouts.total
        self.bounds_body = bounds_body  # the total bounds the body here, not in aiohttp
        self._learn = timeouts.attempt == "auto"
        attempt = timeouts.attempt
        self._fixed = attempt if isinstance(attempt, float) else math.inf
        self._floor = min(ATTEMPT_FLOOR, timeouts.total)
        self.applies = applies  # which requests get the attempt timeout
        self.watchdog: Watchdog | None = None  # made on first use, on the session's loop

    def adopt(self, host: Host, req: object) -> None:
        if self._learn:
            host.learned = AttemptLearner(self._floor, self.total)

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
        """Bound the attempt of ``req`` starting at ``now`` on the watchdog: the bound's seconds.

        What bounds it is ``plan``'s decision; this puts it on the watchdog.
        None when nothing of this layer's bounds the attempt.

        Raises:
            AttemptTimeoutError, DeadlineExceeded: no time is left.
        """
        bounding = self.plan(applies, host, now, expiry, br)
        if bounding is None:
            return None
        limit, kind, patience, in_force = bounding
        if limit <= 0.0:
            raise _expired(req, kind, 0.0)
        watchdog = self.watchdog
        if watchdog is None:
            watchdog = self.watchdog = Watchdog(req.loop)
        at = now + limit
        watchdog.entries[req] = (at, task, kind, limit, patience)  # watch(), written out
        if at < watchdog._at:
            watchdog._arm(at)
        return in_force

    def plan(
        self,
        applies: bool,
        host: Host,
        now: float,
        expiry: float,
        br: CircuitBreaker | None,
    ) -> Bounding | None:
        """What bounds an attempt starting at ``now``: the decision, for any client.

        ``applies``: whether the attempt timeout applies to the request. The
        tightest of the attempt timeout, what is left of the total (``expiry``)
        and of the current deadline. None when nothing of this layer's bounds
        the attempt: an armed deadline is the tightest (its own timer serves),
        or there is no bound at all. A bound of 0 seconds means no time is
        left (the caller raises ``timed_out``). For a learned bound at a host
        without hang symptoms, the seconds in force are those it may wait on
        to (``ATTEMPT_PATIENCE``); an attempt that then reaches the learned
        bound is reported to ``patience[0].overran()``.
        """
        left = expiry - now  # of the total
        limit, kind = left, _TOTAL
        learned = None
        if applies:
            learned = host.learned
            if learned is None:
                own = self._fixed  # the caller's own number, as it is
            else:
                own = learned.seconds
                if br is None:
                    br = guard()  # a breaker middleware of its own, before this one
                if br is not None and br.slow_call_seconds > own:
                    own = br.slow_call_seconds  # a timed-out attempt must count as slow
            if own < limit:
                limit, kind = own, _ATTEMPT
        scope = _current()
        if scope is not None:
            remaining = scope.remaining()
            if remaining <= limit:
                if scope.armed:
                    return None
                limit, kind = remaining, _DEADLINE
        if limit <= 0.0:
            return (0.0, kind, None, 0.0)
        if limit == math.inf:
            return None
        patience, in_force = None, limit
        if learned is not None and kind is _ATTEMPT:
            learned.attempts = attempts = learned.attempts + 1
            if attempts < learned.hung_until:
                patience = (learned, now + limit, kind, limit)  # hang symptoms: cut at the bound
            else:
                patience = self._patience(learned, now, limit, left, scope)
                in_force = patience[3]  # what the deadline header carries
        return (limit, kind, patience, in_force)

    @staticmethod
    def _patience(
        learned: Learned, now: float, bound: float, left: float, scope: deadline | None
    ) -> Patience:
        """How long an attempt past its learned ``bound`` may wait on (total, deadline allowing)."""
        seconds, kind = ATTEMPT_PATIENCE * bound, _ATTEMPT
        if left <= seconds:
            seconds, kind = left, _TOTAL
        if scope is not None:
            remaining = scope.remaining()
            if remaining <= seconds:
                if scope.armed:
                    return (learned, math.inf, _DEADLINE, remaining)  # its own timer serves
                seconds, kind = remaining, _DEADLINE
        return (learned, now + seconds, kind, seconds)

    def bound_body(self, req: ClientRequest, response: ClientResponse, expiry: float) -> None:
        """Bound the rest of ``response``'s body by the request's ``expiry`` (loop time).

        A body that is all here already needs no bound; otherwise its
        stream is failed at ``expiry`` unless it ends, or its connection is
        let go, first.
        """
        content = response.content
        if content.is_eof() or expiry == math.inf:
            return  # all here already (the pipeline asks this first), or no total
        watchdog = self.watchdog
        if watchdog is None:
            watchdog = self.watchdog = Watchdog(req.loop)
        cut = _BodyCut(content, req.url.origin(), self.total)  # as the attempts name it
        watchdog.watch(content, (expiry, cut, _BODY, self.total, None))
        done = partial(watchdog.forget, content)
        content.on_eof(done)
        if response.connection is not None:
            response.connection.add_callback(done)


def timeout_layer(
    timeouts: Timeouts | None = None,
    *,
    applies: Callable[[ClientRequest], bool] = is_idempotent,
    bounds_body: bool = False,
) -> TimeoutLayer:
    """The timeout layer, for ``pipeline`` (see ``timeout_middleware`` for the arguments).

    ``bounds_body``: the session's ``ClientTimeout`` has no total (see
    ``Timeouts.client_timeout``), so the layer bounds the body by it.
    """
    if timeouts is None:
        timeouts = Timeouts()
    elif not isinstance(timeouts, Timeouts):
        raise ConfigError(
            f"timeouts must be a Timeouts, got {timeouts!r}", field="timeouts", value=timeouts
        )
    return TimeoutLayer(timeouts, applies, bounds_body=bounds_body)


def expired(req: ClientRequest, entry: Entry) -> Exception:
    """The error an attempt cut by its bound fails with."""
    return _expired(req, entry[2], entry[3])


def _expired(req: ClientRequest, bound: str, seconds: float) -> Exception:
    url = req.url
    return timed_out(bound, seconds, url.host, url.origin, AttemptTimeoutError)


def timed_out(
    bound: str,
    seconds: float,
    host: str | None,
    origin: Callable[[], object],
    error: Callable[[object, float, str], Exception],
) -> Exception:
    """The error an attempt fails with when ``bound`` (``plan``'s kind) ran out.

    The caller's deadline is ``DeadlineExceeded``; the others are the
    client's own timeout error, ``error(origin(), seconds, bound)``.
    """
    if bound == _DEADLINE:
        return DeadlineExceeded(f"deadline exceeded waiting for {host}")
    return error(origin(), seconds, bound)


def uncount(patience: Patience | None) -> None:
    """An attempt bounded by a learned bound will not be made: it is not one it bounded."""
    if patience is not None:
        patience[0].attempts -= 1
