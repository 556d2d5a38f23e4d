"""RetryBudget: the accounting against a plain model, exact counts under threads."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient.budget import BUCKETS, RetryBudget
from resilient.errors import ConfigError


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_defaults_follow_the_design() -> None:
    budget = RetryBudget()
    assert (budget.ratio, budget.min_per_second, budget.window) == (0.2, 10.0, 10.0)


def test_the_floor_alone_allows_min_per_second_times_window() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=4.0, clock=FakeClock())
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    assert budget.snapshot().retries == 2


def test_requests_buy_retries_at_the_ratio() -> None:
    budget = RetryBudget(ratio=0.25, min_per_second=0.0, window=10.0, clock=FakeClock())
    for _ in range(8):
        budget.record_request()
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    snap = budget.snapshot()
    assert (snap.requests, snap.retries, snap.limit) == (8, 2, 2.0)


def test_requests_recorded_in_bulk_count_like_single_ones_and_leave_the_window_too() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.25, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_requests(6)
    budget.record_request()
    budget.record_requests(0)  # nothing
    budget.record_request()
    assert budget.snapshot().requests == 8
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    clock.now = 10.0  # the bucket they were recorded in leaves the window
    assert budget.snapshot().requests == 0


def test_a_batch_goes_into_the_bucket_of_its_time_and_leaves_the_window_with_it() -> None:
    clock = FakeClock(20.0)
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_request()  # bucket 20
    budget.record_requests(3, age=8.5)  # bucket 11: made before bucket 20's call
    budget.record_requests(2, age=5.0)  # bucket 15, between them
    budget.record_requests(4, age=10.0)  # outside the window: not counted
    budget.record_requests(4, age=math.inf)
    assert budget.snapshot().requests == 6
    clock.now = 21.5  # bucket 11 leaves the window; 15 and 21 stay
    assert budget.snapshot().requests == 3
    budget.record_requests(1, age=6.2)  # bucket 15 again: added to it
    assert budget.snapshot().requests == 4
    clock.now = 25.5  # bucket 15 leaves
    assert budget.snapshot().requests == 1


def test_a_refused_retry_counts_nothing() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, window=1.0, clock=FakeClock())
    assert not budget.allow_retry()
    assert not budget.allow_retry()
    assert budget.snapshot().retries == 0


def test_counts_leave_the_window_one_bucket_at_a_time() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_request()  # bucket 0
    clock.now = 5.0
    budget.record_request()  # bucket 5
    clock.now = 9.99
    assert budget.snapshot().requests == 2
    clock.now = 10.0  # bucket 10: bucket 0 leaves
    assert budget.snapshot().requests == 1
    clock.now = 15.0
    assert budget.snapshot().requests == 0
    clock.now = 1000.0
    assert budget.snapshot() == budget.snapshot()
    assert budget.snapshot().requests == 0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("ratio", {"ratio": -0.1}),
        ("ratio", {"ratio": math.nan}),
        ("ratio", {"ratio": "0.2"}),
        ("min_per_second", {"min_per_second": math.inf}),
        ("min_per_second", {"min_per_second": True}),
        ("window", {"window": 0}),
        ("window", {"window": -1.0}),
    ],
)
def test_bad_parameters_name_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        RetryBudget(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


# A plain model of the documented accounting: every event with its time, and
# the window as "the bucket of now and the BUCKETS - 1 before it".
Op = tuple[str, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.just(0.0)),
        st.tuples(st.just("retry"), st.just(0.0)),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=4.0)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.5]),
    floor=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
    window=st.sampled_from([1.0, 2.0, 10.0]),
)
def test_accounting_matches_the_documented_rule(
    ops: list[Op], ratio: float, floor: float, window: float
) -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(ratio=ratio, min_per_second=floor, window=window, clock=clock)
    width = window / BUCKETS
    events: list[tuple[str, int]] = []  # (kind, bucket index)

    def in_window(kind: str) -> int:
        now = int(clock.now // width)
        return sum(1 for k, i in events if k == kind and i > now - BUCKETS)

    for op, dt in ops:
        if op == "advance":
            clock.now += dt
        elif op == "request":
            budget.record_request()
            events.append(("request", int(clock.now // width)))
        else:
            expected = in_window("retry") + 1 <= ratio * in_window("request") + floor * window
            assert budget.allow_retry() is expected
            if expected:
                events.append(("retry", int(clock.now // width)))
                # what the budget exists for: right after a retry, the window is within it
                # (later, the requests that paid for it may leave the window first)
                snap = budget.snapshot()
                assert snap.retries <= snap.limit
        snap = budget.snapshot()
        assert (snap.requests, snap.retries) == (in_window("request"), in_window("retry"))


def test_no_request_is_lost_under_threads() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    threads, per_thread = 8, 5000
    start = threading.Barrier(threads)

    def record() -> None:
        start.wait()
        for _ in range(per_thread):
            budget.record_request()

    workers = [threading.Thread(target=record) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert budget.snapshot().requests == threads * per_thread


def test_racing_retries_never_overdraw() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=5.0, window=10.0, clock=FakeClock())
    threads = 8
    start = threading.Barrier(threads)
    granted: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        mine = [budget.allow_retry() for _ in range(20)]
        with lock:
            granted.extend(mine)

    workers = [threading.Thread(target=race) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert granted.count(True) == 50
    assert budget.snapshot().retries == 50


def test_repr_gives_the_counts() -> None:
    budget = RetryBudget(clock=FakeClock())
    budget.record_request()
    assert "1 requests" in repr(budget)
