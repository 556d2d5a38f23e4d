"""The breaker's side of the store seam: what it sends, what it adopts, how it degrades."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import BreakerConfig, CircuitBreaker, CircuitOpenError, State
from resilient.fleet import FleetView


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Link:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def linked(clock: Clock, **fields: object) -> tuple[CircuitBreaker, Link]:
    cfg = {"minimum_calls": 10, "window_size": 10, "buckets": 10, "half_open_calls": 2}
    cfg.update(fields)
    br = CircuitBreaker("shared", BreakerConfig(**cfg), clock=clock, rng=lambda: 0.5)  # type: ignore[arg-type]
    link = Link()
    br.link_store(link)
    return br, link


def view(state: str = "closed", generation: int = 0, **kw: object) -> FleetView:
    base: dict[str, object] = {
        "state": state,
        "open_until": None,
        "now": 1_000.0,
        "trips": 0,
        "generation": generation,
        "calls": 0,
        "failures": 0,
        "slow": 0,
        "tokens": 0,
    }
    base.update(kw)
    return FleetView(**base)  # type: ignore[arg-type]


def fail(br: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        br.acquire().failure()


def trip_asked(br: CircuitBreaker) -> str | None:
    """The fleet trip this breaker asks of its store at the next sync, if any."""
    box = br.sync_out()
    assert box is not None
    return box.trip


def test_sync_out_sends_each_count_once_by_bucket_age() -> None:
    clock = Clock()
    br, _ = linked(clock)
    assert br.sync_out() is None  # nothing to say
    for _ in range(3):
        br.acquire().success()
    br.acquire().failure()
    box = br.sync_out()
    assert box is not None
    assert box.deltas == ((0, 3, 0, 1, 0),)
    assert box.window_width == pytest.approx(1.0)
    assert br.sync_out() is None  # already sent
    clock.now += 1.0
    br.acquire().success()
    box = br.sync_out()
    assert box is not None and box.deltas == ((0, 1, 0, 0, 0),)


def test_a_quiet_breaker_is_skipped_and_its_next_call_still_sent() -> None:
    # sync_out skips a breaker whose window is as it was sent (same bucket, same
    # sum); a call on the decorator's success path must still be seen as new.
    clock = Clock()
    br, _ = linked(clock)
    call = br(lambda: "ok")
    call()
    assert br.sync_out() is not None
    assert br.sync_out() is None
    call()
    box = br.sync_out()
    assert box is not None and box.deltas == ((0, 1, 0, 0, 0),)


def test_a_degraded_breaker_asks_the_fleet_even_when_quiet() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_failed()
    box = br.sync_out()
    assert box is not None and box.deltas == ()
    br.sync_in(view())
    assert br.sync_out() is None


def test_a_late_fleet_view_is_ignored() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view("open", generation=7, open_until=1_004.0, now=1_000.0))
    br.sync_in(view("closed", generation=6))  # crossed on another connection
    assert br.state is State.OPEN


def test_failed_sync_keeps_its_counts_for_the_next() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.acquire().failure()
    box = br.sync_out()
    br.sync_failed(box)
    assert br.snapshot().degraded
    again = br.sync_out()
    assert again is not None and again.deltas == ((0, 0, 0, 1, 0),)
    br.sync_in(view())
    assert not br.snapshot().degraded


def test_local_trip_is_not_asked_of_the_fleet_but_sent_at_once() -> None:
    clock = Clock()
    br, link = linked(clock)
    fail(br, 10)  # no fleet view yet: this window alone
    assert br.state is State.OPEN
    assert link.wakes == 1  # the fleet weighs these counts now, not at the next flush
    box = br.sync_out()
    assert box is not None and box.trip is None
    assert box.deltas == ((0, 0, 0, 10, 0),)


def test_local_trip_beside_a_healthy_fleet_stays_local() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view(calls=100, failures=0))  # the peers are healthy
    fail(br, 10)  # 110 calls, 10 failures in the fleet: 9%
    assert br.state is State.OPEN
    assert trip_asked(br) is None


def test_own_and_fleet_windows_crossing_together_trip_the_fleet() -> None:
    # The fleet's window holds only what this process sent: both windows cross
    # with the same call, and that is a fleet transition, asked at once.
    clock = Clock()
    br, link = linked(clock)
    fail(br, 5)
    assert trip_asked(br) is None
    br.sync_in(view(calls=5, failures=5))  # our five, as the fleet answered
    fail(br, 5)
    assert br.state is State.OPEN
    assert link.wakes == 1
    assert (trip_asked(br) or "").startswith("fleet failure rate")


def test_the_fleet_window_crossing_first_trips_the_fleet() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view(calls=6, failures=6))  # the peers' first failures, as last heard
    fail(br, 3)
    assert br.state is State.CLOSED  # 9 in the fleet, under minimum_calls
    fail(br, 1)
    assert br.state is State.OPEN  # 10 of 10 in the fleet; 4 here
    assert (trip_asked(br) or "").startswith("fleet failure rate")


def test_no_fleet_trip_from_a_view_heard_before_the_store_went_away() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view(calls=9, failures=9))
    br.sync_failed()  # degraded: the view is no longer the fleet's
    fail(br, 1)
    assert br.state is State.CLOSED
    assert trip_asked(br) is None


def test_fleet_crossing_opens_here_and_asks_the_fleet_at_once() -> None:
    clock = Clock()
    br, link = linked(clock)
    br.sync_in(view(calls=40, failures=19))  # the fleet is at 47.5%
    br.acquire().failure()  # 41 calls, 20 failures: 48.8%
    assert br.state is State.CLOSED
    br.acquire().failure()  # 42 calls, 21 failures: 50%
    assert br.state is State.OPEN
    assert link.wakes == 1
    box = br.sync_out()
    assert box is not None and box.trip is not None and "fleet" in box.trip


def test_adopts_fleet_open_with_its_open_until_then_fleet_close() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view("open", generation=1, open_until=1_004.0, now=1_000.0, trips=2))
    assert br.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        br.acquire()
    assert info.value.retry_after == pytest.approx(4.0)
    assert br.snapshot().trips == 2
    br.sync_in(view("closed", generation=2))
    assert br.state is State.CLOSED


def test_fleet_half_open_admits_only_granted_probes() -> None:
    clock = Clock()
    br, link = linked(clock)
    br.sync_in(view("open", generation=1, open_until=1_001.0, now=1_000.0))
    clock.now += 1.5
    with pytest.raises(CircuitOpenError):
        br.acquire()  # HALF_OPEN now, but no permit granted yet
    assert br.state is State.HALF_OPEN
    box = br.sync_out()
    assert box is not None and box.tokens_wanted == 2
    br.sync_in(view("half_open", generation=1, tokens=1))
    probe = br.acquire()
    with pytest.raises(CircuitOpenError):
        br.acquire()
    probe.success()
    assert br.state is State.HALF_OPEN  # the fleet decides, not this process
    box = br.sync_out()
    assert box is not None and (box.probe_calls, box.probe_failures) == (1, 0)
    assert link.wakes >= 2


def test_half_open_does_not_stick_when_the_store_goes_away() -> None:
    clock = Clock()
    br, _ = linked(clock)
    br.sync_in(view("open", generation=1, open_until=1_001.0, now=1_000.0))
    clock.now += 1.5
    with pytest.raises(CircuitOpenError):
        br.acquire()
    br.sync_failed()
    with pytest.raises(CircuitOpenError):
        br.acquire()  # one slow sync is not an outage: still waiting for the fleet
    br.sync_failed()
    first, second = br.acquire(), br.acquire()  # probing locally now
    first.success()
    second.success()
    assert br.state is State.CLOSED


def test_manual_states_are_sent_fleet_wide_and_adopted() -> None:
    clock = Clock()
    br, link = linked(clock)
    br.force_open()
    box = br.sync_out()
    assert box is not None and box.manual == "forced_open" and link.wakes == 1
    other, _ = linked(clock)
    other.sync_in(view("forced_open", generation=3))
    assert other.state is State.FORCED_OPEN
    other.sync_in(view("closed", generation=4))
    assert other.state is State.CLOSED


def test_local_open_stands_when_fleet_says_closed() -> None:
    clock = Clock()
    br, _ = linked(clock)
    for _ in range(10):
        br.acquire().failure()
    br.sync_in(view("closed", generation=5, calls=1000, failures=10))
    assert br.state is State.OPEN  # our own fault, not hidden by a healthy fleet


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("call"), st.sampled_from(["success", "failure"])),
            st.tuples(st.just("wait"), st.sampled_from([0.3, 1.0, 2.5, 9.7, 30.0])),
            st.tuples(st.just("sync"), st.booleans()),  # True: the sync fails
        ),
        max_size=60,
    )
)
def test_every_count_reaches_the_fleet_once_in_its_bucket(steps: list[tuple[str, Any]]) -> None:
    # Only the buckets from the last sync's head on are read again; a failed
    # sync makes the next one read every live bucket. Whatever the order of
    # calls, waits and (failed) syncs, what the fleet is sent per bucket is
    # what was counted there.
    clock = Clock()
    br, _ = linked(clock, minimum_calls=10**6)  # never trips: every call is counted
    width = 1.0
    counted: Counter[tuple[int, int]] = Counter()  # (bucket number, outcome) -> calls
    delivered: Counter[tuple[int, int]] = Counter()
    for kind, what in [*steps, ("sync", False)]:
        if kind == "call":
            permit = br.acquire()
            permit.success() if what == "success" else permit.failure()
            counted[math.floor(clock.now / width), 0 if what == "success" else 2] += 1
        elif kind == "wait":
            clock.now += what
        else:
            box = br.sync_out()
            if box is None:
                continue
            if what:
                br.sync_failed(box)
                continue
            head = math.floor(clock.now / width)
            for age, *counts in box.deltas:
                assert all(c >= 0 for c in counts)
                for outcome, n in enumerate(counts):
                    delivered[head - age, outcome] += n
            br.sync_in(view())
    head = math.floor(clock.now / width)
    live = {key: n for key, n in counted.items() if key[0] > head - 10}
    assert {key: n for key, n in delivered.items() if key[0] > head - 10 and n} == live
