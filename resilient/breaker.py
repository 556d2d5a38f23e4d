"""The circuit breaker: a state machine over a sliding window.

CLOSED admits calls and counts their outcomes in a window; once the window
holds ``minimum_calls`` calls and the failure or slow-call rate reaches its
threshold, the breaker opens. OPEN rejects until ``open_until``; the next call
after that moves it to HALF_OPEN, which admits exactly ``half_open_calls``
probes and closes or reopens on their verdict. Each consecutive trip backs the
open duration off by ``open_backoff`` (with +-10% jitter, then the cap).
Adaptive mode stays CLOSED and drops calls with the SRE throttle's
probability instead (see ``adaptive.py``). FORCED_OPEN and DISABLED are
manual.

How it is built:

- Deciding is split from doing. Every decision is a ``*_locked`` method that
  runs under ``self._lock``, never awaits, never calls user code and returns
  the effects (events to deliver, tasks to cancel); the caller carries them
  out after releasing the lock. The lock is a plain thread lock, held for a
  few microseconds on the slow path only; the success path of a CLOSED
  breaker takes no lock.
- The success path: ``now < self._fast_until`` says "CLOSED, nothing to judge,
  no bucket or slot boundary crossed" in one comparison. ``_fast_until`` is
  recomputed under the lock whenever anything changes.
- Tickets: admission hands out an int. ``>= 0`` is an ordinary call (its
  ``InFlight`` slot), ``<= -2`` is a probe (``-2 - serial``), ``-1`` is a call
  through a DISABLED breaker (not counted). A probe's serial is looked up in
  the current HALF_OPEN round: a probe from an earlier round, or a call
  admitted while CLOSED that ends during HALF_OPEN, counts in the window but
  never decides the probes' verdict.
- What counts (see docs/concepts/breaker.md): a caller's cancellation never;
  a ``RejectedError`` from beneath never; a deadline expiry only when the call
  started with at least ``slow_call_duration`` of budget left (the
  dependency had a fair chance); anything that does not count gives a
  probe's permit back.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from resilient import deadline as _deadline
from resilient.adaptive import FORCE_PASS, drop_probability
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError, DeadlineExceeded, RejectedError
from resilient.events import CallRejected, ConfigChanged, Event, Listener, StateChanged, deliver
from resilient.fleet import FleetLink, FleetView, Outbox, StoreLink
from resilient.latency import AutoSlow, SlowThreshold
from resilient.state import State
from resilient.window import (
    FAILURE,
    REQUESTS,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    CountWindow,
    InFlight,
    TimeWindow,
)

RING = InFlight.RING

__all__ = ["OUTCOMES", "CallObserver", "CircuitBreaker", "Permit", "Snapshot", "fair_budget"]

P = ParamSpec("P")
R = TypeVar("R")

NAME_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,200}\Z")
JITTER = 0.1  # the open duration varies by at most +-10%

UNTRACKED = -1  # the ticket of a call through a DISABLED breaker
_PROBE = -2  # probe tickets are _PROBE - serial

# How a call ended, as the breaker judges it.
_COUNT_SUCCESS = 0
_COUNT_FAILURE = 1
_RELEASE = 2  # not counted; a probe's permit goes back

#: What an observer (see ``observe_calls``) is told of a call that ended.
OUTCOMES = ("success", "slow_success", "failure", "slow_failure", "not_counted")
_OUTCOME_NAMES = (("success", "slow_success"), ("failure", "slow_failure"))
CallObserver = Callable[[str, float], object]

_REJECTION_REASONS = {
    State.OPEN: "open",
    State.FORCED_OPEN: "forced open",
    State.HALF_OPEN: "half-open, probes taken",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A breaker's state and window at one moment.

    ``calls``, ``failures`` and ``slow_calls`` include calls still running past
    ``slow_call_duration`` (as slow calls). ``requests`` counts admission
    attempts in adaptive mode (drops included). ``open_until`` is epoch
    seconds, or ``None`` when the breaker is not OPEN.
    """

    name: str
    state: State
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    open_until: float | None
    running: int
    requests: int
    trips: int
    drop_probability: float
    degraded: bool = False  # a shared store is unreachable: deciding on local state


