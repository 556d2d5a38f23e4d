"""The HTTP retry layer's decisions: Retry-After, the plan after a failed attempt, options."""

from __future__ import annotations

import email.utils

import pytest

from resilient.budget import RetryBudget
from resilient.deadline import deadline
from resilient.errors import CircuitOpenError, ConfigError, DeadlineExceeded
from resilient.http import IDEMPOTENT_METHODS, RETRY_STATUSES, Retries, parse_retry_after
from resilient.http._retry import DEPOSIT_EVERY, STREAK, RetryLayer
from resilient.http._shared import Host
from resilient.retry import RetryState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0, abs=1.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-1", "1.5", "١٢", "Sun, 06 Nov 1994 08:49:37", "99999999999x"]
)
def test_malformed_retry_after_means_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_idempotent_methods_and_retried_statuses_are_documented_sets() -> None:
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} == IDEMPOTENT_METHODS
    assert {429, 500, 502, 503, 504} == RETRY_STATUSES


@pytest.mark.parametrize(
    ("field", "value"),
    [("attempts", 0), ("attempts", 1.5), ("attempts", True), ("statuses", [99]), ("wait", 3)],
)
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Retries(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


def retrier(
    *, attempts: int = 3, wait: float = 0.01, budget: RetryBudget | None = None
) -> tuple[RetryLayer, Host]:
    made = Retries(attempts=attempts, wait=lambda state: wait, budget=None)
    host = Host()
    host.budget = budget
    return RetryLayer(made, total=2.0), host


def failed(attempt: int = 1) -> RetryState:
    state = RetryState(None, (), {}, 0.0)
    for _ in range(attempt - 1):
        state.record(0.0, None, OSError())
        state.advance(0.0)
    state.record(0.0, None, OSError())
    return state


def test_plan_waits_then_stops_at_the_attempts() -> None:
    r, host = retrier(attempts=3)
    assert r.plan(failed(1), None, 0.0, 10.0, host) == 0.01
    assert r.plan(failed(2), None, 0.0, 10.0, host) == 0.01
    assert r.plan(failed(3), None, 0.0, 10.0, host) is None


def test_retry_after_raises_the_wait_and_is_refused_when_it_does_not_fit() -> None:
    r, host = retrier()
    assert r.plan(failed(), 1.5, 0.0, 10.0, host) == 1.5
    assert r.plan(failed(), 0.001, 0.0, 10.0, host) == 0.01  # never below the backoff
    assert r.plan(failed(), 5.0, 6.0, 10.0, host) is None  # 4 s left: no retry, no wait


def test_no_retry_without_time_for_an_attempt_or_past_the_deadline() -> None:
    r, host = retrier(wait=0.05)
    assert r.plan(failed(), None, 9.95, 10.0, host) is None
    clock = FakeClock()
    with deadline(0.04, clock=clock):
        assert r.plan(failed(), None, 0.0, 10.0, host) is None
    with deadline(1.0, clock=clock):
        assert r.plan(failed(), None, 0.0, 10.0, host) == 0.05


def test_a_streak_of_failures_at_the_host_stops_retries_until_a_success() -> None:
    r, host = retrier()
    host.streak = STREAK - 1
    assert r.plan(failed(), None, 0.0, 10.0, host) == 0.01
    host.streak = STREAK
    assert r.plan(failed(), None, 0.0, 10.0, host) is None


def test_the_budget_is_asked_last_and_counts_only_retries_made() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0, clock=clock)  # 1 retry
    r, host = retrier(attempts=2, budget=budget)
    assert r.plan(failed(2), None, 0.0, 10.0, host) is None  # attempts said no first
    assert budget.snapshot().retries == 0
    assert r.plan(failed(1), None, 0.0, 10.0, host) == 0.01
    assert r.plan(failed(1), None, 0.0, 10.0, host) is None  # the budget is spent
    assert budget.snapshot().retries == 1


def test_rejections_deadlines_and_non_network_errors_are_never_retried() -> None:
    r, _ = retrier()
    assert not r.worth_retrying(CircuitOpenError("h:1", 1.0))
    assert not r.worth_retrying(DeadlineExceeded("late"))
    assert not r.worth_retrying(ValueError("bug"))
    assert r.worth_retrying(ConnectionResetError())
    assert r.worth_retrying(TimeoutError())


def test_requests_not_yet_deposited_buy_retries_before_the_budget_is_asked() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0, clock=FakeClock())
    r, host = retrier(budget=budget)
    host.pending = 2  # counted by the pipeline, due in the budget within DEPOSIT_EVERY
    host.deposit_at = 0.0  # their batch began DEPOSIT_EVERY ago
    assert r.plan(failed(), None, 0.0, 10.0, host) == 0.01
    assert (host.pending, budget.snapshot().requests) == (0, 2)
    assert host.deposit_at == DEPOSIT_EVERY  # the next batch is due then
    assert r.plan(failed(), None, 0.0, 10.0, host) is None  # 2 requests buy one retry
