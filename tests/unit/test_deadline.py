"""deadline(): computed on enter, nests as the minimum, cancels awaited bodies."""

from __future__ import annotations

import asyncio
import math

import pytest

from resilient import DeadlineExceeded, deadline, remaining
from resilient.deadline import _current


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_remaining_is_none_outside_and_counts_down_inside() -> None:
    clock = Clock()
    assert remaining() is None
    scope = deadline(2.0, clock=clock)
    clock.now += 10  # computed on enter, not at creation
    with scope:
        assert remaining() == pytest.approx(2.0)
        clock.now += 0.5
        assert remaining() == pytest.approx(1.5)
        clock.now += 5
        assert remaining() == 0.0
    assert remaining() is None


def test_nesting_takes_the_minimum() -> None:
    clock = Clock()
    with deadline(1.0, clock=clock):
        with deadline(5.0, clock=clock) as inner:
            assert remaining() == pytest.approx(1.0)
            assert inner.remaining() == pytest.approx(1.0)
        with deadline(0.25, clock=clock):
            assert remaining() == pytest.approx(0.25)
        assert remaining() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-1, math.nan])
def test_bad_seconds_are_refused_at_the_door(bad: float) -> None:
    with pytest.raises(ValueError, match="deadline seconds"):
        deadline(bad)


def test_a_scope_is_single_use() -> None:
    scope = deadline(1.0)
    with scope:
        pass
    with pytest.raises(RuntimeError), scope:
        pass


async def test_expiry_cancels_the_body_and_raises_deadline_exceeded() -> None:
    seen_fired = []
    with pytest.raises(DeadlineExceeded) as info:
        async with deadline(0.02):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                scope = _current()
                seen_fired.append(scope is not None and scope.fired)
                raise
    assert seen_fired == [True]
    assert isinstance(info.value, TimeoutError)
    assert remaining() is None


async def test_inner_looser_scope_arms_no_timer_and_outer_fires() -> None:
    with pytest.raises(DeadlineExceeded):
        async with deadline(0.02), deadline(10):
            await asyncio.sleep(5)


async def test_callers_cancellation_is_not_a_deadline() -> None:
    async def body() -> None:
        async with deadline(10):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_scopes_do_not_leak_between_tasks() -> None:
    async def inside() -> float | None:
        async with deadline(1.0):
            await asyncio.sleep(0.01)
            return remaining()

    async def outside() -> float | None:
        await asyncio.sleep(0.005)
        return remaining()

    got_inside, got_outside = await asyncio.gather(inside(), outside())
    assert got_inside is not None and got_outside is None


async def test_body_that_finishes_in_time_is_untouched() -> None:
    async with deadline(1.0):
        await asyncio.sleep(0)
    assert remaining() is None
