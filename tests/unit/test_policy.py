"""Policy: the layers' order and what each layer sees of the others, sync and async.

Breakers get an injected clock where a test reasons about time; per-attempt
timeouts that must fire use a 10 ms real timer (their only real waiting).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilient.breaker import CircuitBreaker
from resilient.bulkhead import Bulkhead
from resilient.config import BreakerConfig
from resilient.deadline import Expiry, deadline
from resilient.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    RejectedError,
)
from resilient.policy import Policy
from resilient.retry import retry
from resilient.state import State

# Two calls in a count window, both failed: open.
TRIPS_FAST = BreakerConfig(window="count", window_size=2, minimum_calls=2, open_duration=60.0)


class FakeTime:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def no_wait(state: object) -> float:
    return 0.0


def failing(*errors: BaseException, then: object = "ok") -> Callable[[], Any]:
    """A function raising ``errors`` in turn, then returning ``then``; ``.calls`` counts."""
    pending = list(errors)

    def call() -> Any:
        call.calls += 1  # type: ignore[attr-defined]
        if pending:
            raise pending.pop(0)
        return then

    call.calls = 0  # type: ignore[attr-defined]
    return call


async def hang() -> None:
    await asyncio.Event().wait()


def expiry_timers() -> list[asyncio.TimerHandle]:
    """The per-attempt timers armed right now on this loop (not the deadline's own)."""
    loop = asyncio.get_running_loop()
    return [
        h
        for h in loop._scheduled  # type: ignore[attr-defined]
        if isinstance(h._callback, Expiry)  # (a deadline scope is its own callback)
        and not h.cancelled()
    ]


# -- order: retry > breaker > bulkhead > timeout ---------------------------------------


def test_the_breaker_sees_every_attempt() -> None:
    t = FakeTime()
    br = CircuitBreaker("every-attempt", clock=t)
    fn = failing(ConnectionError(), ConnectionError())
    policy = Policy(breaker=br, retry=retry(attempts=3, wait=no_wait), clock=t, sleep=t.sleep)
    assert policy(fn)() == "ok"
    snap = br.snapshot()
    assert (fn.calls, snap.calls, snap.failures) == (3, 3, 2)  # type: ignore[attr-defined]


def test_an_open_breaker_ends_the_retries() -> None:
    t = FakeTime()
    br = CircuitBreaker("ends-retries", TRIPS_FAST, clock=t)
    fn = failing(*[ConnectionError() for _ in range(9)])
    wrapped = Policy(breaker=br, retry=retry(attempts=5, wait=no_wait), clock=t)(fn)
    with pytest.raises(CircuitOpenError):
        wrapped()
    assert fn.calls == 2  # type: ignore[attr-defined]
    assert br.state is State.OPEN


def test_a_full_bulkhead_is_neither_counted_nor_retried() -> None:
    t = FakeTime()
    br = CircuitBreaker("bulkhead-full", TRIPS_FAST, clock=t)
    bh = Bulkhead(1)
    fn = failing()
    wrapped = Policy(breaker=br, retry=retry(attempts=3), bulkhead=bh, clock=t, sleep=t.sleep)(fn)
    with bh:
        for _ in range(5):
            with pytest.raises(BulkheadFullError):
                wrapped()
    snap = br.snapshot()
    assert (fn.calls, snap.calls, snap.failures, t.sleeps) == (0, 0, 0, [])  # type: ignore[attr-defined]
    assert br.state is State.CLOSED
    assert wrapped() == "ok"


def test_bulkhead_n_means_n_in_flight_and_no_queue() -> None:
    policy = Policy(bulkhead=1)
    assert policy._bulkhead is not None
    assert (policy._bulkhead.limit, policy._bulkhead.queue) == (1, 0)
    inner_result: list[object] = []

    @policy
    def outer(depth: int) -> str:
        if depth:
            try:
                outer(depth - 1)
            except BulkheadFullError as exc:
                inner_result.append(exc)
        return "done"

    assert outer(1) == "done"
    assert isinstance(inner_result[0], BulkheadFullError)


# -- the per-attempt timeout ------------------------------------------------------------


async def test_a_per_attempt_timeout_raises_timeout_error_and_trips_the_breaker() -> None:
    br = CircuitBreaker("timeout-trips", TRIPS_FAST)
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await hang()

    wrapped = Policy(breaker=br, timeout=0.01)(slow)
    for _ in range(2):
        with pytest.raises(TimeoutError) as caught:
            await wrapped()
        assert not isinstance(caught.value, DeadlineExceeded)
    assert br.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await wrapped()
    assert calls == 2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_timed_out_attempt_is_retried() -> None:
    answers = [None, "second"]

    async def first_hangs() -> str | None:
        answer = answers.pop(0)
        if answer is None:
            await hang()
        return answer

    wrapped = Policy(retry=retry(attempts=2, wait=no_wait), timeout=0.01)(first_hangs)
    assert await wrapped() == "second"


async def test_a_shorter_deadline_arms_no_second_timer_and_surfaces_as_itself() -> None:
    br = CircuitBreaker("deadline-serves")
    seen: list[int] = []

    async def slow() -> None:
        seen.append(len(expiry_timers()))
        await hang()

    wrapped = Policy(breaker=br, timeout=5.0)(slow)
    with pytest.raises(DeadlineExceeded):
        async with deadline(0.01):
            await wrapped()
    assert seen == [0]
    # the deadline left the dependency no fair chance (0.01 s < slow_call_duration)
    assert br.snapshot().failures == 0


async def test_a_longer_deadline_leaves_the_timeout_its_own_timer() -> None:
    seen: list[int] = []

    async def slow() -> None:
        seen.append(len(expiry_timers()))
        await hang()

    with pytest.raises(TimeoutError) as caught:
        async with deadline(30.0):
            await Policy(timeout=0.01)(slow)()
    assert not isinstance(caught.value, DeadlineExceeded)
    assert seen == [1]
    assert expiry_timers() == []


async def test_a_deadline_without_a_timer_still_bounds_the_attempt() -> None:
    # A sync `with deadline` in async code arms no timer: the layer arms one for it.
    with pytest.raises(DeadlineExceeded), deadline(0.01):
        await Policy(timeout=5.0)(hang)()


async def test_the_callers_cancellation_stays_a_cancellation() -> None:
    br = CircuitBreaker("caller-cancels")
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await hang()

    task = asyncio.create_task(Policy(breaker=br, timeout=30.0)(slow)())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert br.snapshot().calls == 0
    assert expiry_timers() == []


async def test_a_call_that_swallows_the_timeout_keeps_its_result() -> None:
    async def stubborn() -> str:
        try:
            await hang()
        except asyncio.CancelledError:
            return "finished anyway"
        return "unreachable"

    assert await Policy(timeout=0.01)(stubborn)() == "finished anyway"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


def test_sync_timeout_discards_an_overrun_and_counts_it() -> None:
    t = FakeTime()
    br = CircuitBreaker("sync-timeout", TRIPS_FAST, clock=t)

    def slow() -> str:
        t.now += 1.5
        return "late"

    wrapped = Policy(breaker=br, timeout=1.0, clock=t)(slow)
    for _ in range(2):
        with pytest.raises(TimeoutError) as caught:
            wrapped()
        assert not isinstance(caught.value, DeadlineExceeded)
    assert br.state is State.OPEN


def test_sync_timeout_lets_a_prompt_call_through() -> None:
    t = FakeTime()

    def quick() -> str:
        t.now += 0.5
        return "fine"

    assert Policy(timeout=1.0, clock=t)(quick)() == "fine"


def test_sync_refuses_to_start_with_no_budget() -> None:
    t = FakeTime()
    fn = failing()
    with deadline(1.0, clock=t):
        t.now += 1.0
        with pytest.raises(DeadlineExceeded):
            Policy(retry=retry())(fn)()
    assert fn.calls == 0  # type: ignore[attr-defined]


def test_sync_overrun_of_a_shorter_deadline_surfaces_as_the_deadline() -> None:
    t = FakeTime()

    def slow() -> str:
        t.now += 2.0
        return "late"

    with deadline(1.0, clock=t), pytest.raises(DeadlineExceeded):
        Policy(timeout=5.0, clock=t)(slow)()


# -- fallback ---------------------------------------------------------------------------


def test_fallback_supplies_the_result_for_failures_and_rejections() -> None:
    br = CircuitBreaker("fallback")
    seen: list[BaseException] = []

    def fallback(exc: Exception) -> str:
        seen.append(exc)
        return "cached"

    wrapped = Policy(breaker=br, fallback=fallback)(failing(ValueError("boom")))
    assert wrapped() == "cached"
    br.force_open()
    assert wrapped() == "cached"
    assert isinstance(seen[0], ValueError)
    assert isinstance(seen[1], CircuitOpenError) and isinstance(seen[1], RejectedError)


async def test_async_fallback_may_be_async() -> None:
    async def fallback(exc: Exception) -> str:
        return f"fallback for {type(exc).__name__}"

    async def down() -> str:
        raise ConnectionError

    wrapped = Policy(retry=retry(attempts=2, wait=no_wait), fallback=fallback)(down)
    assert await wrapped() == "fallback for ConnectionError"
    sync_fallback = Policy(fallback=lambda exc: "plain")(down)
    assert await sync_fallback() == "plain"


def test_a_sync_function_needs_a_sync_fallback() -> None:
    async def fallback(exc: Exception) -> None:
        return None

    with pytest.raises(ConfigError, match="fallback"):
        Policy(fallback=fallback)(failing())


async def test_fallback_never_swallows_cancellation() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await hang()

    task = asyncio.create_task(Policy(fallback=lambda exc: "no")(slow)())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- recovery, metadata, the clock, bad input -------------------------------------------


async def test_async_recovery_through_every_layer() -> None:
    br = CircuitBreaker("recovery")
    calls = 0

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError
        return x + 1

    policy = Policy(breaker=br, retry=retry(attempts=3, wait=no_wait), timeout=5.0, bulkhead=4)
    assert await policy(flaky)(41) == 42
    snap = br.snapshot()
    assert (calls, snap.calls, snap.failures) == (3, 3, 2)
    assert policy._bulkhead is not None and policy._bulkhead.active == 0


def test_policy_clock_and_sleep_replace_the_retrys() -> None:
    t = FakeTime()
    fn = failing(OSError(), OSError())
    Policy(retry=retry(wait=lambda s: 0.5), clock=t, sleep=t.sleep)(fn)()
    assert t.sleeps == [0.5, 0.5]


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy(breaker=CircuitBreaker("meta")),
        Policy(retry=retry(), timeout=1.0, bulkhead=2, fallback=lambda e: None),
    ],
    ids=["empty", "breaker-only", "all-but-breaker"],
)
def test_metadata_and_kind_are_kept(policy: Policy) -> None:
    def get(x: int) -> int:
        """Get."""
        return x

    async def aget(x: int) -> int:
        """Get, async."""
        return x

    for fn in (get, aget):
        wrapped = policy(fn)
        assert (wrapped.__name__, wrapped.__doc__) == (fn.__name__, fn.__doc__)
        assert wrapped.__wrapped__ is fn  # type: ignore[attr-defined]
        assert inspect.iscoroutinefunction(wrapped) is inspect.iscoroutinefunction(fn)
    assert policy(get)(7) == 7


async def test_an_empty_async_policy_passes_through() -> None:
    async def one() -> int:
        return 1

    assert await Policy()(one)() == 1


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("timeout", {"timeout": 0}),
        ("timeout", {"timeout": -1.0}),
        ("timeout", {"timeout": float("inf")}),
        ("timeout", {"timeout": True}),
        ("bulkhead", {"bulkhead": 0}),
        ("bulkhead", {"bulkhead": "8"}),
        ("retry", {"retry": 3}),
        ("breaker", {"breaker": "recommend"}),
        ("fallback", {"fallback": "cached"}),
        ("sleep", {"sleep": 0.1}),
    ],
)
def test_bad_parameters_name_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
