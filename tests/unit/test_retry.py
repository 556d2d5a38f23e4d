"""retry(): attempt counts, what is never retried, stop/wait/deadline/budget, sync and async.

Time is a fake clock that only the injected sleep (and the attempts
themselves, where a test says so) moves forward: nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient.budget import RetryBudget
from resilient.deadline import deadline
from resilient.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    RejectedError,
)
from resilient.retry import NEVER_RETRIED, FullJitter, Retry, RetryState, retry


class FakeTime:
    """A clock, and a sleep that moves it (recording every wait)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Flaky:
    """Raises the given errors in turn, then returns ``"ok"``; counts its calls."""

    def __init__(self, *errors: BaseException, took: float = 0.0, time: FakeTime | None = None):
        self.errors = list(errors)
        self.calls = 0
        self.took = took
        self.time = time

    def __call__(self) -> str:
        self.calls += 1
        if self.time is not None:
            self.time.now += self.took
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def fixed(seconds: float) -> Callable[[object], float]:
    return lambda state: seconds


# -- attempts ---------------------------------------------------------------------------


def test_attempts_count_the_first_call_and_the_last_error_is_raised() -> None:
    t = FakeTime()
    errors = [ConnectionError(i) for i in range(5)]
    f = Flaky(*errors)
    wrapped = retry(attempts=3, wait=fixed(0.5), clock=t, sleep=t.sleep)(f)
    with pytest.raises(ConnectionError) as caught:
        wrapped()
    assert f.calls == 3
    assert caught.value is errors[2]
    assert t.sleeps == [0.5, 0.5]


def test_success_after_failures_returns_the_result() -> None:
    t = FakeTime()
    f = Flaky(OSError("a"), TimeoutError("b"))
    assert retry(wait=fixed(0.1), clock=t, sleep=t.sleep)(f)() == "ok"
    assert f.calls == 3


def test_attempts_one_means_no_retry() -> None:
    f = Flaky(OSError())
    with pytest.raises(OSError):
        retry(attempts=1)(f)()
    assert f.calls == 1


def test_a_success_never_touches_the_clock_sleep_or_wait() -> None:
    def explode(*_: object) -> float:
        raise AssertionError("touched on the success path")

    wrapped = retry(clock=explode, sleep=explode, wait=explode)(lambda: 42)
    assert wrapped() == 42


def test_errors_outside_on_are_not_retried() -> None:
    f = Flaky(ValueError("not transient"))
    with pytest.raises(ValueError):
        retry(sleep=FakeTime().sleep)(f)()
    assert f.calls == 1


def test_on_accepts_a_type_a_tuple_and_a_predicate() -> None:
    t = FakeTime()
    assert retry(on=KeyError, sleep=t.sleep)(Flaky(KeyError()))() == "ok"
    assert retry(on=(KeyError, ValueError), sleep=t.sleep)(Flaky(ValueError()))() == "ok"
    only_503 = retry(on=lambda e: "503" in str(e), sleep=t.sleep)
    assert only_503(Flaky(RuntimeError("503")))() == "ok"
    with pytest.raises(RuntimeError):
        only_503(Flaky(RuntimeError("404")))()


# -- never retried ----------------------------------------------------------------------

NEVER = [
    DeadlineExceeded("deadline"),
    RejectedError("rejected"),
    CircuitOpenError("br", 1.0),
    BulkheadFullError(4),
    concurrent.futures.CancelledError(),
]


@pytest.mark.parametrize("error", NEVER, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "how",
    [
        {"on": (Exception,)},
        {"on": lambda exc: True},
        {"retry": tenacity.retry_always},
        {"retry": tenacity.retry_if_exception_type(BaseException)},
    ],
    ids=["on-Exception", "on-predicate", "retry_always", "retry_if_any"],
)
def test_never_retried_whatever_on_says(error: Exception, how: dict[str, object]) -> None:
    f = Flaky(error)
    with pytest.raises(type(error)) as caught:
        retry(attempts=5, sleep=FakeTime().sleep, **how)(f)()  # type: ignore[arg-type]
    assert caught.value is error
    assert f.calls == 1


