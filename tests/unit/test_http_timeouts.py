"""Timeouts: validation, the ClientTimeout it builds, and the learned attempt timeout."""

from __future__ import annotations

import asyncio
import itertools
import math
import random

import aiohttp
import pytest

from resilient.errors import ConfigError
from resilient.http import AttemptTimeoutError, Timeouts
from resilient.http._attempt import (
    ATTEMPT_FIRST,
    ATTEMPT_FLOOR,
    ATTEMPT_MULTIPLE,
    ATTEMPT_PATIENCE,
    ATTEMPT_RELEARN,
    ATTEMPT_SAMPLE_GAP,
    ATTEMPT_SAMPLES,
    ATTEMPT_TAIL,
    HANG_OVERRUNS,
    HANG_WINDOW,
)
from resilient.http._attempt import AttemptLearner as _Learned
from resilient.http._timeouts import Entry, Watchdog


def test_defaults_bound_every_request() -> None:
    t = Timeouts()
    assert (t.connect, t.sock_connect, t.sock_read, t.total, t.attempt) == (
        None,
        2.0,
        None,
        10.0,
        "auto",
    )


def test_positional_order_is_connect_sock_connect_sock_read_total() -> None:
    assert Timeouts(0.5, 1.0, 3.0, 4.0) == Timeouts(
        connect=0.5, sock_connect=1.0, sock_read=3.0, total=4.0
    )


def test_client_timeout_clips_every_layer_to_the_total() -> None:
    built = Timeouts(connect=5.0, sock_connect=5.0, sock_read=5.0, total=2.0).client_timeout()
    assert built == aiohttp.ClientTimeout(total=2.0, connect=2.0, sock_connect=2.0, sock_read=2.0)
    assert Timeouts(connect=0.5, total=2.0).client_timeout() == aiohttp.ClientTimeout(
        total=2.0, connect=0.5, sock_connect=2.0
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total", 0),
        ("total", -1.0),
        ("total", math.inf),
        ("total", math.nan),
        ("total", None),
        ("total", True),
        ("total", "2"),
        ("connect", 0.0),
        ("sock_connect", -0.1),
        ("sock_read", math.inf),
        ("attempt", 0),
        ("attempt", "fast"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Timeouts(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_attempt_may_be_a_number_auto_or_none() -> None:
    assert Timeouts(attempt=0.3).attempt == 0.3
    assert Timeouts(attempt=1).attempt == 1.0
    assert Timeouts(attempt=None).attempt is None
    assert Timeouts(attempt="auto").attempt == "auto"


def test_attempt_timeout_error_is_a_timeout_and_a_client_error() -> None:
    exc = AttemptTimeoutError("http://example.test", 0.1, "attempt")
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, aiohttp.ClientError)
    assert isinstance(exc, aiohttp.ServerTimeoutError)
    assert (exc.seconds, exc.bound) == (0.1, "attempt")
    assert "0.100s" in str(exc)


def feed(learned: _Learned, durations: list[float]) -> None:
    for d in durations:
        observe(learned, d)


def observe(learned: _Learned, duration: float) -> None:
    """One answer, a second after the last: every one is taken."""
    learned.observe(duration, float(next(_SECONDS)))


_SECONDS = itertools.count(1)


def test_learned_attempt_timeout_is_the_total_until_enough_answers() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.002] * (ATTEMPT_FIRST - 1))
    assert learned.seconds == 2.0
    observe(learned, 0.002)
    assert learned.seconds == ATTEMPT_FLOOR  # 10 x 2 ms is under the floor
    feed(learned, [0.02] * (ATTEMPT_RELEARN - 1))
    assert learned.seconds == ATTEMPT_FLOOR  # not learned again yet
    observe(learned, 0.02)
    assert learned.seconds > ATTEMPT_FLOOR


