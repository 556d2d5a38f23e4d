"""One request through the HTTP layers, written once for httpx's async and sync transports.

One idea: the steps of a request are the same whether the I/O is awaited or
blocking, so they are a generator that does no I/O. ``Exchange.steps``
yields what to do next, ``(SEND, None)``, ``(SLEEP, seconds)`` or
``(CLOSE, response)``, and is sent the response (or thrown the error) of
each send; it returns the response the caller gets. The transports
(``_transports``) are the two small loops that carry the steps out.

The decisions are ``resilient.http``'s own, the ones the aiohttp pipeline
makes: the retry layer's budget, streak and ``plan``; the breaker layer's
breaker per host and ``is_failure``; the timeout layer's ``plan`` (the
attempt timeout, learned or fixed, the total and the deadline; the patience
of a learned bound); the propagation step; ``is_idempotent``. What differs
is how a bound is enforced. aiohttp's pipeline cuts a task on a loop timer;
here the bound becomes the attempt's httpx timeouts (``connect``, ``read``,
``write``, ``pool``, each the tighter of the client's own and the bound), so
httpcore enforces it at the socket, with no event loop needed (the sync
client) and no timer of ours. A timeout at the bound fails the attempt with
``AttemptTimeoutError`` (or ``DeadlineExceeded`` when the deadline was the
bound). An attempt still running when it reaches a learned bound is reported
to its learner (the hang symptoms) by the next attempt that starts after
that moment, or by its own end if that comes first: the watchdog's report,
made lazily from the clock instead of on a timer (``_Overruns``). Once the
headers are in, the body's reads get the client's read timeout within what
is left of the total and the deadline (httpcore reads the attempt's
timeouts again when the body starts), and the transport ends a body still
arriving at the request's expiry (``Delivered``).

Concurrency: the sync client's transport is shared by threads. A host's
counts (its budget's batch, its streak, its learned bound) are then changed
under the exchange's lock, held for microseconds and never across I/O; the
async transport's lock is a no-op (one event loop). Breakers and budgets are
thread-safe themselves; the deadline header is formatted afresh per attempt
in threads (the host's memo is two fields a thread could see half-written).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx

from resilient._deadline_header import format_ms
from resilient.deadline import remaining
from resilient.errors import CircuitOpenError
from resilient.http._breaker import is_failure, settle_error
from resilient.http._pipeline import _raise, _record
from resilient.http._retry import parse_retry_after
from resilient.http._shared import Host, is_idempotent
from resilient.http._timeouts import TOTAL_MARGIN, Bounding, timed_out, uncount
from resilient.httpx._errors import AttemptTimeoutError, HostCircuitOpenError, origin_of, port_of

if TYPE_CHECKING:
    import asyncio

    from resilient.http._breaker import BreakerLayer
    from resilient.http._propagation import Propagation
    from resilient.http._retry import RetryLayer
    from resilient.http._shared import Learned
    from resilient.http._timeouts import TimeoutLayer
    from resilient.retry import RetryState

__all__ = ["CLOSE", "SEND", "SLEEP", "Delivered", "Exchange", "Step"]

SEND: Final = "send"
SLEEP: Final = "sleep"
CLOSE: Final = "close"
#: What the transport does next: send the request, sleep, or close a response.
Step = tuple[Literal["send", "sleep", "close"], Any]
#: What the caller gets: the response, and the expiry (``time.monotonic``) of its body.
Delivered = tuple[httpx.Response, float]

#: Which of the attempt's httpx timeouts each httpx timeout error is.
_PHASES: Final = (
    (httpx.ConnectTimeout, "connect"),
    (httpx.ReadTimeout, "read"),
    (httpx.WriteTimeout, "write"),
    (httpx.PoolTimeout, "pool"),
)


class _Overruns:
    """Attempts under a learned bound, until they end or reach it: the watchdog, lazily.

    ``sweep(now)`` reports each attempt that reached its bound by ``now`` to
    its learner (``overran``), as aiohttp's watchdog does when the bound
    comes; it is called as each attempt starts, so a host whose attempts hang
    shows the symptoms before its next attempt is bounded. Guarded by the
    exchange's lock.
    """

    __slots__ = ("_at", "_next_at")

    def __init__(self) -> None:
        self._at: dict[object, tuple[float, Learned]] = {}  # attempt -> (bound's expiry, learner)
        self._next_at = math.inf

    def watch(self, key: object, at: float, learned: Learned) -> None:
        self._at[key] = (at, learned)
        if at < self._next_at:
            self._next_at = at

    def sweep(self, now: float) -> None:
        if now < self._next_at:
            return
        later = math.inf
        for key, (at, learned) in list(self._at.items()):
            if at <= now:
                del self._at[key]
                learned.overran()
            elif at < later:
                later = at
        self._next_at = later

    def end(self, key: object, now: float) -> None:
        """The attempt ended at ``now``: reported if it reached its bound and was not yet."""
        entry = self._at.pop(key, None)
        if entry is not None and now >= entry[0]:
            entry[1].overran()


class Exchange:
    """The layers of one client and the steps of a request through them (see the module).

    Args:
        retry, breaker, timeout, propagation: the layers of ``resilient.http``
            (None: the layer is left out); ``timeout`` is always there, for
            the total.
        threaded: the transport is shared by threads (the sync client).
    """

    __slots__ = (
        "_breaker",
        "_create",
        "_hosts",
        "_layers",
        "_lock",
        "_overruns",
        "_propagation",
        "_retry",
        "_statuses",
        "_threaded",
        "_timeout",
        "_total",
        "total",
    )

    def __init__(
        self,
        *,
        retry: RetryLayer | None,
        breaker: BreakerLayer | None,
        timeout: TimeoutLayer,
        propagation: Propagation | None,
        threaded: bool,
    ) -> None:
        self._retry = retry
        self._breaker = breaker
        self._timeout = timeout
        self._propagation = propagation
        self._threaded = threaded
        self._total = self.total = timeout.total  # seconds a request may take, retries included
        self._statuses = retry.statuses if retry is not None else frozenset[int]()
        self._layers = tuple(layer for layer in (retry, breaker, timeout) if layer is not None)
        # Mutable state: the host table (filled under _create) and each Host's
        # counts (changed under _lock; see the module docstring).
        self._hosts: dict[tuple[str, int | None], Host] = {}
        self._create = threading.Lock()
        # The async transport's lock is a no-op: one event loop, and no await under it.
        self._lock: AbstractContextManager[object] = threading.Lock() if threaded else nullcontext()
        self._overruns = _Overruns()  # under _lock

    def host(self, request: httpx.Request) -> Host:
        """The request's ``Host``, made (each layer filling its slots) if it is new."""
        url = request.url
        key = (url.host, port_of(url))
        found = self._hosts.get(key)
        if found is None:
            with self._create:
                found = self._hosts.get(key)
                if found is None:
                    found = Host(time.monotonic)
                    for layer in self._layers:
                        layer.adopt(found, request)
                    self._hosts[key] = found
        return found

    def steps(
        self, request: httpx.Request, task: asyncio.Task[Any] | None
    ) -> Generator[Step, Any, Delivered]:
        """The steps of ``request`` (see the module).

        ``task``: the caller's, so a breaker's ``cancel_on_open`` can cut it (None in threads).
        """
        retry, breaker, timeout = self._retry, self._breaker, self._timeout
        propagation, lock, overruns = self._propagation, self._lock, self._overruns
        host = self.host(request)
        clock = host.clock
        now = clock()
        expiry = now + self._total - TOTAL_MARGIN
        idempotent = is_idempotent(request)
        if retry is not None:
            with lock:
                if now >= host.deposit_at:  # the batch so far goes into the host's budget
                    retry.deposit(host, now)
                host.pending += 1
        # A streamed body (a generator) cannot be sent again.
        replayable = isinstance(request.stream, httpx.ByteStream)
        retryable = retry is not None and idempotent and replayable
        # As in session(): the attempt timeout only where a retry may follow.
        bounded = retry is not None and idempotent
        base: dict[str, float | None] = dict(request.extensions.get("timeout") or {})
        text = format_ms if self._threaded else host.deadline_text
        state: RetryState | None = None
        while True:
            br = breaker.pick(request, host) if breaker is not None else None
            with lock:
                overruns.sweep(now)
                bounding = timeout.plan(bounded, host, now, expiry, br)
                patience = None
                if bounding is not None:
                    patience = bounding[2]
                    if patience is not None:  # a learned bound: watched until it ends
                        key = object()
                        overruns.watch(key, now + bounding[0], patience[0])
            seconds = None if bounding is None else bounding[3]
            phases = _clipped(base, seconds)
            try:
                if bounding is not None and bounding[0] <= 0.0:
                    raise _timed_out(request, bounding[1], 0.0)  # never sent, never counted
                request.extensions["timeout"] = phases
                if propagation is not None:
                    propagation.write(request, seconds, text)
                if br is not None:
                    began = now if br._clock is clock else br._clock()
                    ticket = br._begin(began, task)
            except BaseException as exc:
                if patience is not None:
                    with lock:
                        overruns.end(key, -math.inf)
                        uncount(patience)  # the attempt will not be made
                if isinstance(exc, CircuitOpenError):
                    raise HostCircuitOpenError(exc.name, exc.retry_after, exc.reason) from None
                raise
            try:
                response: httpx.Response = yield (SEND, None)
            except BaseException as raised:
                # Inside out: the bound names a timeout, the breaker counts
                # the attempt, the retry layer decides whether to ask again.
                ended = clock()
                error: BaseException = raised
                if patience is not None:
                    with lock:
                        overruns.end(key, ended)
                if bounding is not None:
                    error = _judged(request, raised, bounding, phases)
                if br is not None:
                    error = settle_error(br, ticket, began, error, task, HostCircuitOpenError)
                if retry is None or not retry.worth_retrying(error):
                    _raise(error, raised)
                wait = None
                with lock:
                    host.streak += 1
                    if retryable and retry is not None:
                        state = _record(state, ended, None, error)
                        wait = retry.plan(state, None, ended, expiry, host)
                if wait is None:
                    _raise(error, raised)
                del raised, error
            else:
                ended = clock()
                if patience is not None:
                    with lock:
                        overruns.end(key, ended)
                status = response.status_code
                failed = is_failure(status)
                if br is not None:
                    br_ended = ended if br._clock is clock else br._clock()
                    br._end(ticket, began, br_ended, failed, task)
                wait = None
                with lock:
                    learned = host.learned
                    if bounded and not failed and learned is not None and ended >= learned.next_at:
                        learned.observe(ended - now, ended)  # a sample is due
                    if status not in self._statuses:
                        host.streak = 0
                    else:
                        host.streak += 1
                        if retryable and retry is not None:
                            state = _record(state, ended, response, None)
                            after = parse_retry_after(response.headers.get("Retry-After"))
                            wait = retry.plan(state, after, ended, expiry, host)
                if wait is None:
                    phases["read"] = _body_read(base.get("read"), expiry - clock())
                    return response, expiry
                yield (CLOSE, response)  # the connection goes back before we wait
            if wait > 0.0:
                yield (SLEEP, wait)
            assert state is not None  # a retry follows a recorded failure
            state.advance(wait)
            now = clock()


