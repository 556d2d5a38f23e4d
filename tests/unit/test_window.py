"""Window maths against a small reference model, with an injected clock (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from resilient.inflight import InFlight
from resilient.window import (
    FAILURE,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    CountWindow,
    TimeWindow,
)

OUTCOMES = st.sampled_from([SUCCESS, SLOW_SUCCESS, FAILURE, SLOW_FAILURE])


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([1.0, 2.5, 10.0]),
    buckets=st.integers(1, 12),
    steps=st.lists(st.tuples(st.floats(0, 3.0), OUTCOMES), max_size=120),
)
def test_time_window_matches_reference(
    size: float, buckets: int, steps: list[tuple[float, int]]
) -> None:
    window = TimeWindow(size, buckets)
    width = size / buckets
    now = 0.0
    log: list[tuple[int, int]] = []  # (bucket number, kind)
    for gap, kind in steps:
        now += gap
        window.advance(now)
        window.add(kind)
        log.append((math.floor(now / width), kind))
        head = math.floor(now / width)
        # Reference: outcomes whose bucket is one of the last `buckets` buckets.
        live = [k for number, k in log if number > head - buckets]
        totals = window.totals()
        assert totals.calls == len(live)
        assert totals.failures == sum(k in (FAILURE, SLOW_FAILURE) for k in live)
        assert totals.slow == sum(k in (SLOW_SUCCESS, SLOW_FAILURE) for k in live)
        assert totals.accepts == sum(k == SUCCESS for k in live)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 20), outcomes=st.lists(OUTCOMES, max_size=100))
def test_count_window_matches_reference(size: int, outcomes: list[int]) -> None:
    window = CountWindow(size)
    for i, kind in enumerate(outcomes):
        window.add(kind)
        live = outcomes[max(0, i + 1 - size) : i + 1]
        totals = window.totals()
        assert totals.calls == len(live)
        assert totals.failures == sum(k in (FAILURE, SLOW_FAILURE) for k in live)
        assert totals.slow == sum(k in (SLOW_SUCCESS, SLOW_FAILURE) for k in live)
        assert totals.requests == len(live)


@settings(max_examples=300, deadline=None)
@given(
    slow=st.sampled_from([0.1, 1.0, 2.0]),
    ops=st.lists(st.tuples(st.floats(0, 1.5), st.booleans(), st.integers(0, 50)), max_size=80),
)
def test_in_flight_judges_calls_older_than_slow(
    slow: float, ops: list[tuple[float, bool, int]]
) -> None:
    flight = InFlight(slow, 0.0)
    now = 0.0
    running: list[tuple[int, float]] = []  # (ticket, start)
    for gap, starting, pick in ops:
        now += gap * slow
        flight.advance(now)
        if starting or not running:
            running.append((flight.start(), now))
        else:
            ticket, _ = running.pop(pick % len(running))
            flight.end(ticket)
        flight.advance(now)
        ages = [now - start for _, start in running]
        assert flight.running == len(running)
        # Never judged slow too early; judged at most one slot (slow / 8) late.
        definitely_old = sum(age >= slow + slow / InFlight.SLOTS + 1e-9 for age in ages)
        maybe_old = sum(age >= slow - 1e-9 for age in ages)
        assert definitely_old <= flight.old <= maybe_old


def test_in_flight_retime_keeps_running_calls() -> None:
    flight = InFlight(2.0, 0.0)
    tickets = [flight.start() for _ in range(3)]
    flight.advance(2.5)
    assert flight.old == 3
    young = flight.start()
    fresh = flight.retime(1.0, 2.5)
    assert fresh.running == 4
    for ticket in (*tickets, young):
        fresh.end(ticket)
    assert fresh.running == 0
    assert fresh.old == 0 and fresh.legacy == 0


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 12), outcomes=st.lists(OUTCOMES, max_size=100))
def test_count_window_success_path_cell_matches_reference(size: int, outcomes: list[int]) -> None:
    # The breaker's success path adds to counts[pos]; those successes must land
    # in the ring in order with the outcomes added through add().
    window = CountWindow(size)
    for i, kind in enumerate(outcomes):
        if kind == SUCCESS:
            window.counts[window.pos] += 1
        else:
            window.add(kind)
        live = outcomes[max(0, i + 1 - size) : i + 1]
        totals = window.totals()
        assert totals.calls == len(live)
        assert totals.failures == sum(k in (FAILURE, SLOW_FAILURE) for k in live)
        assert totals.slow == sum(k in (SLOW_SUCCESS, SLOW_FAILURE) for k in live)
        assert totals.accepts == sum(k == SUCCESS for k in live)


def test_count_window_folds_more_successes_than_its_size() -> None:
    window = CountWindow(3)
    window.add(FAILURE)
    window.counts[window.pos] += 7
    totals = window.totals()
    assert (totals.calls, totals.failures, totals.accepts) == (3, 0, 3)
    window.add(FAILURE)
    assert window.totals().failures == 1
