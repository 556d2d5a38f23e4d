"""The breaker's contract, driven by an injected clock (no test sleeps to test time)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable

import pytest

from resilient import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceeded,
    RejectedError,
    State,
    deadline,
)
from resilient.events import CallRejected, ConfigChanged, StateChanged


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock, **fields: object) -> CircuitBreaker:
    base = {"minimum_calls": 4, "window": "count", "window_size": 10, "open_duration": 5.0}
    base.update(fields)
    return CircuitBreaker("dep", BreakerConfig(**base), clock=clock, rng=lambda: 0.5)  # type: ignore[arg-type]


def ok() -> str:
    return "ok"


def boom() -> None:
    raise OSError("down")


def run(br: CircuitBreaker, fn: object) -> object:
    try:
        return br(fn)()  # type: ignore[operator]
    except OSError as exc:
        return exc


def trip(br: CircuitBreaker, n: int = 4) -> None:
    for _ in range(n):
        run(br, boom)
    assert br.state is State.OPEN


# --------------------------------------------------------------------------- CLOSED -> OPEN


def test_opens_at_failure_rate_once_minimum_calls_reached() -> None:
    clock = Clock()
    br = make(clock)
    run(br, boom)
    run(br, boom)
    run(br, boom)
    assert br.state is State.CLOSED  # 3 calls < minimum_calls 4
    run(br, ok)  # 4 calls, 75% failures
    assert br.state is State.OPEN


def test_stays_closed_below_threshold() -> None:
    clock = Clock()
    br = make(clock, failure_rate_threshold=0.5)
    for fn in (ok, ok, ok, boom, ok, ok, boom, ok):
        run(br, fn)
    snap = br.snapshot()
    assert br.state is State.CLOSED
    assert (snap.calls, snap.failures) == (8, 2)
    assert snap.failure_rate == pytest.approx(0.25)


def test_rate_equal_to_threshold_opens() -> None:
    clock = Clock()
    br = make(clock, failure_rate_threshold=0.5)
    for fn in (ok, boom, ok, boom):
        run(br, fn)
    assert br.state is State.OPEN


def test_rejection_does_not_call_function_and_carries_retry_after() -> None:
    clock = Clock()
    br = make(clock)
    trip(br)
    called = []
    clock.advance(2.0)
    with pytest.raises(CircuitOpenError) as info:
        br(lambda: called.append(1))()
    assert called == []
    assert info.value.name == "dep"
    assert info.value.retry_after == pytest.approx(3.0)
    assert isinstance(info.value, RejectedError)


def test_count_window_forgets_old_outcomes() -> None:
    clock = Clock()
    br = make(clock, window_size=4, minimum_calls=4)
    for fn in (boom, ok, ok, ok, ok):
        run(br, fn)
    snap = br.snapshot()
    assert (snap.calls, snap.failures) == (4, 0)


def test_count_window_minimum_is_capped_by_its_size() -> None:
    clock = Clock()
    br = make(clock, window_size=3, minimum_calls=100)
    for fn in (boom, boom, ok):
        run(br, fn)
    assert br.state is State.OPEN


def test_time_window_expires_old_buckets() -> None:
    clock = Clock()
    br = make(clock, window="time", window_size=10, buckets=10, minimum_calls=3)
    run(br, boom)
    run(br, boom)
    clock.advance(10.5)  # both failures have left the window
    run(br, boom)
    run(br, ok)
    run(br, ok)
    assert br.state is State.CLOSED
    assert br.snapshot().failures == 1


def test_time_window_trips_when_a_healthy_bucket_expires() -> None:
    clock = Clock()
    br = make(clock, window="time", window_size=10, buckets=10, minimum_calls=4)
    for _ in range(10):
        run(br, ok)
    clock.advance(5)
    for _ in range(4):
        run(br, boom)
    assert br.state is State.CLOSED  # 4 of 14
    clock.advance(5.5)  # the ten successes expire; the next admission judges again
    with pytest.raises(CircuitOpenError):
        br(ok)()
    assert br.state is State.OPEN


def test_success_after_failures_trips_when_minimum_is_reached() -> None:
    clock = Clock()
    br = make(clock, window="time", minimum_calls=5, failure_rate_threshold=0.5)
    for fn in (boom, boom, boom, ok):
        run(br, fn)
    assert br.state is State.CLOSED
    run(br, ok)  # 5 calls, 60% failures
    assert br.state is State.OPEN


# --------------------------------------------------------------------------- classification


def test_classification_record_ignore_and_result() -> None:
    clock = Clock()

    class Business(Exception):
        pass

    br = CircuitBreaker(
        "c",
        BreakerConfig(window="count", window_size=10, minimum_calls=1, failure_rate_threshold=0.3),
        record_exceptions=(OSError,),
        ignore_exceptions=(ConnectionAbortedError,),
        result_is_failure=lambda r: r == 503,
        clock=clock,
    )

    def raise_(exc: BaseException) -> None:
        raise exc

    with pytest.raises(Business):
        br(lambda: raise_(Business()))()  # not recorded: counts as a success
    with pytest.raises(ConnectionAbortedError):
        br(lambda: raise_(ConnectionAbortedError()))()  # ignored: not counted
    assert br(lambda: 200)() == 200
    snap = br.snapshot()
    assert (snap.calls, snap.failures) == (2, 0)
    assert br(lambda: 503)() == 503  # returned, counted as a failure
    assert br.state is State.OPEN


def test_rejected_error_beneath_is_never_counted() -> None:
    clock = Clock()
    br = make(clock, minimum_calls=1)

    def full() -> None:
        raise RejectedError("bulkhead full")

    for _ in range(5):
        with pytest.raises(RejectedError):
            br(full)()
    assert br.snapshot().calls == 0
    assert br.state is State.CLOSED


# --------------------------------------------------------------------------- OPEN -> HALF_OPEN


def test_half_open_admits_exactly_n_probes_then_closes() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=3)
    trip(br)
    clock.advance(5.01)
    permits = [br.acquire() for _ in range(3)]
    assert br.state is State.HALF_OPEN
    with pytest.raises(CircuitOpenError) as info:
        br.acquire()
    assert info.value.retry_after == 0.0
    permits[0].success()
    assert br.state is State.HALF_OPEN  # 1 of 3: two failures could still reopen
    permits[1].success()
    assert br.state is State.CLOSED  # 2 of 3: no outcome of the last can reopen
    assert br.snapshot().calls == 0  # a fresh window after closing
    permits[2].success()  # no longer a probe: an ordinary call of the new window
    assert br.snapshot().calls == 1


def test_half_open_reopens_as_soon_as_verdict_is_certain() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=4, failure_rate_threshold=0.5)
    trip(br)
    clock.advance(5.01)
    permits = [br.acquire() for _ in range(4)]
    permits[0].failure()
    assert br.state is State.HALF_OPEN
    permits[1].failure()  # 2 of 4 failed: 50% whatever the rest do
    assert br.state is State.OPEN
    permits[2].success()  # a probe of a finished round decides nothing
    permits[3].success()
    assert br.state is State.OPEN


def test_cancelled_probe_gives_its_permit_back() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=1)
    trip(br)
    clock.advance(5.01)
    probe = br.acquire()
    with pytest.raises(CircuitOpenError):
        br.acquire()
    probe.error(asyncio.CancelledError())
    assert br.state is State.HALF_OPEN
    br.acquire().success()
    assert br.state is State.CLOSED


def test_call_admitted_before_transition_never_decides_probes() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=1)
    early = br.acquire()  # admitted while CLOSED
    trip(br)
    clock.advance(5.01)
    probe = br.acquire()
    early.failure()  # ends during HALF_OPEN: counted in the window, no verdict
    assert br.state is State.HALF_OPEN
    probe.success()
    assert br.state is State.CLOSED


def test_probe_from_an_earlier_round_does_not_vote() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=2, failure_rate_threshold=0.5)
    trip(br)
    clock.advance(5.01)
    old_round = [br.acquire(), br.acquire()]
    old_round[0].failure()  # 1 of 2: reopen
    assert br.state is State.OPEN
    clock.advance(20)
    new_round = [br.acquire(), br.acquire()]
    old_round[1].failure()  # stale: no effect on the new round
    new_round[0].success()
    new_round[1].success()
    assert br.state is State.CLOSED


def test_hung_probe_is_judged_slow_and_decides_nothing_later() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=1, slow_call_duration=1.0, slow_call_rate_threshold=1.0)
    trip(br)
    clock.advance(5.01)
    hung = br.acquire()
    clock.advance(1.5)  # past slow_call_duration: judged slow at the next admission
    with pytest.raises(CircuitOpenError):
        br.acquire()
    assert br.state is State.OPEN
    hung.success()  # no longer a probe of any round
    assert br.state is State.OPEN


def test_open_duration_backs_off_and_resets_on_close() -> None:
    clock = Clock()
    br = make(clock, open_duration=1.0, open_backoff=2.0, open_duration_max=3.0, half_open_calls=1)

    def open_for() -> float:
        with pytest.raises(CircuitOpenError) as info:
            br.acquire()
        return info.value.retry_after

    trip(br)
    assert open_for() == pytest.approx(1.0)
    for expected in (2.0, 3.0, 3.0):  # doubled, then capped
        clock.advance(open_for() + 0.001)
        br.acquire().failure()
        assert open_for() == pytest.approx(expected)
    clock.advance(open_for() + 0.001)
    br.acquire().success()
    assert br.state is State.CLOSED
    trip(br)
    assert open_for() == pytest.approx(1.0)


@pytest.mark.parametrize("draw", [0.0, 0.999999])
def test_jitter_is_within_ten_percent_and_applies_before_cap(draw: float) -> None:
    clock = Clock()
    br = CircuitBreaker(
        "j",
        BreakerConfig(window="count", window_size=4, minimum_calls=1, open_duration=10.0),
        clock=clock,
        rng=lambda: draw,
    )
    run(br, boom)
    with pytest.raises(CircuitOpenError) as info:
        br.acquire()
    assert 9.0 <= info.value.retry_after <= 11.0
    assert abs(info.value.retry_after - 10.0) > 0.99
    capped = CircuitBreaker(
        "k",
        BreakerConfig(
            window="count",
            window_size=4,
            minimum_calls=1,
            open_duration=10.0,
            open_duration_max=10.0,
        ),
        clock=clock,
        rng=lambda: draw,
    )
    run(capped, boom)
    with pytest.raises(CircuitOpenError) as info:
        capped.acquire()
    assert info.value.retry_after <= 10.0


# --------------------------------------------------------------------------- slow calls


def test_slow_calls_trip_on_slow_rate() -> None:
    clock = Clock()
    br = make(clock, slow_call_duration=1.0, slow_call_rate_threshold=0.5)

    def slow() -> str:
        clock.advance(1.5)
        return "late"

    for fn in (ok, slow, ok, slow):
        br(fn)()
    assert br.state is State.OPEN
    assert br.snapshot().slow_calls == 2


def test_calls_hanging_past_slow_limit_trip_before_they_end() -> None:
    clock = Clock()
    br = make(
        clock, window="time", minimum_calls=4, slow_call_duration=2.0, slow_call_rate_threshold=0.5
    )
    hung = [br.acquire() for _ in range(4)]  # four calls that never answer
    clock.advance(1.0)
    br.acquire().success()
    assert br.state is State.CLOSED
    clock.advance(1.3)  # the four are past 2 s (judged within an eighth of it)
    with pytest.raises(CircuitOpenError):
        br.acquire()
    snap = br.snapshot()
    assert br.state is State.OPEN
    assert snap.slow_calls == 4
    for permit in hung:
        permit.failure()
    # Ended hung calls count once, as slow failures, not twice.
    assert br.snapshot().slow_calls == 4


# --------------------------------------------------------------------------- manual states


def test_forced_open_disabled_and_reset() -> None:
    clock = Clock()
    br = make(clock)
    br.force_open()
    with pytest.raises(CircuitOpenError) as info:
        br(ok)()
    assert info.value.retry_after == math.inf
    assert br.state is State.FORCED_OPEN
    br.disable()
    for _ in range(10):
        run(br, boom)
    assert br.state is State.DISABLED
    assert br.snapshot().calls == 0
    br.reset()
    assert br.state is State.CLOSED
    assert br(ok)() == "ok"


def test_adaptive_keeps_forced_states() -> None:
    clock = Clock()
    br = make(clock, mode="adaptive")
    br.force_open()
    with pytest.raises(CircuitOpenError):
        br.acquire()


# --------------------------------------------------------------------------- config updates


def test_update_config_keeps_statistics_and_state() -> None:
    clock = Clock()
    br = make(clock, minimum_calls=10)
    events: list[object] = []
    br.add_listener(events.append)
    for fn in (boom, boom, boom, ok):
        run(br, fn)
    br.update_config(dataclasses.replace(br.config, minimum_calls=10, failure_rate_threshold=0.9))
    assert br.snapshot().calls == 4
    br.update_config(dataclasses.replace(br.config, minimum_calls=4, failure_rate_threshold=0.7))
    assert br.snapshot().failures == 3
    assert br.state is State.OPEN  # judged against the new thresholds at once
    with pytest.raises(CircuitOpenError):
        br(ok)()
    assert [type(e) for e in events[:3]] == [ConfigChanged, ConfigChanged, StateChanged]


def test_update_config_with_new_window_shape_starts_empty_but_keeps_state() -> None:
    clock = Clock()
    br = make(clock)
    trip(br)
    before = br.snapshot()
    br.update_config(dataclasses.replace(br.config, window_size=20))
    after = br.snapshot()
    assert after.calls == 0
    assert br.state is State.OPEN
    assert after.open_until == before.open_until
    assert after.trips == before.trips


def test_update_config_never_resets_open_breaker() -> None:
    clock = Clock()
    br = make(clock)
    trip(br)
    br.update_config(dataclasses.replace(br.config, failure_rate_threshold=0.99))
    with pytest.raises(CircuitOpenError):
        br.acquire()


def test_update_slow_limit_keeps_running_calls_counted() -> None:
    clock = Clock()
    br = make(clock, window="time", slow_call_duration=2.0)
    running = [br.acquire() for _ in range(3)]
    br.update_config(dataclasses.replace(br.config, slow_call_duration=1.0))
    assert br.snapshot().running == 3
    for permit in running:
        permit.success()
    assert br.snapshot().running == 0
    assert br.snapshot().calls == 3


# --------------------------------------------------------------------------- events


def test_events_are_delivered_after_the_change_outside_the_lock() -> None:
    clock = Clock()
    br = make(clock)
    seen: list[tuple[object, State]] = []

    def listener(event: object) -> None:
        # The lock is free: a listener may read the breaker.
        seen.append((event, br.snapshot().state))

    br.add_listener(listener)
    trip(br)
    with pytest.raises(CircuitOpenError):
        br.acquire()
    changed, rejected = seen[0][0], seen[1][0]
    assert isinstance(changed, StateChanged)
    assert (changed.old, changed.new, seen[0][1]) == (State.CLOSED, State.OPEN, State.OPEN)
    assert isinstance(rejected, CallRejected)
    assert rejected.state is State.OPEN


def test_a_failing_listener_never_reaches_the_caller() -> None:
    clock = Clock()
    br = make(clock)

    def bad(event: object) -> None:
        raise RuntimeError("listener bug")

    br.add_listener(bad)
    trip(br)
    with pytest.raises(CircuitOpenError):
        br(ok)()


# --------------------------------------------------------------------------- decorator, context


def test_decorator_keeps_metadata_and_coroutine_functions() -> None:
    import inspect

    br = CircuitBreaker("meta")

    @br
    async def fetch(x: int) -> int:
        """Doc."""
        return x

    @br
    def compute(x: int) -> int:
        return x

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Doc."
    assert fetch.__wrapped__ is not None  # type: ignore[attr-defined]
    assert compute(3) == 3
    assert asyncio.run(fetch(4)) == 4


def test_context_managers_count_outcomes() -> None:
    clock = Clock()
    br = make(clock)
    with br:
        pass
    with pytest.raises(OSError), br:
        raise OSError

    async def main() -> None:
        async with br:
            await asyncio.sleep(0)

    asyncio.run(main())
    snap = br.snapshot()
    assert (snap.calls, snap.failures) == (3, 1)


def test_name_is_validated() -> None:
    with pytest.raises(ValueError, match="breaker name"):
        CircuitBreaker("bad name!")


# --------------------------------------------------------------------------- cancellation


async def test_callers_cancellation_is_never_counted() -> None:
    br = CircuitBreaker("cancel", BreakerConfig(window="count", window_size=5, minimum_calls=1))

    @br
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(slow())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = br.snapshot()
    assert (snap.calls, snap.running, br.state) == (0, 0, State.CLOSED)


async def test_deadline_with_fair_budget_counts_as_failure() -> None:
    br = CircuitBreaker(
        "fair",
        BreakerConfig(window="count", window_size=5, minimum_calls=1, slow_call_duration=0.01),
    )

    @br
    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeadlineExceeded):
        async with deadline(0.05):  # 50 ms >= 10 ms: the dependency had its chance
            await hang()
    assert br.snapshot().failures == 1
    assert br.state is State.OPEN


async def test_deadline_with_unfair_budget_is_not_counted() -> None:
    br = CircuitBreaker(
        "unfair",
        BreakerConfig(window="count", window_size=5, minimum_calls=1, slow_call_duration=5.0),
    )

    @br
    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeadlineExceeded):
        async with deadline(0.02):  # 20 ms < 5 s: too short to be fair
            await hang()
    snap = br.snapshot()
    assert (snap.calls, snap.running, br.state) == (0, 0, State.CLOSED)


def through(
    br: CircuitBreaker, way: str, fn: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """``fn`` through ``br`` by the decorator or by an ``async with`` block (the same core)."""
    if way == "decorator":
        return br(fn)

    async def block() -> None:
        async with br:
            await fn()

    return block


@pytest.mark.parametrize("way", ["decorator", "async with"])
async def test_cancel_on_open_cuts_calls_already_past_slow_limit(way: str) -> None:
    clock = Clock()
    br = CircuitBreaker(
        "cut",
        BreakerConfig(
            window="count",
            window_size=10,
            minimum_calls=2,
            slow_call_duration=1.0,
            cancel_on_open=True,
        ),
        clock=clock,
    )
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    hang = through(br, way, wait)

    @br
    async def fail() -> None:
        raise OSError

    late = asyncio.ensure_future(hang())
    await asyncio.sleep(0)
    clock.advance(1.5)  # `late` is past the slow limit
    young = asyncio.ensure_future(hang())
    await asyncio.sleep(0)
    for _ in range(2):
        with pytest.raises((OSError, CircuitOpenError)):
            await fail()
    assert br.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await asyncio.wait_for(late, timeout=5)  # failed fast, not left waiting
    assert not young.done()  # younger than the slow limit: left alone
    gate.set()
    await young


@pytest.mark.parametrize("way", ["decorator", "async with"])
async def test_hung_async_probe_is_judged_by_a_timer_and_cut(way: str) -> None:
    br = CircuitBreaker(
        "probe-timer",
        BreakerConfig(
            window="count",
            window_size=4,
            minimum_calls=1,
            half_open_calls=1,
            slow_call_duration=0.02,
            open_duration=0.01,
            cancel_on_open=True,
        ),
    )
    run(br, boom)
    assert br.state is State.OPEN
    await asyncio.sleep(0.02)  # the open duration (at most 11 ms) has passed

    async def sleep() -> None:
        await asyncio.sleep(10)

    hang = through(br, way, sleep)

    # No other caller comes: the probe's own timer judges it slow, reopens the
    # breaker and cuts it instead of leaving it to hang for 10 s.
    with pytest.raises(CircuitOpenError):
        await asyncio.wait_for(hang(), timeout=5)
    assert br.state is State.OPEN


def auto_breaker(clock: Clock, window_size: int = 60) -> CircuitBreaker:
    """A time-window breaker learning "auto": 4x the healthy p99, 10 ms to 2 s, from 32 calls."""
    from resilient.latency import AutoSlow

    return CircuitBreaker(
        "auto",
        BreakerConfig(slow_call_duration="auto", window_size=window_size, buckets=60),
        clock=clock,
        auto_slow=AutoSlow(multiple=4.0, floor=0.01, ceiling=2.0, min_samples=32),
    )


def test_auto_slow_limit_is_learned_on_the_success_path() -> None:
    clock = Clock()
    br = auto_breaker(clock)
    assert br.slow_call_seconds == 2.0  # the ceiling until enough calls were seen

    def call() -> None:
        clock.advance(0.005)

    for _ in range(40):
        br(call)()
    assert br.slow_call_seconds == pytest.approx(0.02)  # 4 x the healthy 5 ms
    hung = br.acquire()
    clock.advance(0.05)
    hung.success()
    assert br.snapshot().slow_calls == 1  # judged against the learned limit


def test_once_learned_auto_takes_a_sample_of_the_calls_not_all_of_them() -> None:
    from resilient.latency import SAMPLE_GAP

    clock = Clock()
    br = auto_breaker(clock, window_size=600)
    for _ in range(32):  # until first learned, every call is taken
        permit = br.acquire()
        clock.advance(0.005)
        permit.success()
    assert br.slow_call_seconds == pytest.approx(0.02)
    # A burst that ends at one instant is one sample: 100 calls of 15 ms move nothing.
    clock.advance(1.0)
    permits = [br.acquire() for _ in range(100)]
    clock.advance(0.015)
    for permit in permits:
        permit.success()
    assert br.slow_call_seconds == pytest.approx(0.02)
    # The same calls one after another end at least SAMPLE_GAP apart: all are taken.
    for _ in range(100):
        permit = br.acquire()
        clock.advance(max(0.015, SAMPLE_GAP))
        permit.success()
    assert br.slow_call_seconds == pytest.approx(0.06)


async def test_the_deadline_rule_can_be_replaced() -> None:
    br = CircuitBreaker(
        "strict",
        BreakerConfig(window="count", window_size=5, minimum_calls=1, slow_call_duration=5.0),
        deadline_is_fair=lambda budget, slow: True,  # every expiry is the dependency's fault
    )

    @br
    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DeadlineExceeded):
        async with deadline(0.02):  # unfair by the default rule, counted by this one
            await hang()
    assert br.snapshot().failures == 1


def test_a_late_probe_ending_after_close_is_judged_as_an_ordinary_call() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=3, minimum_calls=1, failure_rate_threshold=0.5)
    trip(br, n=1)
    clock.advance(5.01)
    probes = [br.acquire() for _ in range(3)]
    probes[0].success()
    probes[1].success()  # certain: closed, with a fresh window
    assert br.state is State.CLOSED
    probes[2].failure()  # no longer a probe: 1 call, 1 failure in the new window
    assert br.state is State.OPEN


# --------------------------------------------------------------------------- durations


def test_recorded_durations_include_every_ended_call_and_none_is_lost_to_a_take() -> None:
    clock = Clock()
    br = make(clock, slow_call_duration=1.0)

    def taking(seconds: float, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            clock.advance(seconds)
            return fn()

        return call

    run(br, taking(0.01, ok))  # before recording: not kept
    br.record_durations()
    run(br, taking(0.02, ok))  # the success path
    run(br, taking(0.03, boom))  # a failure (the settle path)
    run(br, taking(2.0, ok))  # a slow success (the settle path)
    held = br._durations  # what a thread on its way to append has fetched
    assert br.take_durations() == pytest.approx([0.02, 0.03, 2.0])
    assert held is not None
    held.append(0.05)  # ... appended after the take swapped the list out
    run(br, taking(0.04, ok))
    assert br.take_durations() == pytest.approx([0.05, 0.04])  # the late one, then the new
    assert br.take_durations() == []


def test_observers_and_durations_share_one_test_and_both_are_served() -> None:
    clock = Clock()
    br = make(clock)
    seen: list[tuple[str, float]] = []

    def observer(outcome: str, seconds: float) -> None:
        seen.append((outcome, seconds))

    br.observe_calls(observer)
    br.record_durations()
    br.unobserve_calls(observer)  # the durations still want the calls
    run(br, ok)
    br.observe_calls(observer)
    run(br, ok)
    assert br.take_durations() == [0.0, 0.0] and seen == [("success", 0.0)]


# --------------------------------------------------------------------------- try_acquire


def test_try_acquire_refuses_with_none_where_acquire_raises() -> None:
    clock = Clock()
    br = make(clock, half_open_calls=1)
    heard: list[object] = []
    br.add_listener(heard.append)
    permit = br.try_acquire()
    assert permit is not None  # CLOSED: a permit, as acquire() gives
    permit.success()
    trip(br, 3)  # with the success: 4 calls, 75% failures
    heard.clear()
    assert br.try_acquire() is None  # OPEN with time left: no exception
    assert [type(e) for e in heard] == [CallRejected]  # heard as from acquire()
    clock.advance(5.0)
    probe = br.try_acquire()  # the open time is up: the one probe
    assert probe is not None and br.state is State.HALF_OPEN
    assert br.try_acquire() is None  # the probe is taken: refused after deciding
    probe.success()
    assert br.state is State.CLOSED
    br.force_open()
    before = br.snapshot().calls
    assert br.try_acquire() is None
    assert br.snapshot().calls == before  # a refusal is not a call