def _clipped(base: dict[str, float | None], seconds: float | None) -> dict[str, float | None]:
    """The attempt's httpx timeouts: each the tighter of the client's and ``seconds``."""
    phases = dict(base)
    if seconds is not None:
        for phase in ("connect", "read", "write", "pool"):
            own = phases.get(phase)
            phases[phase] = seconds if own is None or seconds < own else own
    return phases


def _body_read(own: float | None, left: float) -> float | None:
    """The body's read timeout: the client's, within the total and the deadline left."""
    bound = left
    ahead = remaining()
    if ahead is not None and ahead < bound:
        bound = ahead
    bound = max(bound, 0.0)
    if own is not None and own < bound:
        return own
    return None if math.isinf(bound) else bound


def _judged(
    request: httpx.Request,
    raised: BaseException,
    bounding: Bounding,
    phases: dict[str, float | None],
) -> BaseException:
    """What an attempt that raised fails with: a timeout at our bound is named for the bound."""
    if isinstance(raised, httpx.TimeoutException):
        _, kind, patience, in_force = bounding
        for error, phase in _PHASES:
            if isinstance(raised, error):
                if phases.get(phase) == in_force:  # the bound, not the client's own timeout
                    return _timed_out(request, kind if patience is None else patience[2], in_force)
                break
    return raised


def _timed_out(request: httpx.Request, bound: str, seconds: float) -> Exception:
    url = request.url
    return timed_out(bound, seconds, url.host, lambda: origin_of(url), AttemptTimeoutError)