class CircuitBreaker:
    """A sliding-window circuit breaker for sync and async calls.

    Args:
        name: ``[A-Za-z0-9._:/-]{1,200}``; the key operators use in etcd and Redis.
        config: a ``BreakerConfig`` (defaults if omitted).
        record_exceptions: exception classes that count as failures; other
            exceptions count as successes (the dependency answered).
        ignore_exceptions: exception classes never counted (checked first).
        result_is_failure: a predicate on the return value, e.g.
            ``lambda r: r.status >= 500``.
        clock: monotonic seconds (injected by tests).
        wall: epoch seconds, for ``open_until`` in snapshots and events.
        rng: uniform floats in [0, 1), for jitter and adaptive drops.
        auto_slow: how ``slow_call_duration="auto"`` is learned (``AutoSlow``).
        deadline_is_fair: ``(budget, slow_call_duration) -> bool``: does a
            caller's deadline that ran out count as a failure, given the
            budget the call started with? Default: ``budget >=
            slow_call_duration`` (the fair-budget rule); ``lambda b, s: True``
            counts every expiry, ``lambda b, s: False`` none.

    Use it as a decorator (sync or async functions), with ``with`` /
    ``async with``, or through ``acquire()`` for code that cannot be wrapped.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        record_exceptions: Iterable[type[BaseException]] = (Exception,),
        ignore_exceptions: Iterable[type[BaseException]] = (),
        result_is_failure: Callable[[Any], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        auto_slow: AutoSlow | None = None,
        deadline_is_fair: Callable[[float, float], bool] | None = None,
    ) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"breaker name must match [A-Za-z0-9._:/-]{{1,200}}, got {name!r}")
        config = config if config is not None else BreakerConfig()
        if not isinstance(config, BreakerConfig):
            raise TypeError(f"config must be a BreakerConfig, got {type(config).__name__}")
        self.name = name
        self._record = tuple(record_exceptions)
        self._ignore = tuple(ignore_exceptions)
        self._result_is_failure = result_is_failure
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._listeners: tuple[Listener, ...] = ()
        self._observers: tuple[CallObserver, ...] = ()
        self._auto_slow = auto_slow
        self._deadline_is_fair = deadline_is_fair or fair_budget
        self._entered: ContextVar[tuple[Permit, ...]] = ContextVar(f"resilient.{name}", default=())

        # --- mutable state; changed only under the lock (the hot path only adds counts) ---
        self._lock = threading.Lock()
        now = clock()
        self._config = config
        self._state = State.CLOSED
        self._trips = 0  # consecutive trips, for the open duration's backoff
        self._open_until = -math.inf  # monotonic
        self._open_until_wall: float | None = None
        self._probe_serials = itertools.count()
        self._probes: dict[int, float] = {}  # running probes of this round: serial -> start
        self._probes_left = 0  # permits not yet handed out this round
        self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._slow = SlowThreshold(config.slow_call_duration, self._auto_slow)
        self._slow_seconds = self._slow.seconds  # read on the success path
        self._window = _new_window(config)
        self._window.advance(now)
        self._flight = InFlight(self._slow.seconds, now)
        # cancel_on_open: running async calls (task -> start) and the ones we cut.
        self._running: dict[asyncio.Task[Any], float] | None = {} if config.cancel_on_open else None
        self._cut: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # never pins a task
        self._fast_until = -math.inf  # see the module docstring
        self._last_pass = now  # adaptive mode: when a call was last admitted
        self._fleet: FleetLink | None = None  # set when a store shares this breaker
        #: the hub's namespace, for stores (None outside a hub)
        self.namespace: str | None = None
        with self._lock:
            self._refresh_locked(now)

    # ------------------------------------------------------------------ public surface

    @property
    def state(self) -> State:
        """The state now (an OPEN breaker whose time is up reads HALF_OPEN only after
        the next call moves it)."""
        return self._state

    @property
    def config(self) -> BreakerConfig:
        return self._config

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` after each transition, rejection or config change."""
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)

    def observe_calls(self, observer: CallObserver) -> None:
        """Call ``observer(outcome, seconds)`` after every call that ends.

        ``outcome`` is one of ``OUTCOMES``; the observer runs outside the lock,
        in the caller's thread, so it must be quick (telemetry records a
        histogram). Without observers the success path only tests for them.
        """
        self._observers = (*self._observers, observer)

    def unobserve_calls(self, observer: CallObserver) -> None:
        """Stop calling ``observer``."""
        self._observers = tuple(o for o in self._observers if o != observer)

    @property
    def slow_call_seconds(self) -> float:
        """The slow-call limit in force (learned, with ``slow_call_duration="auto"``)."""
        return self._slow_seconds

    def _learn(self, duration: float, now: float) -> None:
        """Feed "auto" a healthy call that ended at ``now`` (outside the lock).

        The success paths call it only when a sample is due (``now >=
        self._slow.next_at``, never for a fixed limit).
        """
        if self._slow.observe(duration, now):
            with self._lock:
                self._slow_seconds = self._slow.seconds
                self._flight = self._flight.retime(self._slow.seconds, now)
                self._refresh_locked(now)

    def snapshot(self) -> Snapshot:
        now = self._clock()
        with self._lock:
            self._upkeep_locked(now)
            t = self._window.totals()
            hung = self._flight.old
            calls, slow = t.calls + hung, t.slow + hung
            p = self._drop_probability_locked() if self._config.mode == "adaptive" else 0.0
            return Snapshot(
                name=self.name,
                state=self._state,
                calls=calls,
                failures=t.failures,
                slow_calls=slow,
                failure_rate=t.failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                open_until=self._open_until_wall if self._state is State.OPEN else None,
                running=self._flight.running + len(self._probes),
                requests=t.requests,
                trips=self._trips,
                drop_probability=p,
                degraded=self._fleet is not None and self._fleet.degraded,
            )

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (``retry_after`` is ``math.inf``)."""
        self._manual(State.FORCED_OPEN, "forced open")

    def disable(self) -> None:
        """Admit every call and count nothing until ``reset()``."""
        self._manual(State.DISABLED, "disabled")

    def reset(self) -> None:
        """Back to CLOSED with an empty window and no backoff."""
        self._manual(State.CLOSED, "reset")

    def update_config(self, config: BreakerConfig, *, revision: int | None = None) -> None:
        """Replace the config atomically; what a hot reload calls.

        State, ``open_until``, the trip count and the window's statistics are
        kept; only a change of the window's shape (window, window_size,
        buckets) starts an empty window. Never resets the breaker.
        """
        if not isinstance(config, BreakerConfig):
            raise TypeError(f"config must be a BreakerConfig, got {type(config).__name__}")
        now = self._clock()
        with self._lock:
            old = self._config
            if config == old:
                return
            self._config = config
            if config.window_shape() != old.window_shape():
                self._fresh_window_locked(now)
            if config.slow_call_duration != old.slow_call_duration:
                self._slow = SlowThreshold(config.slow_call_duration, self._auto_slow)
                self._slow_seconds = self._slow.seconds
                self._flight = self._flight.retime(self._slow.seconds, now)
            if config.cancel_on_open != old.cancel_on_open:
                self._running = {} if config.cancel_on_open else None
            if self._state is State.HALF_OPEN:
                handed_out = old.half_open_calls - self._probes_left
                self._probes_left = max(0, config.half_open_calls - handed_out)
            effects: _Effects = []
            if self._state is State.CLOSED:
                self._upkeep_locked(now)
                self._judge_locked(now, effects)  # the new thresholds apply at once
            self._refresh_locked(now)
        if self._listeners:  # the cause before its effects
            deliver(self._listeners, ConfigChanged(self.name, old, config, revision))
        if effects:
            self._carry_out(effects)

    # ------------------------------------------------------------------ store seam

    def link_store(self, link: StoreLink) -> None:
        """Share this breaker through a store (called by the store's ``attach``)."""
        with self._lock:
            self._fleet = FleetLink(link)

    def sync_out(self) -> Outbox | None:
        """What to send the store now (counts, probe outcomes, requests), or None."""
        now = self._clock()
        with self._lock:
            fleet = self._fleet
            if fleet is None:
                return None
            self._upkeep_locked(now)
            window, cfg = self._window, self._config
            deltas: tuple[tuple[int, int, int, int, int], ...] = ()
            if isinstance(window, TimeWindow):
                deltas = tuple((age, d[0], d[1], d[2], d[3]) for age, d in fleet.unsent(window))
            probes = (
                (
                    self._probe_calls - fleet.probe_calls,
                    self._probe_failures - fleet.probe_failures,
                    self._probe_slow - fleet.probe_slow,
                )
                if fleet.round
                else (0, 0, 0)
            )
            wanted = deltas or any(probes) or fleet.tokens_wanted or fleet.manual or fleet.trip
            if not wanted and not fleet.degraded:  # degraded: ask anyway, to hear the fleet again
                return None
            box = Outbox(
                name=self.name,
                window_width=window.width if isinstance(window, TimeWindow) else 0.0,
                buckets=window.buckets if isinstance(window, TimeWindow) else 0,
                deltas=deltas,
                probe_calls=probes[0],
                probe_failures=probes[1],
                probe_slow=probes[2],
                probe_generation=fleet.generation,
                tokens_wanted=fleet.tokens_wanted,
                manual=fleet.manual,
                trip=fleet.trip,
                config=cfg,
                jitter=JITTER * (2.0 * self._rng() - 1.0),
            )
            if isinstance(window, TimeWindow):
                fleet.mark_sent(window)
                fleet.sent_head = window.head
            fleet.probe_calls += probes[0]
            fleet.probe_failures += probes[1]
            fleet.probe_slow += probes[2]
            fleet.manual = fleet.trip = None
            return box

    def sync_in(self, view: FleetView) -> None:
        """Apply the fleet's answer (or a published transition)."""
        now = self._clock()
        effects: _Effects = []
        with self._lock:
            fleet = self._fleet
            if fleet is None:
                return
            fleet.degraded = False
            fleet.failed_syncs = 0
            fleet.heard = True
            fleet.calls, fleet.failures, fleet.slow = view.calls, view.failures, view.slow
            if view.generation > fleet.generation:  # generations only grow; older views are late
                fleet.generation = view.generation
                self._adopt_locked(view, now, effects)
            if view.tokens and self._state is State.HALF_OPEN and fleet.round:
                self._probes_left += view.tokens
                fleet.tokens_wanted = max(0, fleet.tokens_wanted - view.tokens)
            self._refresh_locked(now)
        self._carry_out(effects)

    def sync_failed(self, outbox: Outbox | None = None) -> None:
        """The store could not be reached: decide on local state until it answers again.

        ``outbox`` (what could not be sent) is kept, to be sent at the next sync.
        """
        with self._lock:
            fleet = self._fleet
            if fleet is None:
                return
            if outbox is not None:
                fleet.unmark(outbox, fleet.sent_head)
            fleet.failed_syncs += 1
            if fleet.failed_syncs == 2 and self._state is State.HALF_OPEN and fleet.round:
                # No fleet to grant permits (twice: one slow sync is not an
                # outage): probe locally so half-open cannot stick.
                handed_out = len(self._probes) + self._probe_calls
                self._probes_left = max(0, self._config.half_open_calls - handed_out)
                fleet.tokens_wanted = 0
            fleet.degraded = True

    def _adopt_locked(self, view: FleetView, now: float, effects: _Effects) -> None:
        """Take a fleet transition for this process (its own local trips stand)."""
        fleet = self._fleet
        assert fleet is not None
        state = State(view.state)
        reason = "fleet"
        if state is State.OPEN and view.open_until is not None:
            if self._state is State.CLOSED or fleet.round or self._state is State.HALF_OPEN:
                self._trips = view.trips
                left = max(0.0, view.open_until - view.now)
                self._open_for_locked(left, "the fleet opened", now, effects)
                fleet.round = True
        elif state is State.HALF_OPEN:
            if self._state in (State.OPEN, State.CLOSED) and (
                fleet.round or self._state is State.CLOSED
            ):
                fleet.round = True
                self._transition_locked(State.HALF_OPEN, "the fleet is probing", now, effects)
        elif state is State.CLOSED:
            if (fleet.round and self._state in (State.OPEN, State.HALF_OPEN)) or (
                self._state in (State.FORCED_OPEN, State.DISABLED)
            ):
                self._trips = 0
                self._fresh_window_locked(now)
                self._transition_locked(State.CLOSED, "the fleet closed", now, effects)
        elif state is not self._state:
            self._transition_locked(state, f"{reason}: {state.value}", now, effects)

    # ------------------------------------------------------------------ decorator

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):
            return self._wrap_async(fn)
        return self._wrap_sync(fn)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        clock, judge = self._clock, self._result_is_failure

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            # The success path is written out here (and in the async twin), not
            # called: a method call would cost a fifth of its budget.
            now = clock()
            if now < self._fast_until:
                flight = self._flight
                ticket = flight.slot
                flight.counts[ticket % RING] += 1
            else:
                ticket = self._admit(now)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_error(ticket, now, exc)
                raise
            end = clock()
            flight = self._flight
            if judge is not None and judge(result):
                self._settle(ticket, now, end, _COUNT_FAILURE)
            elif (
                end < self._fast_until
                and end - now < self._slow_seconds
                and ticket >= flight.oldest
            ):
                flight.counts[ticket % RING] -= 1
                window = self._window
                window.counts[window.pos] += 1  # a success (see the windows)
                if end >= self._slow.next_at:
                    self._learn(end - now, end)
                if self._observers:
                    self._observe("success", end - now)
            else:
                self._settle(ticket, now, end, _COUNT_SUCCESS)
            return result

        return call

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        clock, judge = self._clock, self._result_is_failure

        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            now = clock()
            watch = None
            if now < self._fast_until:
                flight = self._flight
                ticket = flight.slot
                flight.counts[ticket % RING] += 1
            else:
                ticket = self._admit(now)
                if ticket <= _PROBE:
                    # A probe that hangs is judged slow by a timer: nobody else may call.
                    watch = self._watch_probe()
            running = self._running
            if running is not None:
                task = asyncio.current_task()
                if task is not None:
                    running[task] = now
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if watch is not None:
                    watch.cancel()
                if running is not None:
                    self._forget_task(running)
                    if isinstance(exc, asyncio.CancelledError) and self._was_cut():
                        self._settle(ticket, now, clock(), _COUNT_FAILURE)
                        raise self._rejection(clock(), "cut: the circuit opened") from None
                self._settle_error(ticket, now, exc)
                raise
            if watch is not None:
                watch.cancel()
            if running is not None:
                self._forget_task(running)
            end = clock()
            flight = self._flight
            if judge is not None and judge(result):
                self._settle(ticket, now, end, _COUNT_FAILURE)
            elif (
                end < self._fast_until
                and end - now < self._slow_seconds
                and ticket >= flight.oldest
            ):
                flight.counts[ticket % RING] -= 1
                window = self._window
                window.counts[window.pos] += 1  # a success (see the windows)
                if end >= self._slow.next_at:
                    self._learn(end - now, end)
                if self._observers:
                    self._observe("success", end - now)
            else:
                self._settle(ticket, now, end, _COUNT_SUCCESS)
            return result

        return call

    def _watch_probe(self) -> asyncio.TimerHandle:
        # Just past the limit, so the probe is old enough when the timer runs.
        delay = self._slow_seconds * 1.01
        return asyncio.get_running_loop().call_later(delay, self._judge_probes_now)

    def _judge_probes_now(self) -> None:
        now = self._clock()
        effects: _Effects = []
        with self._lock:
            self._judge_probes_locked(now, effects)
        self._carry_out(effects)

    # ------------------------------------------------------------------ one call, unwrapped

    def _begin(self, now: float, task: asyncio.Task[Any] | None = None) -> int:
        """Admit a call that starts at ``now``: its ticket (or raise ``CircuitOpenError``).

        The decorator's admission for drivers that cannot wrap a function
        (``acquire()``, the HTTP pipeline): a probe gets its hung-probe timer,
        left to run (once the probe has ended it judges nothing), and with
        ``cancel_on_open`` an async call's ``task`` is remembered so an
        opening can cut it. Settle with ``_end`` (or ``_end_error``).
        """
        if now < self._fast_until:
            flight = self._flight
            ticket = flight.slot
            flight.counts[ticket % RING] += 1
        else:
            ticket = self._admit(now)
            if ticket <= _PROBE and task is not None:
                self._watch_probe()
        running = self._running
        if running is not None and task is not None:
            running[task] = now
        return ticket

    def _end(
        self,
        ticket: int,
        started: float,
        ended: float,
        failed: bool = False,
        task: asyncio.Task[Any] | None = None,
    ) -> None:
        """Settle a call begun by ``_begin`` that returned (a success unless ``failed``)."""
        if task is not None and self._running is not None:
            self._running.pop(task, None)
        if (
            not failed
            and ended < self._fast_until
            and ended - started < self._slow_seconds
            and ticket >= self._flight.oldest
        ):
            # The success path, as in the decorators (written out there, not called).
            self._flight.counts[ticket % RING] -= 1
            window = self._window
            window.counts[window.pos] += 1
            if ended >= self._slow.next_at:
                self._learn(ended - started, ended)
            for observer in self._observers:
                observer("success", ended - started)
        else:
            self._settle(ticket, started, ended, _COUNT_FAILURE if failed else _COUNT_SUCCESS)

    def _end_error(
        self,
        ticket: int,
        started: float,
        exc: BaseException,
        task: asyncio.Task[Any] | None = None,
    ) -> CircuitOpenError | None:
        """Settle a call begun by ``_begin`` that raised ``exc``.

        Returns the rejection to raise instead when the breaker itself
        cancelled ``task`` on opening (``cancel_on_open``), else None.
        """
        if task is not None and self._running is not None:
            self._running.pop(task, None)
            if isinstance(exc, asyncio.CancelledError) and self._was_cut():
                self._settle(ticket, started, self._clock(), _COUNT_FAILURE)
                return self._rejection(self._clock(), "cut: the circuit opened")
        self._settle_error(ticket, started, exc)
        return None

    # ------------------------------------------------------------------ context managers

    def acquire(self) -> Permit:
        """Admit one call (or raise CircuitOpenError) and return its permit.

        For code that cannot be wrapped: report the outcome exactly once with
        ``permit.success()``, ``permit.failure()``, ``permit.error(exc)`` or
        ``permit.release()`` (not counted).
        """
        now = self._clock()
        return Permit(self, self._begin(now), now)

    def __enter__(self) -> CircuitBreaker:
        permit = self.acquire()
        self._entered.set((*self._entered.get(), permit))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._entered.get()
        permit = stack[-1]
        self._entered.set(stack[:-1])
        if exc is None:
            permit.success()
        else:
            permit.error(exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ outcomes

    def _settle_error(self, ticket: int, started: float, exc: BaseException) -> None:
        """Classify an exception from the call and record it."""
        self._settle(ticket, started, self._clock(), self._classify(exc, started))

    def _classify(self, exc: BaseException, started: float) -> int:
        if isinstance(exc, asyncio.CancelledError):
            scope = _deadline._current()
            if scope is None or not scope.fired:
                return _RELEASE  # the caller's own cancellation
            return self._deadline_verdict(scope, started)
        if isinstance(exc, DeadlineExceeded):
            scope = _deadline._current()
            if scope is None:
                return _COUNT_FAILURE  # the call's own deadline: a timeout like any other
            return self._deadline_verdict(scope, started)
        if isinstance(exc, (RejectedError, self._ignore)):
            return _RELEASE
        if isinstance(exc, self._record):
            return _COUNT_FAILURE
        if isinstance(exc, Exception):
            return _COUNT_SUCCESS  # an answer the caller treats as an error
        return _RELEASE  # KeyboardInterrupt, SystemExit, GeneratorExit: not the dependency

    def _deadline_verdict(self, scope: _deadline.deadline, started: float) -> int:
        """The fair-budget rule (or the caller's own): did the dependency have a fair chance?"""
        budget = scope.remaining() + (self._clock() - started)
        fair = self._deadline_is_fair(budget, self._slow_seconds)
        return _COUNT_FAILURE if fair else _RELEASE

    def _settle(self, ticket: int, started: float, ended: float, verdict: int) -> None:
        if ticket == UNTRACKED:
            return
        if ticket >= 0:
            self._flight.end(ticket)
        with self._lock:
            effects = self._record_locked(ticket, started, ended, verdict)
        if effects:
            self._carry_out(effects)
        if (
            verdict == _COUNT_SUCCESS
            and ended >= self._slow.next_at
            and ended - started < self._slow_seconds
        ):
            self._learn(ended - started, ended)
        if self._observers:
            duration = ended - started
            if verdict == _RELEASE:
                outcome = "not_counted"
            else:
                slow = duration >= self._slow_seconds
                outcome = _OUTCOME_NAMES[verdict == _COUNT_FAILURE][slow]
            self._observe(outcome, duration)

    def _observe(self, outcome: str, duration: float) -> None:
        for observer in self._observers:
            observer(outcome, duration)

    def _record_locked(self, ticket: int, started: float, ended: float, verdict: int) -> _Effects:
        effects: _Effects = []
        self._upkeep_locked(ended)
        duration = ended - started
        slow = duration >= self._slow.seconds
        if verdict == _RELEASE:
            if ticket <= _PROBE and self._probes.pop(_PROBE - ticket, None) is not None:
                self._probes_left += 1  # the permit goes back; this probe decides nothing
            return effects
        failed = verdict == _COUNT_FAILURE
        self._window.add(
            (SLOW_FAILURE if slow else FAILURE) if failed else (SLOW_SUCCESS if slow else SUCCESS)
        )
        if ticket <= _PROBE and self._probes.pop(_PROBE - ticket, None) is not None:
            self._probe_calls += 1  # a probe of this round: it votes
            self._probe_failures += failed
            self._probe_slow += slow
            self._judge_probes_locked(ended, effects)
        elif self._state is State.CLOSED:
            # Judged at every end off the success path: a failure, a slow call,
            # or a success that brings a window with failures to minimum_calls
            # (a probe of a finished round ending now is an ordinary call).
            self._judge_locked(ended, effects)
        self._refresh_locked(ended)
        return effects

    # ------------------------------------------------------------------ admission (slow path)

    def _admit(self, now: float) -> int:
        state = self._state
        if state is State.FORCED_OPEN or (state is State.OPEN and now < self._open_until):
            raise self._rejection(now)  # nothing to decide: no lock
        with self._lock:
            effects: _Effects = []
            ticket = self._admit_locked(now, effects)
        if effects:
            self._carry_out(effects)
        if ticket is None:
            raise self._rejection(now)
        return ticket

    def _admit_locked(self, now: float, effects: _Effects) -> int | None:
        """Admit (a ticket) or reject (None) a call arriving at ``now``."""
        self._upkeep_locked(now)
        if self._state is State.CLOSED:
            cfg = self._config
            if cfg.mode == "adaptive":
                if self._throttled_locked(now):
                    self._window.add(REQUESTS)  # a drop is an attempt too
                    return None
                self._last_pass = now
                self._window.admitted()
            elif self._judge_locked(now, effects):
                return None
            ticket = self._flight.start()
            self._refresh_locked(now)
            return ticket
        if self._state is State.OPEN and now >= self._open_until:
            self._transition_locked(State.HALF_OPEN, "open duration elapsed", now, effects)
        if self._state is State.HALF_OPEN:
            self._judge_probes_locked(now, effects)
            if self._state is State.HALF_OPEN and self._probes_left > 0:
                self._probes_left -= 1
                serial = next(self._probe_serials)
                self._probes[serial] = now
                return _PROBE - serial
            return None
        if self._state is State.DISABLED:
            return UNTRACKED
        return None  # OPEN (time not up) or FORCED_OPEN

    def _rejection(self, now: float, reason: str | None = None) -> CircuitOpenError:
        state = self._state
        if state is State.OPEN:
            retry_after = max(0.0, self._open_until - now)
        elif state is State.FORCED_OPEN:
            retry_after = math.inf
        else:
            retry_after = 0.0  # HALF_OPEN with its probes taken, or an adaptive drop
        if reason is None:
            reason = _REJECTION_REASONS.get(state, "throttled")
        if self._listeners:
            deliver(self._listeners, CallRejected(self.name, state, retry_after, reason))
        return CircuitOpenError(self.name, retry_after, reason)

    # ------------------------------------------------------------------ judging (locked)

    def _upkeep_locked(self, now: float) -> None:
        if now >= self._fast_until:
            self._window.advance(now)
            self._flight.advance(now)

    def _drop_probability_locked(self) -> float:
        cfg, window = self._config, self._window
        t = window.totals()
        return drop_probability(
            t.requests, t.accepts, cfg.adaptive_k, cfg.minimum_calls, window.healthy_streak()
        )

    def _throttled_locked(self, now: float) -> bool:
        """Adaptive mode: drop this call? (Never when none passed for FORCE_PASS.)"""
        p = self._drop_probability_locked()
        if p <= 0.0 or now - self._last_pass >= FORCE_PASS:
            return False
        return self._rng() < p

    def _judge_locked(self, now: float, effects: _Effects) -> bool:
        """CLOSED: open if a window (with hung calls as slow) crosses a threshold.

        The fleet's window is judged first, at every judgement: when it
        crosses, the store is asked to open the fleet at once (decided there,
        atomically) and this process opens without waiting for it. Only then
        our own window: its crossing opens this process alone, and wakes the
        store so the fleet weighs these counts now, not at the next flush.
        """
        cfg = self._config
        if cfg.mode == "adaptive":
            return False
        hung = self._flight.old
        fleet, window = self._fleet, self._window
        if (
            fleet is not None
            and fleet.heard
            and not fleet.degraded
            and isinstance(window, TimeWindow)
        ):
            calls, failures, slow = fleet.combined(window)
            reason = self._crossing(calls + hung, failures, slow + hung)
            if reason is not None:
                fleet.trip = f"fleet {reason}"
                self._open_locked(fleet.trip, now, effects, fleet_round=True)
                effects.append(fleet)
                return True
        t = window.totals()
        reason = self._crossing(t.calls + hung, t.failures, t.slow + hung)
        if reason is None:
            return False
        self._open_locked(reason, now, effects)  # our own window: this process alone
        if fleet is not None:
            effects.append(fleet)
        return True

    def _crossing(self, calls: int, failures: int, slow: int) -> str | None:
        """Why these counts open the breaker, or None."""
        cfg = self._config
        if calls < cfg.count_window_minimum or calls == 0:
            return None
        if failures / calls >= cfg.failure_rate_threshold:
            return f"failure rate {failures / calls:.0%} >= {cfg.failure_rate_threshold:.0%}"
        if slow / calls >= cfg.slow_call_rate_threshold:
            return f"slow-call rate {slow / calls:.0%} >= {cfg.slow_call_rate_threshold:.0%}"
        return None

    def _judge_probes_locked(self, now: float, effects: _Effects) -> None:
        """HALF_OPEN: decide as soon as the verdict is certain.

        A probe running past ``slow_call_duration`` is judged slow now; when it
        ends later it is no longer a probe of this round and decides nothing.
        """
        if self._state is not State.HALF_OPEN:
            return
        limit = now - self._slow.seconds
        hung = [serial for serial, started in self._probes.items() if started <= limit]
        for serial in hung:
            del self._probes[serial]
            self._probe_calls += 1
            self._probe_slow += 1
        if hung and self._running:  # cancel_on_open: a probe judged slow fails fast
            effects.extend(task for task, started in self._running.items() if started <= limit)
        fleet = self._fleet
        if fleet is not None and fleet.round and not fleet.degraded:
            if self._probe_calls != fleet.probe_calls:
                effects.append(fleet)  # the fleet's verdict, not ours: send the outcomes
            return
        cfg = self._config
        n = cfg.half_open_calls
        undecided = n - self._probe_calls
        failures, slow = self._probe_failures, self._probe_slow
        if failures / n >= cfg.failure_rate_threshold:
            self._open_locked(f"{failures} of {n} probes failed", now, effects)
        elif slow / n >= cfg.slow_call_rate_threshold:
            self._open_locked(f"{slow} of {n} probes were slow", now, effects)
        elif (failures + undecided) / n < cfg.failure_rate_threshold and (
            slow + undecided
        ) / n < cfg.slow_call_rate_threshold:
            self._trips = 0
            self._fresh_window_locked(now)
            self._transition_locked(State.CLOSED, "probes succeeded", now, effects)

    def _open_locked(
        self, reason: str, now: float, effects: _Effects, *, fleet_round: bool = False
    ) -> None:
        cfg = self._config
        self._trips += 1
        duration = cfg.open_duration * cfg.open_backoff ** (self._trips - 1)
        duration *= 1.0 + JITTER * (2.0 * self._rng() - 1.0)  # jitter before the cap
        self._open_for_locked(min(duration, cfg.open_duration_max), reason, now, effects)
        if self._fleet is not None:
            self._fleet.round = fleet_round

    def _open_for_locked(self, duration: float, reason: str, now: float, effects: _Effects) -> None:
        self._open_until = now + duration
        self._open_until_wall = self._wall() + duration
        self._transition_locked(State.OPEN, reason, now, effects)
        if self._running:
            late = now - self._slow.seconds
            effects.extend(task for task, started in self._running.items() if started <= late)

    def _transition_locked(self, new: State, reason: str, now: float, effects: _Effects) -> None:
        old = self._state
        self._state = new
        self._probes.clear()
        self._probe_calls = self._probe_failures = self._probe_slow = 0
        self._probes_left = self._config.half_open_calls if new is State.HALF_OPEN else 0
        fleet = self._fleet
        if fleet is not None:
            fleet.probe_calls = fleet.probe_failures = fleet.probe_slow = 0
            fleet.tokens_wanted = 0
            if new is State.HALF_OPEN and fleet.round and not fleet.degraded:
                # The fleet admits half_open_calls probes in all: ask it for permits.
                fleet.tokens_wanted, self._probes_left = self._probes_left, 0
                effects.append(fleet)
            elif new is State.CLOSED:
                fleet.round = False
        if new is not State.OPEN:
            self._open_until = -math.inf
            self._open_until_wall = None
        self._fast_until = -math.inf
        self._refresh_locked(now)
        if self._listeners and new is not old:
            effects.append(StateChanged(self.name, old, new, reason, self._wall()))

    def _fresh_window_locked(self, now: float) -> None:
        """Start an empty window (of the config in force); nothing of it is unsent."""
        self._window = window = _new_window(self._config)
        window.advance(now)
        if self._fleet is not None and isinstance(window, TimeWindow):
            self._fleet.mark_sent(window)

    def _refresh_locked(self, now: float) -> None:
        """Recompute how long the success path may skip the lock."""
        cfg = self._config
        if self._state is not State.CLOSED or cfg.mode == "adaptive" or self._judging_pending():
            self._fast_until = -math.inf
        else:
            self._fast_until = min(self._window.next_boundary(), self._flight.next_event())

    def _judging_pending(self) -> bool:
        """Could a success alone make the window trip? Only while it fills up with
        failures or slow calls in it, or with calls running past the slow limit."""
        if self._flight.old:
            return True
        t = self._window.totals()
        return (t.failures or t.slow) > 0 and t.calls < self._config.count_window_minimum

    def _manual(self, state: State, reason: str) -> None:
        now = self._clock()
        effects: _Effects = []
        with self._lock:
            if state is State.CLOSED:
                self._trips = 0
                self._fresh_window_locked(now)
            self._transition_locked(state, reason, now, effects)
            if state is State.CLOSED and not effects and self._listeners:
                effects.append(StateChanged(self.name, state, state, reason, self._wall()))
            if self._fleet is not None:
                self._fleet.manual = state.value  # manual states apply fleet-wide
                effects.append(self._fleet)
        self._carry_out(effects)

    # ------------------------------------------------------------------ effects

    def _carry_out(self, effects: _Effects) -> None:
        """Deliver events and cut late calls, outside the lock."""
        events = [e for e in effects if not isinstance(e, asyncio.Task | FleetLink)]
        for effect in effects:
            # A task may be listed twice (judged slow, then cut on opening): cut once.
            if isinstance(effect, asyncio.Task) and not effect.done() and effect not in self._cut:
                self._cut.add(effect)
                _cancel_soon(effect)
        if any(isinstance(effect, FleetLink) for effect in effects) and self._fleet is not None:
            self._fleet.store.wake()
        if events and self._listeners:
            for event in events:
                deliver(self._listeners, event)

    def _forget_task(self, running: dict[asyncio.Task[Any], float]) -> None:
        task = asyncio.current_task()
        if task is not None:
            running.pop(task, None)

    def _was_cut(self) -> bool:
        """Was this task cancelled by the breaker (and by nobody else)?"""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"


_Effects = list[Event | asyncio.Task[Any] | FleetLink]  # FleetLink: wake the store


def fair_budget(budget: float, slow_call_duration: float) -> bool:
    """The default deadline rule: the call started with ``slow_call_duration`` to spare."""
    return budget >= slow_call_duration


def _new_window(config: BreakerConfig) -> TimeWindow | CountWindow:
    if config.window == "count":
        return CountWindow(int(config.window_size))
    return TimeWindow(config.window_size, config.buckets)


def _cancel_soon(task: asyncio.Task[Any]) -> None:
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:
        loop.call_soon_threadsafe(task.cancel)


class Permit:
    """One admitted call, to be settled exactly once (see ``CircuitBreaker.acquire``)."""

    __slots__ = ("_breaker", "_settled", "_started", "_ticket")

    def __init__(self, breaker: CircuitBreaker, ticket: int, started: float) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self._started = started
        self._settled = False

    def _once(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    def success(self) -> None:
        if self._once():
            br = self._breaker
            br._end(self._ticket, self._started, br._clock())

    def failure(self) -> None:
        if self._once():
            br = self._breaker
            br._end(self._ticket, self._started, br._clock(), failed=True)

    def error(self, exc: BaseException) -> None:
        """Settle by an exception, classified as the decorator would."""
        if self._once():
            self._breaker._settle_error(self._ticket, self._started, exc)

    def release(self) -> None:
        """Settle without counting (a probe's permit goes back)."""
        if self._once():
            br = self._breaker
            br._settle(self._ticket, self._started, br._clock(), _RELEASE)

    def result(self, value: object) -> None:
        """Settle by a return value, judged by ``result_is_failure``."""
        judge = self._breaker._result_is_failure
        if judge is not None and judge(value):
            self.failure()
        else:
            self.success()
