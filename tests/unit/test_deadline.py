"""deadline(): computed on enter, nests as the minimum, cancels awaited bodies."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref

import pytest

from resilient import DeadlineExceeded, deadline, remaining
from resilient.deadline import _current, timers_of


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


# -- one loop timer for every scope of a loop ------------------------------------------


async def test_the_scopes_of_a_loop_share_one_timer_and_none_fires_early() -> None:
    loop = asyncio.get_running_loop()
    timers = timers_of(loop)
    fired_at: dict[float, float] = {}
    never = asyncio.Event()

    async def wait(seconds: float) -> None:
        armed_at = loop.time()
        try:
            async with deadline(seconds):
                await never.wait()
        except DeadlineExceeded:
            fired_at[seconds] = loop.time() - armed_at

    tasks = [asyncio.ensure_future(wait(s)) for s in (0.05, 0.01, 0.03)]
    await asyncio.sleep(0)  # every scope entered
    assert len(timers.due) == 3
    await asyncio.gather(*tasks)
    assert sorted(fired_at) == [0.01, 0.03, 0.05]
    assert all(took >= seconds for seconds, took in fired_at.items()), fired_at
    assert timers.due == {}


async def test_an_earlier_expiry_armed_later_does_not_wait_for_the_earlier_timer() -> None:
    never = asyncio.Event()

    async def wait(seconds: float) -> None:
        async with deadline(seconds):
            await never.wait()

    long = asyncio.ensure_future(wait(60))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await wait(0.01)
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long


async def test_a_scope_that_ends_in_time_leaves_no_entry() -> None:
    timers = timers_of(asyncio.get_running_loop())
    async with deadline(30):
        assert len(timers.due) == 1
    assert timers.due == {}
    with pytest.raises(ZeroDivisionError):
        async with deadline(30):
            raise ZeroDivisionError
    assert timers.due == {}


async def test_each_loop_has_its_own_timers() -> None:
    here = timers_of(asyncio.get_running_loop())

    async def there() -> object:
        return timers_of(asyncio.get_running_loop())

    other = await asyncio.to_thread(asyncio.run, there())
    assert other is not here
    assert timers_of(asyncio.get_running_loop()) is here


def test_a_loop_is_not_kept_alive_by_its_timers() -> None:
    loop = asyncio.new_event_loop()

    async def body() -> None:
        async with deadline(60):  # ends at once; the loop timer stays set for 60 s
            pass

    loop.run_until_complete(body())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
