"""The circuit: a breaker's states and the rules that move it, over its counts.

CLOSED admits calls and counts their outcomes in a window; once the window
holds ``minimum_calls`` calls and the failure or slow-call rate reaches its
threshold, the circuit opens. OPEN rejects until ``open_until``; the next
call after that moves it to HALF_OPEN, which admits exactly
``half_open_calls`` probes (a ``HalfOpen`` round) and closes or reopens on
their verdict. Each consecutive trip backs the open duration off by
``open_backoff`` (with +-10% jitter, then the cap). Adaptive mode stays
CLOSED and drops calls with the SRE throttle's probability instead
(``adaptive.py``). FORCED_OPEN and DISABLED are manual.

Pure: no I/O, no asyncio, no threads, no user code; time comes in as ``now``
(the breaker's monotonic clock), randomness from ``rng``, epoch seconds from
``wall``. Every method assumes the breaker's guard is held and returns what
must happen once it is released by appending to ``effects``: a
``StateChanged``, a ``Cut`` of async calls that started too long ago, or
``WAKE`` (sync with the store now).

- Tickets: admission hands out an int. ``>= 0`` is an ordinary call (its
  ``InFlight`` slot), ``<= PROBE`` a probe (``PROBE - serial``), ``UNTRACKED``
  a call through a DISABLED breaker (not counted). A probe's serial is looked
  up in the current round: a probe of an earlier round, or a call admitted
  while CLOSED that ends during HALF_OPEN, counts in the window but never
  decides the probes' verdict.
- The success path: ``now < fast_until`` says "CLOSED, nothing to judge, no
  bucket or slot boundary crossed" in one comparison; ``refresh`` recomputes
  it whenever anything changes. The breaker's success path reads it, and
  adds to ``flight`` and ``window``, without the guard.
- Thresholds are judged when a call is admitted as well as when one ends,
  with calls running past ``slow_call_duration`` counted as slow calls.
  With a store (``fleet``), the fleet's combined window is judged first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from resilient.adaptive import FORCE_PASS, drop_probability
from resilient.config import BreakerConfig
from resilient.events import Event, StateChanged
from resilient.fleet import FleetLink
from resilient.inflight import InFlight
from resilient.latency import AutoSlow, SlowThreshold
from resilient.outcome import COUNT_FAILURE, RELEASE
from resilient.state import State
from resilient.window import (
    FAILURE,
    REQUESTS,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    CountWindow,
    TimeWindow,
)

__all__ = ["JITTER", "PROBE", "UNTRACKED", "WAKE", "Circuit", "Cut", "Effects", "HalfOpen"]

JITTER: Final = 0.1  # the open duration varies by at most +-10%
UNTRACKED: Final = -1  # the ticket of a call through a DISABLED breaker
PROBE: Final = -2  # probe tickets are PROBE - serial
WAKE: Final = "wake"  # an effect: sync with the store now


@dataclass(frozen=True, slots=True)
class Cut:
    """An effect: cancel the async calls that started at or before ``started_by``."""

    started_by: float


Effects = list[Event | Cut | Literal["wake"]]


class HalfOpen:
    """One half-open round: ``left`` permits to hand out, the probes running, their votes."""

    __slots__ = ("calls", "failures", "left", "running", "serials", "slow")

    def __init__(self) -> None:
        self.serials = itertools.count()
        self.running: dict[int, float] = {}  # probes of this round: serial -> start
        self.left = 0  # permits not yet handed out this round
        self.calls = self.failures = self.slow = 0  # votes of this round's probes

    def start(self, permits: int) -> None:
        """A new round (of ``permits`` probes; 0 when not HALF_OPEN)."""
        self.running.clear()
        self.left = permits
        self.calls = self.failures = self.slow = 0

    def take(self, now: float) -> int | None:
        """A probe's ticket, or None when every permit is handed out."""
        if self.left <= 0:
            return None
        self.left -= 1
        serial = next(self.serials)
        self.running[serial] = now
        return PROBE - serial

    def give_back(self, ticket: int) -> None:
        """A probe that decides nothing (cancelled, not counted): its permit goes back."""
        if self.running.pop(PROBE - ticket, None) is not None:
            self.left += 1

    def vote(self, ticket: int, failed: bool, slow: bool) -> bool:
        """Count a probe's outcome; False when it is not a probe of this round."""
        if self.running.pop(PROBE - ticket, None) is None:
            return False
        self.calls += 1
        self.failures += failed
        self.slow += slow
        return True

    def judge_hung(self, limit: float) -> bool:
        """Probes that started at or before ``limit`` are slow now; any?"""
        hung = [serial for serial, started in self.running.items() if started <= limit]
        for serial in hung:
            del self.running[serial]
            self.calls += 1
            self.slow += 1
        return bool(hung)


