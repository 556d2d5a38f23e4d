"""The circuit alone: states and rules, driven by plain ``now`` values (no breaker, no loop)."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path

import pytest

import resilient.circuit
from resilient.circuit import PROBE, UNTRACKED, WAKE, Circuit, Cut, Effects
from resilient.config import BreakerConfig
from resilient.events import StateChanged
from resilient.outcome import COUNT_FAILURE, COUNT_SUCCESS, RELEASE
from resilient.state import State

CONFIG = BreakerConfig(
    minimum_calls=4,
    failure_rate_threshold=0.5,
    slow_call_duration=1.0,
    half_open_calls=2,
    open_duration=5.0,
    open_backoff=2.0,
    open_duration_max=60.0,
)


def circuit(config: BreakerConfig = CONFIG, *, rng: float = 0.5) -> Circuit:
    """A circuit at t=0 whose jitter is 0 (rng 0.5) and whose wall clock reads 1000 + t."""
    return Circuit("c", config, 0.0, rng=lambda: rng, wall=lambda: 1000.0, auto_slow=None)


def call(c: Circuit, start: float, end: float, verdict: int = COUNT_SUCCESS) -> Effects:
    """One call through ``c`` as the guard makes it: admit, then record (None if rejected)."""
    effects: Effects = []
    ticket = c.admit(start, effects)
    assert ticket is not None, "rejected"
    if ticket >= 0:
        c.flight.end(ticket)
    return effects + c.record(ticket, start, end, verdict)


def changes(effects: Effects) -> list[tuple[State, State]]:
    return [(e.old, e.new) for e in effects if isinstance(e, StateChanged)]


def trip(c: Circuit, at: float = 1.0) -> Effects:
    effects: Effects = []
    for i in range(4):
        effects += call(c, at + i * 0.01, at + i * 0.01 + 0.001, COUNT_FAILURE)
    return effects


def test_the_window_opens_the_circuit_once_minimum_calls_have_failed() -> None:
    c = circuit()
    early: Effects = []
    for i in range(3):
        early += call(c, 1.0 + i, 1.0 + i + 0.01, COUNT_FAILURE)
    assert c.state is State.CLOSED and changes(early) == []  # 3 calls < minimum_calls
    effects = call(c, 4.0, 4.01, COUNT_FAILURE)
    assert changes(effects) == [(State.CLOSED, State.OPEN)]
    assert c.open_until == pytest.approx(4.01 + 5.0)  # jitter 0 at rng 0.5
    assert c.open_until_wall == pytest.approx(1005.0)
    assert c.trips == 1


def test_successes_keep_it_closed_below_the_threshold() -> None:
    c = circuit()
    for i in range(10):
        call(c, float(i), i + 0.01, COUNT_FAILURE if i % 4 == 3 else COUNT_SUCCESS)
    assert c.state is State.CLOSED  # 1 in 4, then 2 in 10: < 50%


def test_open_rejects_until_its_time_then_admits_exactly_the_probes() -> None:
    c = circuit()
    trip(c)
    effects: Effects = []
    assert c.admit(c.open_until - 0.001, effects) is None
    assert c.retry_after(c.open_until - 1.0) == pytest.approx(1.0)
    at = c.open_until
    first, second = c.admit(at, effects), c.admit(at, effects)
    assert changes(effects) == [(State.OPEN, State.HALF_OPEN)]
    assert first is not None and first <= PROBE and second is not None and second <= PROBE
    assert first != second
    assert c.admit(at, effects) is None  # half_open_calls = 2, both handed out
    assert c.retry_after(at) == 0.0


def test_probes_that_succeed_close_it_and_forget_the_backoff() -> None:
    c = circuit()
    trip(c)
    at = c.open_until
    effects: Effects = []
    probes = [c.admit(at, effects), c.admit(at, effects)]
    for ticket in probes:
        assert ticket is not None
        effects += c.record(ticket, at, at + 0.1, COUNT_SUCCESS)
    assert changes(effects)[-1] == (State.HALF_OPEN, State.CLOSED)
    assert c.trips == 0 and c.window.totals().calls == 0  # an empty window


def test_a_failed_probe_reopens_it_for_the_backed_off_duration() -> None:
    c = circuit()
    trip(c)
    at = c.open_until
    effects: Effects = []
    ticket = c.admit(at, effects)
    assert ticket is not None
    effects += c.record(ticket, at, at + 0.1, COUNT_FAILURE)  # 1 of 2 = 50%: certain now
    assert changes(effects)[-1] == (State.HALF_OPEN, State.OPEN)
    assert c.trips == 2
    assert c.open_until == pytest.approx(at + 0.1 + 10.0)  # 5 s x 2


def test_a_released_probe_gives_its_permit_back() -> None:
    c = circuit()
    trip(c)
    at = c.open_until
    effects: Effects = []
    first, second = c.admit(at, effects), c.admit(at, effects)
    assert first is not None and second is not None and c.admit(at, effects) is None
    c.record(first, at, at + 0.1, RELEASE)
    assert c.admit(at + 0.2, effects) is not None


def test_a_probe_that_hangs_past_the_slow_limit_is_judged_slow_and_cut() -> None:
    c = circuit(replace(CONFIG, slow_call_rate_threshold=0.5))
    trip(c)
    at = c.open_until
    effects: Effects = []
    assert c.admit(at, effects) is not None
    effects.clear()
    c.judge_probes(at + 0.5, effects)
    assert effects == []  # not hung yet
    c.judge_probes(at + 1.0, effects)  # slow_call_duration 1.0: hung now
    assert Cut(at) in effects
    assert changes(effects) == [(State.HALF_OPEN, State.OPEN)]


def test_opening_cuts_the_calls_that_started_a_slow_limit_ago() -> None:
    c = circuit()
    effects = trip(c, at=3.0)
    opened = max(e.started_by for e in effects if isinstance(e, Cut))
    assert opened == pytest.approx(3.031 - 1.0)


def test_calls_running_past_the_slow_limit_count_as_slow_when_a_call_is_admitted() -> None:
    c = circuit(replace(CONFIG, slow_call_rate_threshold=0.5))
    effects: Effects = []
    for _ in range(4):
        assert c.admit(0.1, effects) is not None  # four calls that never end
    assert c.admit(0.5, effects) is not None
    assert c.state is State.CLOSED
    assert c.admit(1.2, effects) is None  # 4 of 5 running past 1 s: slow
    assert changes(effects) == [(State.CLOSED, State.OPEN)]


def test_jitter_stays_within_ten_percent() -> None:
    low, high = circuit(rng=0.0), circuit(rng=0.999999)
    trip(low)
    trip(high)
    assert low.open_until == pytest.approx(1.031 + 4.5)
    assert high.open_until == pytest.approx(1.031 + 5.5, rel=1e-5)


def test_manual_states() -> None:
    c = circuit()
    effects: Effects = []
    c.manual(State.FORCED_OPEN, "forced open", 1.0, effects)
    assert c.admit(2.0, effects) is None and c.retry_after(2.0) == math.inf
    c.manual(State.DISABLED, "disabled", 3.0, effects)
    assert c.admit(4.0, effects) == UNTRACKED
    c.manual(State.CLOSED, "reset", 5.0, effects)
    assert c.state is State.CLOSED and WAKE not in effects  # no fleet: nothing to wake
    assert changes(effects) == [
        (State.CLOSED, State.FORCED_OPEN),
        (State.FORCED_OPEN, State.DISABLED),
        (State.DISABLED, State.CLOSED),
    ]


def test_new_thresholds_apply_at_once() -> None:
    c = circuit()
    for i in range(4):
        call(c, float(i), i + 0.01, COUNT_FAILURE if i < 1 else COUNT_SUCCESS)
    assert c.state is State.CLOSED  # 25% < 50%
    effects: Effects = []
    c.reconfigure(replace(CONFIG, failure_rate_threshold=0.25), 4.0, effects)
    assert changes(effects) == [(State.CLOSED, State.OPEN)]


def test_adaptive_mode_drops_by_the_throttle_and_never_opens() -> None:
    config = BreakerConfig(mode="adaptive", minimum_calls=4, adaptive_k=1.5)
    c = circuit(config, rng=0.0)  # every draw under p drops
    effects: Effects = []
    dropped = 0
    for i in range(40):
        now = i * 0.01
        ticket = c.admit(now, effects)
        if ticket is None:
            dropped += 1
        else:
            c.flight.end(ticket)
            effects += c.record(ticket, now, now + 0.001, COUNT_FAILURE)
    assert dropped > 20 and c.drop_probability() > 0.5
    assert c.state is State.CLOSED and changes(effects) == []
    assert c.window.totals().requests == 40  # a drop is an attempt too


def test_the_circuit_is_pure() -> None:
    """No asyncio, threads, clocks or I/O in circuit.py: time and chance come in."""
    tree = ast.parse(Path(resilient.circuit.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert imported.isdisjoint({"asyncio", "threading", "time", "random", "socket", "os"})