def test_learned_attempt_timeout_is_a_multiple_of_the_90th_percentile() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    # 80% of answers at 20 ms, 20% at 30 ms: the 90th percentile is 30 ms.
    feed(learned, ([0.02] * 4 + [0.03]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_MULTIPLE * 0.03)
    # 95% at 20 ms, 5% at 150 ms: under 10x the 90th percentile, they change nothing.
    feed(learned, ([0.02] * 19 + [0.15]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_MULTIPLE * 0.02)


def test_a_tail_that_succeeds_above_the_typical_bound_lifts_it_above_the_tail() -> None:
    # 98% at 3 ms, 2% at 60 ms: 10x the 90th percentile is under the floor, so a
    # bound from the typical answers alone would cut every answer of the tail.
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, ([0.003] * 49 + [0.06]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_TAIL * 0.06)
    # 1% at 150 ms (50x): the same.
    feed(learned, ([0.003] * 99 + [0.15]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_TAIL * 0.15)
    # Once the tail is gone from the recent answers, the typical ones decide again.
    feed(learned, [0.003] * (ATTEMPT_SAMPLES + ATTEMPT_RELEARN))
    assert learned.seconds == ATTEMPT_FLOOR


def test_a_pause_under_the_bound_does_not_move_it_and_a_longer_one_lasts_a_ring() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.02] * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(0.2)
    feed(learned, [0.15] * 10 + [0.02] * (ATTEMPT_RELEARN * 2 - 10))  # a 0.15 s pause
    assert learned.seconds == pytest.approx(0.2)
    # Answers delayed past the bound that still came are the host's tail as far
    # as the learner can tell: the bound sits above them while they are recent.
    feed(learned, [0.5] * 10 + [0.02] * (ATTEMPT_RELEARN * 2 - 10))
    assert learned.seconds == pytest.approx(ATTEMPT_TAIL * 0.5)
    feed(learned, [0.02] * (ATTEMPT_SAMPLES + ATTEMPT_RELEARN))
    assert learned.seconds == pytest.approx(0.2)


def overruns(learned: _Learned, pattern: str) -> list[bool]:
    """Attempts in order: "." ends in time, "x" reaches the bound; what each "x" was told."""
    told = []
    for mark in pattern:
        learned.attempts += 1
        if mark == "x":
            told.append(learned.overran())
    return told


def test_overruns_as_rare_as_a_tail_never_show_hang_symptoms() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    # 2% of attempts (1 in 50), for a long time: always a tail, never a hang.
    assert all(overruns(learned, ("." * 49 + "x") * 200))
    # HANG_OVERRUNS spread over more than HANG_WINDOW attempts: still a tail.
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    gap = "." * (HANG_WINDOW // (HANG_OVERRUNS - 1))
    assert all(overruns(learned, ("x" + gap) * HANG_OVERRUNS))


def test_overruns_as_frequent_as_hangs_show_symptoms_until_a_window_without_them() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    assert overruns(learned, "." * 100) == []
    # A brownout: a third of the attempts hang. The first HANG_OVERRUNS - 1 are
    # given the benefit of the doubt; from the HANG_OVERRUNS-th on, symptoms.
    told = overruns(learned, "..x" * 30)
    assert told == [True] * (HANG_OVERRUNS - 1) + [False] * (30 - HANG_OVERRUNS + 1)
    assert learned.attempts < learned.hung_until  # what arm() reads: cut at the bound
    # Symptoms last until HANG_WINDOW attempts passed since the oldest of the
    # last HANG_OVERRUNS overruns.
    overruns(learned, "." * (HANG_WINDOW - HANG_OVERRUNS * 3))
    assert learned.attempts < learned.hung_until
    overruns(learned, "." * HANG_OVERRUNS * 3)
    assert learned.attempts >= learned.hung_until
    assert overruns(learned, "x") == [True]


def test_learned_attempt_timeout_follows_a_host_that_slows_down_and_is_capped() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.02] * ATTEMPT_SAMPLES)
    feed(learned, [0.05] * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(0.5)
    feed(learned, [0.5] * ATTEMPT_SAMPLES)
    assert learned.seconds == 2.0  # never above the total


# -- the watchdog: one loop timer for many attempts ---------------------------------


async def hang() -> None:
    await asyncio.sleep(30)


def entry(task: asyncio.Task[object], expiry: float) -> Entry:
    return (expiry, task, "attempt", 0.1, None)


async def test_the_watchdog_cuts_each_attempt_at_its_own_expiry() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    tasks = [asyncio.create_task(hang()) for _ in range(3)]
    now = loop.time()
    # Added late-first: an earlier expiry must re-arm the one timer.
    for key, task, after in (("late", tasks[0], 30.0), ("b", tasks[1], 0.1), ("a", tasks[2], 0.05)):
        watchdog.watch(key, entry(task, now + after))
    await asyncio.wait(tasks[1:], timeout=5.0)
    assert tasks[1].cancelled() and tasks[2].cancelled()
    assert not tasks[0].done()
    assert watchdog.release("a") is not None  # cut: the attempt is told so
    assert watchdog.release("b") is not None
    assert watchdog.release("late") is None  # ended before its expiry: not cut
    tasks[0].cancel()


async def test_an_attempt_released_before_the_cut_runs_is_not_cancelled() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    task = asyncio.create_task(hang())
    watchdog.watch("key", entry(task, loop.time() - 1.0))
    watchdog._check()  # the timer goes off: the cut is queued for the next iteration
    assert watchdog.release("key") is None  # ... but the answer came first
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not task.done() and task.cancelling() == 0
    task.cancel()


async def test_two_attempts_of_one_task_are_watched_apart() -> None:
    # A request sent from within another one's attempt (a middleware asking
    # for a token, say) runs in the same task: the keys are the requests.
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    task = asyncio.create_task(hang())
    watchdog.watch("outer", entry(task, loop.time() + 0.05))
    watchdog.watch("inner", entry(task, loop.time() + 30.0))
    assert watchdog.release("inner") is None
    await asyncio.wait([task], timeout=5.0)
    assert task.cancelled()  # the outer attempt's bound still held
    assert watchdog.release("outer") is not None


async def test_an_attempt_past_a_learned_bound_waits_on_unless_the_host_shows_hang_symptoms() -> (
    None
):
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    calm, hung = asyncio.create_task(hang()), asyncio.create_task(hang())
    now = loop.time()
    learned.attempts += 1
    watchdog.watch(
        "calm", (now + 0.02, calm, "attempt", 0.02, (learned, now + 0.2, "attempt", 0.2))
    )
    await asyncio.sleep(0.1)  # past the bound, before the longer one
    assert not calm.done()  # no hang symptoms: it waits on ...
    assert watchdog.entries["calm"][:4] == (now + 0.2, calm, "attempt", 0.2)
    await asyncio.wait([calm], timeout=5.0)
    assert calm.cancelled()  # ... and a hang is cut there
    cut = watchdog.release("calm")
    assert cut is not None and cut[3] == 0.2  # the error names the longer bound
    # Hang symptoms (HANG_OVERRUNS recent overruns): cut at the bound itself.
    overruns(learned, "x" * HANG_OVERRUNS)
    assert learned.attempts < learned.hung_until
    now = loop.time()
    watchdog.watch("hung", (now + 0.02, hung, "attempt", 0.02, (learned, now + 30, "attempt", 30)))
    await asyncio.wait([hung], timeout=5.0)
    assert hung.cancelled()
    cut = watchdog.release("hung")
    assert cut is not None and cut[3] == 0.02


async def test_a_refused_attempt_is_not_counted_by_the_learned_bound() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    task = asyncio.create_task(hang())
    learned.attempts += 1  # arm() counted it; then its breaker refused it
    watchdog.watch("key", (loop.time() + 30, task, "attempt", 30, (learned, 0.0, "attempt", 0)))
    watchdog.withdraw("key")
    assert learned.attempts == 0 and not watchdog.entries
    task.cancel()


def test_the_patience_is_the_bound_s_own_headroom() -> None:
    assert ATTEMPT_PATIENCE == ATTEMPT_MULTIPLE
    assert HANG_WINDOW == HANG_OVERRUNS * 10  # a share of 10%: what the 90th percentile sets aside


def test_every_answer_feeds_it_until_first_learned_then_a_sample_of_them() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    for _ in range(ATTEMPT_FIRST - 1):  # all at once: until learned, every one is taken
        learned.observe(0.002, 100.0)
    assert learned.next_at == 100.0  # every answer is taken
    learned.observe(0.002, 100.0)
    assert learned.next_at == 100.0 + ATTEMPT_SAMPLE_GAP
    assert learned.seconds == ATTEMPT_FLOOR
    # Now at most one per ATTEMPT_SAMPLE_GAP: a burst of slow answers is one sample.
    for _ in range(ATTEMPT_RELEARN * 2):
        learned.observe(0.5, 100.0 + ATTEMPT_SAMPLE_GAP)
    assert learned.seconds == ATTEMPT_FLOOR
    for i in range(ATTEMPT_RELEARN * 4):  # spaced out, they are all taken
        learned.observe(0.5, 101.0 + i * ATTEMPT_SAMPLE_GAP)
    assert learned.seconds == 2.0


async def test_many_attempts_are_each_cut_at_their_own_expiry_never_before() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    rng = random.Random(7)
    cut_at: dict[int, float] = {}

    async def attempt(key: int) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cut_at[key] = loop.time()
            raise

    expiries: dict[int, float] = {}
    tasks = []
    for key in range(300):  # added in random order: earlier expiries re-arm the timer
        task = asyncio.create_task(attempt(key))
        tasks.append(task)
        expiries[key] = loop.time() + rng.uniform(0.01, 0.3)
        watchdog.watch(key, entry(task, expiries[key]))
        if key % 50 == 0:
            await asyncio.sleep(0)  # let some attempts start and the timer run meanwhile
    await asyncio.wait(tasks, timeout=10.0)
    assert all(task.cancelled() for task in tasks)
    for key, expiry in expiries.items():
        assert cut_at[key] >= expiry  # never early
        assert cut_at[key] < expiry + 2.0  # and not left hanging (generous: a shared machine)
        assert watchdog.release(key) is not None
    assert not watchdog.entries


class Cutter:
    """Stands for a body's cutter: counts the cuts it is given."""

    def __init__(self) -> None:
        self.cuts = 0

    def cancel(self) -> None:
        self.cuts += 1


async def test_a_body_past_its_expiry_is_cut_once_and_dropped() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(loop)
    late, ended, due = Cutter(), Cutter(), Cutter()
    now = loop.time()
    watchdog.watch("due", (now + 0.02, due, "body", 1.0, None))
    watchdog.watch("ended", (now + 0.02, ended, "body", 1.0, None))
    watchdog.watch("late", (now + 30.0, late, "body", 1.0, None))
    watchdog.forget("ended")  # its stream ended first
    watchdog.forget("never watched")  # a second end (eof, then the release) is harmless
    await asyncio.sleep(0.1)
    assert (due.cuts, ended.cuts, late.cuts) == (1, 0, 0)
    assert set(watchdog.entries) == {"late"}  # nobody releases a body: the cut drops it
    assert not watchdog.cut
    watchdog._check()  # the timer going off again cuts nothing twice
    await asyncio.sleep(0)
    assert due.cuts == 1


def test_the_pipeline_shares_asyncio_s_clock_but_not_another_loop_s() -> None:
    import time

    from resilient.http._shared import loop_clock

    class OwnClock(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 42.0

    standard, own = asyncio.new_event_loop(), OwnClock()
    try:
        assert loop_clock(standard) is time.monotonic  # a breaker's default clock: shared
        assert loop_clock(own)() == 42.0
    finally:
        standard.close()
        own.close()
