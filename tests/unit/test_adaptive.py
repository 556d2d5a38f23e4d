"""Adaptive (SRE client-side) throttling: the formula from a table, and the breaker using it."""

from __future__ import annotations

import random

import pytest

from resilient import BreakerConfig, CircuitBreaker, CircuitOpenError, State
from resilient.adaptive import drop_probability


@pytest.mark.parametrize(
    ("requests", "accepts", "k", "minimum", "expected"),
    [
        (100, 100, 1.5, 20, 0.0),  # healthy
        (100, 50, 1.5, 20, (100 - 75) / 101),
        (100, 0, 1.5, 20, 100 / 101),  # all failing: nearly all dropped
        (100, 0, 2.0, 200, 0.0),  # under minimum: nothing dropped
        (10, 4, 2.0, 1, 2 / 11),
        (10, 5, 2.0, 1, 0.0),
    ],
)
def test_drop_probability_table(
    requests: int, accepts: int, k: float, minimum: int, expected: float
) -> None:
    assert drop_probability(requests, accepts, k, minimum) == pytest.approx(expected)


def test_adaptive_breaker_throttles_in_proportion_and_stays_closed() -> None:
    now = [0.0]
    rng = random.Random(7)
    br = CircuitBreaker(
        "ad",
        BreakerConfig(mode="adaptive", adaptive_k=1.5, minimum_calls=20, window_size=10),
        clock=lambda: now[0],
        rng=rng.random,
    )
    admitted = dropped = 0

    def call(healthy: bool) -> None:
        nonlocal admitted, dropped
        try:
            permit = br.acquire()
        except CircuitOpenError as exc:
            assert exc.retry_after == 0.0
            dropped += 1
            return
        admitted += 1
        permit.success() if healthy else permit.failure()

    for _ in range(200):  # healthy: nothing dropped
        now[0] += 0.01
        call(True)
    assert dropped == 0
    for _ in range(2000):  # sick for 20 s: most calls dropped, never OPEN
        now[0] += 0.01
        call(False)
    assert br.state is State.CLOSED
    assert dropped > 1500
    snap = br.snapshot()
    assert snap.requests > snap.calls  # drops count as requests, not as calls
    assert snap.drop_probability > 0.9
    admitted = dropped = 0
    for _ in range(1500):  # healed: throttling fades as accepts come back
        now[0] += 0.01
        call(True)
    tail_dropped = dropped
    assert br.snapshot().drop_probability == 0.0
    assert tail_dropped < 1500


def test_adaptive_does_not_drop_below_minimum_calls() -> None:
    br = CircuitBreaker("ad-min", BreakerConfig(mode="adaptive", minimum_calls=50))
    for _ in range(49):
        br.acquire().failure()
    br.acquire().failure()  # the 50th request is still admitted