class Circuit:
    """A breaker's states and counts (see the module docstring); the breaker holds the guard."""

    __slots__ = (
        "_auto_slow",
        "_rng",
        "_wall",
        "config",
        "fast_until",
        "fleet",
        "flight",
        "last_pass",
        "name",
        "open_until",
        "open_until_wall",
        "probes",
        "slow",
        "state",
        "trips",
        "window",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        now: float,
        *,
        rng: Callable[[], float],
        wall: Callable[[], float],
        auto_slow: AutoSlow | None,
    ) -> None:
        self.name = name
        self.config = config
        self._rng = rng
        self._wall = wall
        self._auto_slow = auto_slow
        self.state = State.CLOSED
        self.trips = 0  # consecutive trips, for the open duration's backoff
        self.open_until = -math.inf  # monotonic
        self.open_until_wall: float | None = None
        self.probes = HalfOpen()
        self.slow = SlowThreshold(config.slow_call_duration, auto_slow)
        self.window = new_window(config)
        self.window.advance(now)
        self.flight = InFlight(self.slow.seconds, now)
        self.fast_until = -math.inf
        self.last_pass = now  # adaptive mode: when a call was last admitted
        self.fleet: FleetLink | None = None  # set when a store shares this breaker
        self.refresh(now)

    # ------------------------------------------------------------------ admission

    def admit(self, now: float, effects: Effects) -> int | None:
        """Admit a call arriving at ``now`` (its ticket) or reject it (None)."""
        self.upkeep(now)
        state = self.state
        if state is State.CLOSED:
            if self.config.mode == "adaptive":
                if self._throttled(now):
                    self.window.add(REQUESTS)  # a drop is an attempt too
                    return None
                self.last_pass = now
                self.window.admitted()
            elif self.judge(now, effects):
                return None
            ticket = self.flight.start()
            self.refresh(now)
            return ticket
        if state is State.OPEN and now >= self.open_until:
            self.transition(State.HALF_OPEN, "open duration elapsed", now, effects)
        if self.state is State.HALF_OPEN:
            self.judge_probes(now, effects)
            return self.probes.take(now) if self.state is State.HALF_OPEN else None
        if self.state is State.DISABLED:
            return UNTRACKED
        return None  # OPEN (time not up) or FORCED_OPEN

    def retry_after(self, now: float) -> float:
        """Seconds until a probe may be admitted (DESIGN's ``retry_after``)."""
        if self.state is State.OPEN:
            return max(0.0, self.open_until - now)
        if self.state is State.FORCED_OPEN:
            return math.inf
        return 0.0  # HALF_OPEN with its probes taken, or an adaptive drop

    def drop_probability(self) -> float:
        cfg, window = self.config, self.window
        t = window.totals()
        return drop_probability(
            t.requests, t.accepts, cfg.adaptive_k, cfg.minimum_calls, window.healthy_streak()
        )

    def _throttled(self, now: float) -> bool:
        """Adaptive mode: drop this call? (Never when none passed for FORCE_PASS.)"""
        p = self.drop_probability()
        if p <= 0.0 or now - self.last_pass >= FORCE_PASS:
            return False
        return self._rng() < p

    # ------------------------------------------------------------------ outcomes

    def record(self, ticket: int, started: float, ended: float, verdict: int) -> Effects:
        """Count a call's end (``ticket`` >= 0 already taken off ``flight``)."""
        effects: Effects = []
        self.upkeep(ended)
        if verdict == RELEASE:
            if ticket <= PROBE:
                self.probes.give_back(ticket)  # this probe decides nothing
            return effects
        failed = verdict == COUNT_FAILURE
        slow = ended - started >= self.slow.seconds
        self.window.add(
            (SLOW_FAILURE if slow else FAILURE) if failed else (SLOW_SUCCESS if slow else SUCCESS)
        )
        if ticket <= PROBE and self.probes.vote(ticket, failed, slow):
            self.judge_probes(ended, effects)  # a probe of this round: it votes
        elif self.state is State.CLOSED:
            # Judged at every end off the success path: a failure, a slow call,
            # or a success that brings a window with failures to minimum_calls
            # (a probe of a finished round ending now is an ordinary call).
            self.judge(ended, effects)
        self.refresh(ended)
        return effects

    # ------------------------------------------------------------------ judging

    def upkeep(self, now: float) -> None:
        if now >= self.fast_until:
            self.window.advance(now)
            self.flight.advance(now)

    def judge(self, now: float, effects: Effects) -> bool:
        """CLOSED: open if a window (with hung calls as slow) crosses a threshold.

        The fleet's window is judged first, at every judgement: when it
        crosses, the store is asked to open the fleet at once (decided there,
        atomically) and this process opens without waiting for it. Only then
        our own window: its crossing opens this process alone, and wakes the
        store so the fleet weighs these counts now, not at the next flush.
        """
        if self.config.mode == "adaptive":
            return False
        hung = self.flight.old
        fleet, window = self.fleet, self.window
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
                self.open(fleet.trip, now, effects, fleet_round=True)
                effects.append(WAKE)
                return True
        t = window.totals()
        reason = self._crossing(t.calls + hung, t.failures, t.slow + hung)
        if reason is None:
            return False
        self.open(reason, now, effects)  # our own window: this process alone
        if fleet is not None:
            effects.append(WAKE)
        return True

    def _crossing(self, calls: int, failures: int, slow: int) -> str | None:
        """Why these counts open the circuit, or None."""
        cfg = self.config
        if calls < cfg.count_window_minimum or calls == 0:
            return None
        if failures / calls >= cfg.failure_rate_threshold:
            return f"failure rate {failures / calls:.0%} >= {cfg.failure_rate_threshold:.0%}"
        if slow / calls >= cfg.slow_call_rate_threshold:
            return f"slow-call rate {slow / calls:.0%} >= {cfg.slow_call_rate_threshold:.0%}"
        return None

    def judge_probes(self, now: float, effects: Effects) -> None:
        """HALF_OPEN: decide as soon as the verdict is certain.

        A probe running past ``slow_call_duration`` is judged slow now; when it
        ends later it is no longer a probe of this round and decides nothing.
        """
        if self.state is not State.HALF_OPEN:
            return
        probes = self.probes
        limit = now - self.slow.seconds
        if probes.judge_hung(limit):
            effects.append(Cut(limit))  # cancel_on_open: a probe judged slow fails fast
        fleet = self.fleet
        if fleet is not None and fleet.round and not fleet.degraded:
            if probes.calls != fleet.probe_calls:
                effects.append(WAKE)  # the fleet's verdict, not ours: send the outcomes
            return
        cfg = self.config
        n = cfg.half_open_calls
        undecided = n - probes.calls
        failures, slow = probes.failures, probes.slow
        if failures / n >= cfg.failure_rate_threshold:
            self.open(f"{failures} of {n} probes failed", now, effects)
        elif slow / n >= cfg.slow_call_rate_threshold:
            self.open(f"{slow} of {n} probes were slow", now, effects)
        elif (failures + undecided) / n < cfg.failure_rate_threshold and (
            slow + undecided
        ) / n < cfg.slow_call_rate_threshold:
            self.close("probes succeeded", now, effects)

    # ------------------------------------------------------------------ transitions

    def open(self, reason: str, now: float, effects: Effects, *, fleet_round: bool = False) -> None:
        """Trip: open for the backed-off duration, jittered before the cap."""
        cfg = self.config
        self.trips += 1
        duration = cfg.open_duration * cfg.open_backoff ** (self.trips - 1)
        duration *= 1.0 + self.jitter()
        self.open_for(min(duration, cfg.open_duration_max), reason, now, effects)
        if self.fleet is not None:
            self.fleet.round = fleet_round

    def jitter(self) -> float:
        """A random share of the open duration, within +-JITTER."""
        return JITTER * (2.0 * self._rng() - 1.0)

    def open_for(self, duration: float, reason: str, now: float, effects: Effects) -> None:
        self.open_until = now + duration
        self.open_until_wall = self._wall() + duration
        self.transition(State.OPEN, reason, now, effects)
        effects.append(Cut(now - self.slow.seconds))  # cancel_on_open: fail the late ones fast

    def close(self, reason: str, now: float, effects: Effects) -> None:
        """Back to CLOSED with an empty window and no backoff."""
        self.trips = 0
        self.fresh_window(now)
        self.transition(State.CLOSED, reason, now, effects)

    def transition(self, new: State, reason: str, now: float, effects: Effects) -> None:
        old = self.state
        self.state = new
        half_open = new is State.HALF_OPEN
        self.probes.start(self.config.half_open_calls if half_open else 0)
        fleet = self.fleet
        if fleet is not None:
            fleet.probe_calls = fleet.probe_failures = fleet.probe_slow = 0
            fleet.tokens_wanted = 0
            if half_open and fleet.round and not fleet.degraded:
                # The fleet admits half_open_calls probes in all: ask it for permits.
                fleet.tokens_wanted, self.probes.left = self.probes.left, 0
                effects.append(WAKE)
            elif new is State.CLOSED:
                fleet.round = False
        if new is not State.OPEN:
            self.open_until = -math.inf
            self.open_until_wall = None
        self.fast_until = -math.inf
        self.refresh(now)
        if new is not old:
            effects.append(StateChanged(self.name, old, new, reason, self._wall()))

    def manual(self, state: State, reason: str, now: float, effects: Effects) -> None:
        """An operator's state (CLOSED is ``reset()``: an empty window, no backoff)."""
        if state is State.CLOSED:
            before = len(effects)
            self.close(reason, now, effects)
            if len(effects) == before:  # a reset of a CLOSED breaker is announced too
                effects.append(StateChanged(self.name, state, state, reason, self._wall()))
        else:
            self.transition(state, reason, now, effects)
        if self.fleet is not None:
            self.fleet.manual = state.value  # manual states apply fleet-wide
            effects.append(WAKE)

    # ------------------------------------------------------------------ config and learning

    def reconfigure(self, config: BreakerConfig, now: float, effects: Effects) -> None:
        """Take ``config``: state and statistics kept unless the window's shape changed."""
        old, self.config = self.config, config
        if config.window_shape() != old.window_shape():
            self.fresh_window(now)
        if config.slow_call_duration != old.slow_call_duration:
            self.slow = SlowThreshold(config.slow_call_duration, self._auto_slow)
            self.flight = self.flight.retime(self.slow.seconds, now)
        if self.state is State.HALF_OPEN:
            handed_out = old.half_open_calls - self.probes.left
            self.probes.left = max(0, config.half_open_calls - handed_out)
        if self.state is State.CLOSED:
            self.upkeep(now)
            self.judge(now, effects)  # the new thresholds apply at once
        self.refresh(now)

    def relearn(self, now: float) -> None:
        """The learned slow limit moved: judge running calls by it."""
        self.flight = self.flight.retime(self.slow.seconds, now)
        self.refresh(now)

    def fresh_window(self, now: float) -> None:
        """Start an empty window (of the config in force); nothing of it is unsent."""
        self.window = window = new_window(self.config)
        window.advance(now)
        if self.fleet is not None and isinstance(window, TimeWindow):
            self.fleet.mark_sent(window)

    def refresh(self, now: float) -> None:
        """Recompute how long the success path may skip the guard."""
        if self.state is not State.CLOSED or self.config.mode == "adaptive" or self._pending():
            self.fast_until = -math.inf
        else:
            self.fast_until = min(self.window.next_boundary(), self.flight.next_event())

    def _pending(self) -> bool:
        """Could a success alone make the window trip? Only while it fills up with
        failures or slow calls in it, or with calls running past the slow limit."""
        if self.flight.old:
            return True
        t = self.window.totals()
        return (t.failures or t.slow) > 0 and t.calls < self.config.count_window_minimum


def new_window(config: BreakerConfig) -> TimeWindow | CountWindow:
    if config.window == "count":
        return CountWindow(int(config.window_size))
    return TimeWindow(config.window_size, config.buckets)