def test_deadline_exceeded_is_never_retried_although_it_is_an_oserror() -> None:
    assert issubclass(DeadlineExceeded, OSError)  # why the rule must be explicit
    assert DeadlineExceeded in NEVER_RETRIED


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(1)])
def test_base_exceptions_pass_through(error: BaseException) -> None:
    f = Flaky(error)
    with pytest.raises(type(error)):
        retry(on=BaseException, sleep=FakeTime().sleep)(f)()
    assert f.calls == 1


async def test_cancellation_is_never_retried() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry(on=BaseException, sleep=FakeTime().asleep)(cancelled)()
    assert calls == 1


# -- tenacity strategies ----------------------------------------------------------------


def test_tenacity_wait_and_stop_objects_drive_the_loop() -> None:
    t = FakeTime()
    f = Flaky(*[OSError() for _ in range(10)], took=1.0, time=t)
    wrapped = retry(
        attempts=None,
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=8),
        stop=tenacity.stop_after_delay(10),
        clock=t,
        sleep=t.sleep,
    )(f)
    with pytest.raises(OSError):
        wrapped()
    # attempts end at 1, 3, 6, 11 (s since start): the 4th outcome is past 10 s
    assert t.sleeps == [1, 2, 4]
    assert f.calls == 4


def test_stop_and_attempts_either_one_ends_the_retries() -> None:
    t = FakeTime()
    f = Flaky(*[OSError() for _ in range(10)])
    with pytest.raises(OSError):
        retry(attempts=2, stop=tenacity.stop_never, sleep=t.sleep, clock=t)(f)()
    assert f.calls == 2


def test_retry_if_result_retries_results_and_returns_the_last() -> None:
    t = FakeTime()
    answers = iter([None, None, "late", "never reached"])
    calls = 0

    def poll() -> str | None:
        nonlocal calls
        calls += 1
        return next(answers)

    wrapped = retry(retry=tenacity.retry_if_result(lambda r: r is None), sleep=t.sleep)(poll)
    assert wrapped() == "late"
    assert calls == 3

    answers = iter([None, None, None, None])
    calls = 0
    assert wrapped() is None  # attempts ran out on a result: that result is returned
    assert calls == 3


def test_exception_only_strategies_skip_the_result_check() -> None:
    r = retry(retry=tenacity.retry_if_exception_type(OSError) | tenacity.retry_never)
    assert r._checks_results is False
    assert retry(retry=tenacity.retry_if_result(bool))._checks_results is True
    assert retry(retry=tenacity.retry_unless_exception_type(OSError))._checks_results is True


def test_strategies_see_a_tenacity_like_state() -> None:
    t = FakeTime(100.0)
    seen: list[tuple[int, bool, float | None, float]] = []

    def wait(state: RetryState) -> float:
        assert state.outcome is not None
        seen.append(
            (state.attempt_number, state.outcome.failed, state.seconds_since_start, state.idle_for)
        )
        return 2.0

    f = Flaky(OSError(), OSError(), took=1.0, time=t)
    retry(wait=wait, stop=tenacity.stop_never, clock=t, sleep=t.sleep)(f)()  # type: ignore[arg-type]
    assert seen == [(1, True, 1.0, 0.0), (2, True, 4.0, 2.0)]


def test_the_last_error_carries_no_false_context() -> None:
    errors = [OSError(1), OSError(2), OSError(3)]
    with pytest.raises(OSError) as caught:
        retry(sleep=FakeTime().sleep)(Flaky(*errors))()
    assert caught.value is errors[2]
    assert caught.value.__context__ is None


# -- the deadline -----------------------------------------------------------------------


