"""The circuit breaker: the object calls go through, over the parts that decide.

Why a call was rejected, or why the breaker opened, is found by following
the parts (docs/concepts/map.md):

- ``guard.py``: the admit/settle core every way in shares, and ``Permit``.
- ``circuit.py``: the states and the rules that move them (``Circuit``:
  pure, clock-injected, testable alone), with the half-open round.
- ``window.py``: the sliding windows of outcomes; ``inflight.py``: the calls
  still running, and what may cut them.
- ``outcome.py``: what a call's end counts as (the fair-budget rule).
- ``fleet.py``: what is shared with a fleet through a store.

This module holds the public surface: the ways in (decorators, ``with`` /
``async with``, ``acquire()``), listeners and observers, snapshots, manual
states, hot reload and the store seam. The decorators inline the guard's core
(``_decorators.py`` is generated from it, since a call would cost the success
path a seventh of its budget).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from resilient import fleet_sync
from resilient._decorators import wrap_async, wrap_sync
from resilient.circuit import Effects
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError
from resilient.events import ConfigChanged, Listener, deliver
from resilient.fleet import FleetLink, FleetView, Outbox, StoreLink
from resilient.guard import NAME_PATTERN, CallObserver, Guard, Permit
from resilient.inflight import Running
from resilient.outcome import OUTCOMES, fair_budget
from resilient.state import State

__all__ = [
    "NAME_PATTERN",
    "OUTCOMES",
    "CallObserver",
    "CircuitBreaker",
    "Permit",
    "Snapshot",
    "fair_budget",
]

P = ParamSpec("P")
R = TypeVar("R")


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


class CircuitBreaker(Guard):
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

    # ------------------------------------------------------------------ public surface

    @property
    def state(self) -> State:
        """The state now (an OPEN breaker whose time is up reads HALF_OPEN only after
        the next call moves it)."""
        return self._circuit.state

    @property
    def config(self) -> BreakerConfig:
        return self._circuit.config

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
        self._watched = True

    def unobserve_calls(self, observer: CallObserver) -> None:
        """Stop calling ``observer``."""
        self._observers = tuple(o for o in self._observers if o != observer)
        self._watched = bool(self._observers) or self._durations is not None

    def snapshot(self) -> Snapshot:
        now = self._clock()
        c = self._circuit
        with self._lock:
            c.upkeep(now)
            t = c.window.totals()
            hung = c.flight.old
            calls, slow = t.calls + hung, t.slow + hung
            return Snapshot(
                name=self.name,
                state=c.state,
                calls=calls,
                failures=t.failures,
                slow_calls=slow,
                failure_rate=t.failures / calls if calls else 0.0,
                slow_call_rate=slow / calls if calls else 0.0,
                open_until=c.open_until_wall if c.state is State.OPEN else None,
                running=c.flight.running + len(c.probes.running),
                requests=t.requests,
                trips=c.trips,
                drop_probability=c.drop_probability() if c.config.mode == "adaptive" else 0.0,
                degraded=c.fleet is not None and c.fleet.degraded,
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
        effects: Effects = []
        with self._lock:
            old = self._circuit.config
            if config == old:
                return
            self._circuit.reconfigure(config, now, effects)
            if config.cancel_on_open != old.cancel_on_open:
                self._running = Running() if config.cancel_on_open else None
        if self._listeners:  # the cause before its effects
            deliver(self._listeners, ConfigChanged(self.name, old, config, revision))
        if effects:
            self._carry_out(effects)

    def _manual(self, state: State, reason: str) -> None:
        now = self._clock()
        effects: Effects = []
        with self._lock:
            self._circuit.manual(state, reason, now, effects)
        self._carry_out(effects)

    # ------------------------------------------------------------------ the store seam

    def link_store(self, link: StoreLink) -> None:
        """Share this breaker through a store (called by the store's ``attach``)."""
        with self._lock:
            self._circuit.fleet = FleetLink(link)

    def sync_out(self) -> Outbox | None:
        """What to send the store now (counts, probe outcomes, requests), or None."""
        now = self._clock()
        with self._lock:
            fleet = self._circuit.fleet
            return None if fleet is None else fleet_sync.outbox(fleet, self._circuit, now)

    def sync_in(self, view: FleetView) -> None:
        """Apply the fleet's answer (or a published transition)."""
        now = self._clock()
        effects: Effects = []
        with self._lock:
            fleet = self._circuit.fleet
            if fleet is not None:
                fleet_sync.apply(fleet, self._circuit, view, now, effects)
        self._carry_out(effects)

    def sync_failed(self, outbox: Outbox | None = None) -> None:
        """The store could not be reached: decide on local state until it answers again.

        ``outbox`` (what could not be sent) is kept, to be sent at the next sync.
        """
        with self._lock:
            fleet = self._circuit.fleet
            if fleet is not None:
                fleet_sync.failed(fleet, self._circuit, outbox)

    # ------------------------------------------------------------------ the ways in

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if inspect.iscoroutinefunction(fn):
            return wrap_async(self, fn)
        return wrap_sync(self, fn)

    def acquire(self) -> Permit:
        """Admit one call (or raise CircuitOpenError) and return its permit.

        For code that cannot be wrapped: report the outcome exactly once with
        ``permit.success()``, ``permit.failure()``, ``permit.error(exc)`` or
        ``permit.release()`` (not counted).
        """
        now = self._clock()
        return Permit(self, self._begin(now, None), now)

    def try_acquire(self) -> Permit | None:
        """``acquire()`` for work that is dropped when refused: ``None``, not CircuitOpenError.

        An OPEN or FORCED_OPEN breaker refuses without building an exception
        (a shadow drops most of its mirrors so while its candidate is down);
        listeners hear the rejection as from ``acquire()``.
        """
        now = self._clock()
        if self._shut(now):
            return None
        try:
            return Permit(self, self._begin(now, None), now)
        except CircuitOpenError:  # refused deciding (HALF_OPEN's probes taken, a throttle)
            return None

    def __enter__(self) -> CircuitBreaker:
        self._entered.set((*self._entered.get(), self.acquire()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._pop_entered()
        if exc is None:
            permit.success()
        else:
            permit.error(exc)

    async def __aenter__(self) -> CircuitBreaker:
        # As the async decorator: the task is remembered so that an opening
        # (cancel_on_open) can cut the block, and a probe gets its hung timer.
        now = self._clock()
        task = asyncio.current_task() if self._running is not None else None
        permit = Permit(self, self._begin(now, task), now, task)
        self._entered.set((*self._entered.get(), permit))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit = self._pop_entered()
        if exc is None:
            permit.success()
            return
        rejection = permit.error(exc)
        if rejection is not None:  # the breaker cut the block: fail fast, as rejected
            raise rejection from None

    def _pop_entered(self) -> Permit:
        stack = self._entered.get()
        self._entered.set(stack[:-1])
        return stack[-1]

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._circuit.state.value}>"
