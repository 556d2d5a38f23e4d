"""hedge(): one winner, losers cancelled and awaited, the budget and the deadline honoured.

The hedge delay is waited through an injected sleep, so no test depends on
real timing: a hedge fires when the test lets it.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from resilient.breaker import CircuitBreaker
from resilient.budget import RetryBudget
from resilient.deadline import deadline
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.hedge import LearnedDelay, hedge
from resilient.policy import Policy


async def at_once(seconds: float) -> None:
    await asyncio.sleep(0)


class Attempts:
    """Attempt n (from 0) waits on ``gates[n]``; records starts and cancellations."""

    def __init__(self, count: int) -> None:
        self.gates = [asyncio.Event() for _ in range(count)]
        self.started = 0
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    async def __call__(self) -> int:
        n = self.started
        self.started += 1
        try:
            await self.gates[n].wait()
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        self.finished.append(n)
        return n


async def test_a_slow_primary_loses_to_the_hedge_and_is_cancelled_before_return() -> None:
    attempts = Attempts(2)
    attempts.gates[1].set()
    call = hedge(delay=0.01, max_extra=1, sleep=at_once)(attempts.__call__)
    assert await call() == 1
    assert attempts.started == 2
    assert attempts.cancelled == [0]  # already unwound when the call returned


async def test_a_fast_primary_sends_no_hedge() -> None:
    attempts = Attempts(2)
    attempts.gates[0].set()
    never = asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        await never.wait()

    call = hedge(delay=0.01, sleep=sleep_forever)(attempts.__call__)
    assert await call() == 0
    assert attempts.started == 1


async def test_two_successes_at_once_make_one_winner_and_the_breaker_counts_one() -> None:
    br = CircuitBreaker("hedge-one-winner")
    opened = asyncio.Event()
    started = 0

    async def both_answer() -> int:
        nonlocal started
        started += 1
        n = started
        if n == 2:
            opened.set()
        await opened.wait()  # both wake in the same loop iteration
        return n

    call = Policy(breaker=br, hedge=hedge(delay=0.01, max_extra=1, sleep=at_once))(both_answer)
    result = await call()
    assert result in (1, 2)
    assert started == 2
    snap = br.snapshot()
    assert snap.calls == 1  # one success; the other was turned away as a cancellation
    assert snap.failures == 0


async def test_the_budget_caps_hedges_under_a_slow_fleet() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, window=10.0, clock=lambda: now[0])
    started = 0

    async def slow_first() -> None:
        nonlocal started
        started += 1
        for _ in range(20):  # every primary is slower than the delay
            await asyncio.sleep(0)

    call = hedge(delay=0.0, max_extra=2, budget=budget, sleep=at_once)(slow_first)
    for _ in range(200):
        await call()
    hedges = started - 200
    assert 0 < hedges <= 20  # ratio 0.1 of 200 calls


async def test_a_failed_primary_is_not_hedged_and_raises() -> None:
    started = 0

    async def fails() -> None:
        nonlocal started
        started += 1
        raise OSError("down")

    with pytest.raises(OSError, match="down"):
        await hedge(delay=0.01, sleep=at_once)(fails)()
    assert started == 1


@pytest.mark.parametrize("failing", [0, 1])
async def test_an_error_ending_with_the_winner_is_retrieved_not_logged(failing: int) -> None:
    # Both attempts end in one loop iteration, one failing: whichever the
    # race looks at first, the failure must not reach the loop's handler
    # ("Task exception was never retrieved") once its task is collected.
    loop = asyncio.get_running_loop()
    logged: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    release = asyncio.Event()
    started = 0

    async def attempt() -> str:
        nonlocal started
        n, started = started, started + 1
        if n == 0:
            await release.wait()
        else:  # the hedge wakes the primary, and both go on in the next iteration
            release.set()
            await asyncio.sleep(0)
        if n == failing:
            raise OSError("lost")
        return "won"

    try:
        assert await hedge(delay=0.0, sleep=at_once)(attempt)() == "won"
        assert started == 2
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert logged == []


async def test_the_deadline_bounds_all_attempts_together() -> None:
    attempts = Attempts(3)
    call = hedge(delay=0.0, max_extra=2, sleep=at_once)(attempts.__call__)
    with pytest.raises(DeadlineExceeded):
        async with deadline(0.05):
            await call()
    assert attempts.started == 3
    assert sorted(attempts.cancelled) == [0, 1, 2]


async def test_the_callers_cancellation_cancels_every_attempt() -> None:
    attempts = Attempts(2)
    task = asyncio.ensure_future(hedge(delay=0.0, sleep=at_once)(attempts.__call__)())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(attempts.cancelled) == [0, 1]


def test_a_percentile_delay_is_learned_and_none_is_sent_before() -> None:
    learned = LearnedDelay("p95", float("inf"), samples=100, min_samples=20)
    for i in range(19):
        learned.observe(0.010, float(i))
    assert learned.seconds == float("inf")
    for i in range(1, 101):
        learned.observe(i / 1000, 100.0 + i)
    assert learned.seconds == pytest.approx(0.095, abs=0.005)  # the last 100 seen


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delay": "p50"}, "delay"),
        ({"delay": -1.0}, "delay"),
        ({"max_extra": 0}, "max_extra"),
        ({"budget": object()}, "budget"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_bad_options_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        hedge(**kwargs)
    assert info.value.field == field


def test_sync_functions_are_refused() -> None:
    with pytest.raises(ConfigError, match="async"):
        hedge(delay=0.1)(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="async"):
        Policy(hedge=hedge(delay=0.1))(lambda: None)