def test_a_wait_that_would_cross_the_deadline_stops_at_once() -> None:
    t = FakeTime()
    errors = [OSError(i) for i in range(5)]
    f = Flaky(*errors, took=0.1, time=t)
    with deadline(1.0, clock=t), pytest.raises(OSError) as caught:
        retry(attempts=5, wait=fixed(0.6), clock=t, sleep=t.sleep)(f)()
    # ends 0.1, sleeps to 0.7, ends 0.8: 0.6 more would cross 1.0
    assert t.sleeps == [0.6]
    assert f.calls == 2
    assert caught.value is errors[1]


async def test_async_deadline_stops_the_retries_too() -> None:
    t = FakeTime()

    async def down() -> None:
        t.now += 0.3
        raise ConnectionError

    async with deadline(1.0, clock=t):
        with pytest.raises(ConnectionError):
            await retry(attempts=10, wait=fixed(0.2), clock=t, sleep=t.asleep)(down)()
    # ends at 0.3, sleeps to 0.5, ends at 0.8: a 0.2 s wait would reach 1.0
    assert t.sleeps == [0.2]
    assert t.now == pytest.approx(0.8)


# -- the budget -------------------------------------------------------------------------


def test_a_retry_refused_by_the_budget_raises_the_original_error() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=t)
    first = ConnectionError("first")
    f = Flaky(first, OSError("second"))
    with pytest.raises(ConnectionError) as caught:
        retry(budget=budget, sleep=t.sleep)(f)()
    assert caught.value is first
    assert f.calls == 1


def test_every_call_is_recorded_and_every_retry_withdrawn() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, clock=t)
    wrapped = retry(budget=budget, wait=fixed(0.0), sleep=t.sleep)
    ok = wrapped(lambda: "ok")
    for _ in range(4):
        ok()
    assert budget.snapshot().requests == 4
    f = Flaky(*[OSError() for _ in range(10)])
    with pytest.raises(OSError):
        wrapped(f)()
    snap = budget.snapshot()
    # 5 requests buy 2.5 retries: 2 fit, so 3 attempts
    assert (snap.requests, snap.retries, f.calls) == (5, 2, 3)


# -- properties: attempts and elapsed time honour stop, wait and the deadline ----------


@settings(max_examples=400, deadline=None)
@given(
    attempts=st.one_of(st.none(), st.integers(1, 8)),
    failures=st.integers(0, 12),
    wait=st.sampled_from([0.0, 0.05, 0.25, 1.0, 3.0]),
    took=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    stop_kind=st.sampled_from(["none", "after", "before"]),
    stop_delay=st.sampled_from([0.5, 2.0, 7.5]),
    budget=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 4.0, 10.0])),
)
def test_attempts_and_elapsed_time_honour_stop_wait_and_deadline(
    attempts: int | None,
    failures: int,
    wait: float,
    took: float,
    stop_kind: str,
    stop_delay: float,
    budget: float | None,
) -> None:
    if attempts is None and stop_kind == "none" and budget is None:
        attempts = 20  # something must end a call that keeps failing
    t = FakeTime(50.0)
    starts: list[float] = []

    def call() -> str:
        starts.append(t.now)
        t.now += took
        if len(starts) <= failures:
            raise ConnectionError(len(starts))
        return "ok"

    stop = {
        "none": None,
        "after": tenacity.stop_after_delay(stop_delay),
        "before": tenacity.stop_before_delay(stop_delay),
    }[stop_kind]
    wrapped = retry(attempts=attempts, wait=fixed(wait), stop=stop, clock=t, sleep=t.sleep)(call)

    def run() -> object:
        try:
            return wrapped()
        except ConnectionError as exc:
            return exc

    if budget is None:
        outcome = run()
        expires = float("inf")
    else:
        with deadline(budget, clock=t):
            outcome = run()
        expires = 50.0 + budget

    # The oracle, written plainly: attempt n ends at e; stop if n is the last
    # allowed, if stop= says so, or if the wait would reach the deadline.
    expected_starts: list[float] = []
    now = 50.0
    while True:
        expected_starts.append(now)
        now += took
        n = len(expected_starts)
        if n > failures:
            break
        if attempts is not None and n >= attempts:
            break
        since = now - 50.0
        if stop_kind == "after" and since >= stop_delay:
            break
        if stop_kind == "before" and since + wait >= stop_delay:
            break
        if wait >= expires - now:
            break
        now += wait
    assert starts == pytest.approx(expected_starts)
    succeeded = len(starts) > failures
    assert (outcome == "ok") is succeeded
    if not succeeded:
        assert isinstance(outcome, ConnectionError) and outcome.args == (len(starts),)
    # the invariants themselves
    if attempts is not None:
        assert len(starts) <= attempts
    assert t.sleeps == ([wait] * (len(starts) - 1) if wait > 0 else [])  # no sleep(0)
    for i, start in enumerate(starts[1:]):  # no sleep ever ends at or past the deadline
        assert start < expires
        if stop_kind == "after":
            assert starts[i] + took - 50.0 < stop_delay
        if stop_kind == "before":
            assert start - 50.0 < stop_delay


