"""What a call's end means to a breaker: a success, a failure, or not counted.

One idea: the dependency is judged only on what it did. So (docs/concepts/breaker.md):

- a caller's own cancellation never counts, nor a ``RejectedError`` from
  beneath (a bulkhead, an inner breaker), nor ``KeyboardInterrupt`` and its
  kind: they give a probe's permit back;
- a deadline that ran out counts as a failure only when the call started
  with at least ``slow_call_duration`` of budget left (the fair-budget rule:
  the dependency had a fair chance); a deadline that runs out around the
  breaker reaches it as a ``CancelledError``, told from the caller's own
  cancellation through the ambient deadline, which has fired;
- an exception in ``record_exceptions`` is a failure, any other exception
  an answer (a success), and a return value is a failure when
  ``result_is_failure`` says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from resilient import deadline as _deadline
from resilient.errors import DeadlineExceeded, RejectedError

__all__ = ["COUNT_FAILURE", "COUNT_SUCCESS", "OUTCOMES", "RELEASE", "Classifier", "fair_budget"]

# How a call ended, as the breaker judges it.
COUNT_SUCCESS = 0
COUNT_FAILURE = 1
RELEASE = 2  # not counted; a probe's permit goes back

#: What an observer (see ``CircuitBreaker.observe_calls``) is told of a call that ended.
OUTCOMES = ("success", "slow_success", "failure", "slow_failure", "not_counted")
_NAMES = (("success", "slow_success"), ("failure", "slow_failure"))


def outcome_name(verdict: int, slow: bool) -> str:
    """The ``OUTCOMES`` name of a verdict for a call that was (or was not) slow."""
    return "not_counted" if verdict == RELEASE else _NAMES[verdict == COUNT_FAILURE][slow]


def fair_budget(budget: float, slow_call_duration: float) -> bool:
    """The default deadline rule: the call started with ``slow_call_duration`` to spare."""
    return budget >= slow_call_duration


class Classifier:
    """A breaker's rules for exceptions and results (see ``CircuitBreaker``'s arguments)."""

    __slots__ = ("_clock", "deadline_is_fair", "ignore", "record", "result_is_failure")

    def __init__(
        self,
        record: Iterable[type[BaseException]],
        ignore: Iterable[type[BaseException]],
        result_is_failure: Callable[[Any], bool] | None,
        deadline_is_fair: Callable[[float, float], bool] | None,
        clock: Callable[[], float],
    ) -> None:
        self.record = tuple(record)
        self.ignore = tuple(ignore)
        self.result_is_failure = result_is_failure
        self.deadline_is_fair = deadline_is_fair or fair_budget
        self._clock = clock

    def exception(self, exc: BaseException, started: float, slow_seconds: float) -> int:
        """The verdict on a call started at ``started`` that raised ``exc``."""
        if isinstance(exc, asyncio.CancelledError):
            scope = _deadline._current()
            if scope is None or not scope.fired:
                return RELEASE  # the caller's own cancellation
            return self._deadline(scope, started, slow_seconds)
        if isinstance(exc, DeadlineExceeded):
            scope = _deadline._current()
            if scope is None:
                return COUNT_FAILURE  # the call's own deadline: a timeout like any other
            return self._deadline(scope, started, slow_seconds)
        if isinstance(exc, (RejectedError, self.ignore)):
            return RELEASE
        if isinstance(exc, self.record):
            return COUNT_FAILURE
        if isinstance(exc, Exception):
            return COUNT_SUCCESS  # an answer the caller treats as an error
        return RELEASE  # KeyboardInterrupt, SystemExit, GeneratorExit: not the dependency

    def _deadline(self, scope: _deadline.deadline, started: float, slow_seconds: float) -> int:
        """The fair-budget rule (or the caller's own): did the dependency have a fair chance?"""
        budget = scope.remaining() + (self._clock() - started)
        return COUNT_FAILURE if self.deadline_is_fair(budget, slow_seconds) else RELEASE
