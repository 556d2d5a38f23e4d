"""The guard: the admit/settle core every way through a breaker shares.

``Guard`` is what a call meets: ``_begin`` admits it (the success path of a
CLOSED circuit, or ``_admit`` on the slow path), ``_end`` / ``_end_error``
settle it (the success path, or ``_settle``). The circuit (``circuit.py``)
decides; the guard holds the lock around its decisions and carries out what
they return (cuts of late calls, events, a wake of the store) outside it.
``CircuitBreaker`` (``breaker.py``) is the guard with its public surface: the
ways in, listeners, manual states, hot reload and the store seam.

Concurrency: every decision is made by the circuit under ``self._lock`` (a
thread lock, held for microseconds, on the slow path only); listeners never
run under it. The success path of a CLOSED breaker takes no lock: ``now <
circuit.fast_until`` says nothing needs judging, and the counts it adds are
lock-free (see ``inflight.py``).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from resilient.circuit import PROBE, UNTRACKED, WAKE, Circuit, Cut, Effects
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError
from resilient.events import CallRejected, Listener, deliver
from resilient.inflight import InFlight, Running, watch_probe
from resilient.latency import AutoSlow
from resilient.outcome import COUNT_FAILURE, COUNT_SUCCESS, RELEASE, Classifier, outcome_name
from resilient.state import State

__all__ = ["NAME_PATTERN", "CallObserver", "Guard", "Permit"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,200}\Z")
RING = InFlight.RING

CallObserver = Callable[[str, float], object]

_REJECTION_REASONS = {
    State.OPEN: "open",
    State.FORCED_OPEN: "forced open",
    State.HALF_OPEN: "half-open, probes taken",
}


class Guard:
    """A circuit, the lock around it and the admit/settle core (see the module)."""

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
        self._clock = clock
        self._classify = Classifier(
            record_exceptions, ignore_exceptions, result_is_failure, deadline_is_fair, clock
        )
        self._listeners: tuple[Listener, ...] = ()
        self._observers: tuple[CallObserver, ...] = ()
        # Every ended call's duration, when a store asked (record_durations): the
        # list being appended to, and the one taken out at the last take.
        self._durations: list[float] | None = None
        self._taken: list[float] = []  # the list the last take swapped out
        self._taken_len = 0  # ... and how much of it that take returned
        #: observers or durations: the one test the success path makes for both
        self._watched = False
        self._lock = threading.Lock()  # guards the circuit; never held while user code runs
        # The circuit is this breaker's for life (the decorators hold it): never replaced.
        self._circuit = Circuit(name, config, clock(), rng=rng, wall=wall, auto_slow=auto_slow)
        self._running = Running() if config.cancel_on_open else None
        # The permits of the ``with`` blocks this context is inside, innermost last.
        self._entered: ContextVar[tuple[Permit, ...]] = ContextVar(f"resilient.{name}", default=())
        #: the hub's namespace, for stores (None outside a hub)
        self.namespace: str | None = None

    @property
    def slow_call_seconds(self) -> float:
        """The slow-call limit in force (learned, with ``slow_call_duration="auto"``)."""
        return self._circuit.slow.seconds

    # ------------------------------------------------------------------ the core
    #
    # _begin and _end are inlined into the decorators by scripts/gen_decorators.py:
    # each has one exit (its last statement), and assigns no name the decorators use
    # (``c = self._circuit`` is hoisted: the decorators take it once).

    def _begin(self, now: float, task: asyncio.Task[Any] | None) -> int:
        """Admit a call that starts at ``now``: its ticket (or raise ``CircuitOpenError``).

        ``task``: the caller's task, for a breaker with ``cancel_on_open`` (so
        an opening can cut it), else None. Settle with ``_end`` or ``_end_error``.
        """
        c = self._circuit
        if now < c.fast_until:  # the success path: CLOSED, nothing to judge
            flight = c.flight
            ticket = flight.slot
            flight.counts[ticket % RING] += 1
        else:
            ticket = self._admit(now)
        if task is not None and (running := self._running) is not None:
            running.started[task] = now
        return ticket

    def _end(
        self,
        ticket: int,
        started: float,
        ended: float,
        failed: bool,
        task: asyncio.Task[Any] | None,
    ) -> None:
        """Settle a call begun by ``_begin`` that returned (a success unless ``failed``)."""
        if task is not None and (running := self._running) is not None:
            running.started.pop(task, None)
        c = self._circuit
        flight, slow = c.flight, c.slow
        if (
            not failed
            and ended < c.fast_until
            and ended - started < slow.seconds
            and ticket >= flight.oldest
        ):
            # The success path: out of the slot, into the window (see the windows).
            flight.counts[ticket % RING] -= 1
            window = c.window
            window.counts[window.pos] += 1
            if ended >= slow.next_at:
                self._learn(ended - started, ended)  # "auto": a sample is due
            if self._watched:  # (one test for both, so an unwatched breaker pays one)
                if (durations := self._durations) is not None:
                    durations.append(ended - started)
                if self._observers:
                    self._observe("success", ended - started)
        else:
            self._settle(ticket, started, ended, COUNT_FAILURE if failed else COUNT_SUCCESS)

    def _end_error(
        self,
        ticket: int,
        started: float,
        exc: BaseException,
        task: asyncio.Task[Any] | None,
    ) -> CircuitOpenError | None:
        """Settle a call begun by ``_begin`` that raised ``exc``.

        Returns the rejection to raise instead when the breaker itself
        cancelled ``task`` on opening (``cancel_on_open``), else None.
        """
        running = self._running
        if running is not None and task is not None:
            running.started.pop(task, None)
            if isinstance(exc, asyncio.CancelledError) and running.was_cut(task):
                self._settle(ticket, started, self._clock(), COUNT_FAILURE)
                return self._rejection(self._clock(), "cut: the circuit opened")
        self._settle(
            ticket,
            started,
            self._clock(),
            self._classify.exception(exc, started, self.slow_call_seconds),
        )
        return None

    # ------------------------------------------------------------------ the slow path

    def _shut(self, now: float) -> bool:
        """Is a call at ``now`` refused with nothing to decide (FORCED_OPEN, OPEN with time left)?

        ``_admit``'s first refusal without its exception, for callers that
        drop a refused call rather than fail it (``try_acquire``). Listeners
        still hear the rejection.
        """
        c = self._circuit
        if now < c.fast_until:
            return False
        state = c.state
        if state is State.FORCED_OPEN or (state is State.OPEN and now < c.open_until):
            if self._listeners:
                self._rejection(now)  # delivers CallRejected; the exception is not raised
            return True
        return False

    def _admit(self, now: float) -> int:
        c = self._circuit
        state = c.state
        if state is State.FORCED_OPEN or (state is State.OPEN and now < c.open_until):
            raise self._rejection(now)  # nothing to decide: no lock
        effects: Effects = []
        with self._lock:
            ticket = c.admit(now, effects)
        if effects:
            self._carry_out(effects)
        if ticket is None:
            raise self._rejection(now)
        if ticket <= PROBE:
            watch_probe(c.slow.seconds, self._judge_probes_now)  # a probe may hang
        return ticket

    def _settle(self, ticket: int, started: float, ended: float, verdict: int) -> None:
        if ticket == UNTRACKED:
            return
        c = self._circuit
        if ticket >= 0:
            c.flight.end(ticket)
        with self._lock:
            effects = c.record(ticket, started, ended, verdict)
        if effects:
            self._carry_out(effects)
        duration, slow = ended - started, c.slow
        if verdict == COUNT_SUCCESS and ended >= slow.next_at and duration < slow.seconds:
            self._learn(duration, ended)
        if self._watched:
            if (durations := self._durations) is not None:
                durations.append(duration)
            if self._observers:
                self._observe(outcome_name(verdict, duration >= slow.seconds), duration)

    def _learn(self, duration: float, now: float) -> None:
        """Feed "auto" a healthy call that ended at ``now`` (outside the lock).

        Called only when a sample is due (``now >= slow.next_at``, never for a
        fixed limit).
        """
        c = self._circuit
        if c.slow.observe(duration, now):
            with self._lock:
                c.relearn(now)

    def record_durations(self) -> None:
        """From now on keep every ended call's duration, for ``take_durations``.

        A store that shares latency histograms asks (``RedisStore``); the
        success path then appends one float per call, nothing more.
        """
        if self._durations is None:
            self._durations = []
            self._watched = True

    def take_durations(self) -> list[float]:
        """The durations of the calls that ended since the last take.

        Without a lock: a take swaps in a fresh list and returns what the old
        one holds; a thread that fetched the old list just before the swap
        may still append to it, so the next take returns those late ones too.
        Nothing is lost, nothing counted twice.
        """
        current = self._durations
        if current is None:
            return []
        self._durations = []
        previous, seen = self._taken, self._taken_len
        now_len = len(current)
        self._taken, self._taken_len = current, now_len
        return previous[seen:] + current[:now_len]

    def _observe(self, outcome: str, duration: float) -> None:
        for observer in self._observers:
            observer(outcome, duration)

    def _judge_probes_now(self) -> None:
        now = self._clock()
        effects: Effects = []
        with self._lock:
            self._circuit.judge_probes(now, effects)
        self._carry_out(effects)

    def _rejection(self, now: float, reason: str | None = None) -> CircuitOpenError:
        c = self._circuit
        retry_after = c.retry_after(now)
        if reason is None:
            reason = _REJECTION_REASONS.get(c.state, "throttled")
        if self._listeners:
            deliver(self._listeners, CallRejected(self.name, c.state, retry_after, reason))
        return CircuitOpenError(self.name, retry_after, reason)

    def _carry_out(self, effects: Effects) -> None:
        """Cut late calls, wake the store, deliver events: outside the lock."""
        running, wake = self._running, False
        for effect in effects:
            if isinstance(effect, Cut):
                if running is not None:
                    running.cut(effect.started_by)
            elif effect == WAKE:
                wake = True
        fleet = self._circuit.fleet
        if wake and fleet is not None:
            fleet.store.wake()
        if self._listeners:
            for effect in effects:
                if not isinstance(effect, Cut | str):
                    deliver(self._listeners, effect)


class Permit:
    """One admitted call, to be settled exactly once (see ``CircuitBreaker.acquire``)."""

    __slots__ = ("_breaker", "_settled", "_started", "_task", "_ticket")

    def __init__(
        self,
        breaker: Guard,
        ticket: int,
        started: float,
        task: asyncio.Task[Any] | None = None,
    ) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self._started = started
        self._task = task  # an ``async with`` block's, when its breaker may cut it
        self._settled = False

    def _once(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    def success(self) -> None:
        if self._once():
            br = self._breaker
            br._end(self._ticket, self._started, br._clock(), False, self._task)

    def failure(self) -> None:
        if self._once():
            br = self._breaker
            br._end(self._ticket, self._started, br._clock(), True, self._task)

    def error(self, exc: BaseException) -> CircuitOpenError | None:
        """Settle by an exception, classified as the decorator would.

        Returns the rejection to raise instead when the breaker cut the call
        (only for an ``async with`` block, whose task it knows), else None.
        """
        if self._once():
            return self._breaker._end_error(self._ticket, self._started, exc, self._task)
        return None

    def release(self) -> None:
        """Settle without counting (a probe's permit goes back)."""
        if self._once():
            br = self._breaker
            br._settle(self._ticket, self._started, br._clock(), RELEASE)

    def result(self, value: object) -> None:
        """Settle by a return value, judged by ``result_is_failure``."""
        judge = self._breaker._classify.result_is_failure
        if judge is not None and judge(value):
            self.failure()
        else:
            self.success()