# -- sync and async wrappers ------------------------------------------------------------


async def test_async_recovery() -> None:
    t = FakeTime()
    calls = 0

    async def fetch(x: int) -> int:
        """Fetch x."""
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls < 3:
            raise ConnectionResetError
        return x * 2

    wrapped = retry(wait=fixed(0.25), clock=t, sleep=t.asleep)(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped(21) == 42
    assert calls == 3
    assert t.sleeps == [0.25, 0.25]


async def test_async_takes_a_plain_sleep_too() -> None:
    t = FakeTime()
    failing = Flaky(OSError())

    async def once() -> str:
        return failing()

    assert await retry(wait=fixed(1.0), sleep=t.sleep)(once)() == "ok"
    assert t.sleeps == [1.0]


async def test_async_budget_and_result_checks() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0, clock=t)
    answers = iter([None, "ready"])

    async def poll() -> str | None:
        return next(answers)

    wrapped = retry(
        retry=tenacity.retry_if_result(lambda r: r is None),
        stop=tenacity.stop_after_delay(5),
        budget=budget,
        clock=t,
        sleep=t.asleep,
    )(poll)
    assert await wrapped() == "ready"
    assert budget.snapshot().retries == 1


def test_metadata_is_kept() -> None:
    def get(user: int) -> int:
        """Get a user."""
        return user

    async def aget(user: int) -> int:
        """Get a user, async."""
        return user

    for fn in (get, aget):
        wrapped = retry()(fn)
        assert wrapped.__name__ == fn.__name__
        assert wrapped.__doc__ == fn.__doc__
        assert wrapped.__wrapped__ is fn  # type: ignore[attr-defined]
        assert inspect.iscoroutinefunction(wrapped) is inspect.iscoroutinefunction(fn)


# -- the default wait and bad input -----------------------------------------------------


def test_the_default_wait_is_full_jitter() -> None:
    assert Retry()._wait == FullJitter()
    jitter = FullJitter(initial=0.1, maximum=1.0, rng=lambda: 0.5)
    state = RetryState(None, (), {}, 0.0)
    waits = []
    for n in range(1, 7):
        state.attempt_number = n
        waits.append(jitter(state))  # type: ignore[arg-type]
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    state.attempt_number = 10_000
    assert jitter(state) == 0.5  # type: ignore[arg-type]


async def _async_yes(exc: BaseException) -> bool:
    return True


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("attempts", {"attempts": 0}),
        ("attempts", {"attempts": True}),
        ("attempts", {"attempts": 2.5}),
        ("on", {"on": "OSError"}),
        ("on", {"on": (OSError, "x")}),
        ("retry", {"on": (KeyError,), "retry": tenacity.retry_always}),
        ("wait", {"wait": 1.0}),
        ("stop", {"stop": tenacity.asyncio.retry_if_exception(_async_yes)}),
        ("budget", {"budget": 0.2}),
        ("sleep", {"sleep": 1}),
    ],
)
def test_bad_arguments_name_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        retry(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert field in str(caught.value)


def test_full_jitter_rejects_bad_numbers() -> None:
    with pytest.raises(ConfigError, match="maximum"):
        FullJitter(maximum=-1.0)
