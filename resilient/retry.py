"""Retries that cost nothing until they are needed.

``retry(...)`` builds a frozen ``Retry`` once, at decoration time; decorating
a function inspects it once and returns one thin wrapper for its kind (sync or
async). The first attempt runs directly: a ``try`` around the call, nothing
else. Only after a failure does the wrapper build a ``RetryState`` and drive the
retry loop, asking tenacity's strategy objects (``wait_*``, ``stop_*``,
``retry_*``, or any callable taking the state) what to do. The state
duck-types ``tenacity.RetryCallState`` and reads time from the injected clock,
so tests never sleep; tenacity itself is never imported here.

Rules that hold whatever the strategies say:

- ``DeadlineExceeded``, ``RejectedError`` (an open breaker, a full bulkhead)
  and cancellation are never retried; neither is anything that is not an
  ``Exception`` (``KeyboardInterrupt``, ``asyncio.CancelledError``).
- A retry never sleeps past the current deadline (``resilient.deadline``):
  when the next wait would reach it, the loop stops at once with the last error.
- A retry refused by the budget (``budget=``) raises the last error too.
- ``attempts`` counts the first call.

The decision after each attempt is one sync method, ``Retry._plan``, which
never awaits; the sync and async loops only carry it out.

Layout: over 500 lines because those loops are written out as sync and
async twins (a first attempt with nothing around it, then the loop), side by
side so that a change to one is seen beside the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from resilient.budget import RetryBudget
from resilient.deadline import _current
from resilient.errors import ConfigError, DeadlineExceeded, RejectedError

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["FullJitter", "Retry", "RetryState", "retry"]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
Sleep = Callable[[float], object]
WaitStrategy = Callable[["RetryCallState"], float]
StopStrategy = Callable[["RetryCallState"], bool]
RetryStrategy = Callable[["RetryCallState"], bool]
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
OnArg = ExceptionTypes | Callable[[BaseException], bool]

#: never retried, whatever ``on=`` or ``retry=`` say
NEVER_RETRIED: tuple[type[BaseException], ...] = (
    DeadlineExceeded,
    RejectedError,
    concurrent.futures.CancelledError,
)

_DEFAULT_ON: tuple[type[BaseException], ...] = (OSError,)


@dataclass(frozen=True, slots=True)
class FullJitter:
    """Exponential backoff with full jitter: ``uniform(0, min(maximum, initial * base**(n-1)))``.

    The default wait of ``retry()``. Full jitter spreads the retries of many
    clients that failed together over the whole interval, which is what keeps
    them from coming back in lockstep (AWS Architecture Blog, "Exponential
    Backoff And Jitter"). ``n`` is the number of the attempt that just failed.

    Args:
        initial: the cap of the first wait, seconds.
        maximum: the cap of every wait, seconds.
        base: growth of the cap per attempt.
        rng: returns a float in [0, 1); injected by tests.
    """

    initial: float = 0.1
    maximum: float = 5.0
    base: float = 2.0
    rng: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "base"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"FullJitter {name} must be a number", field=name, value=value)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"FullJitter {name} must be finite and >= 0, got {value!r}",
                    field=name,
                    value=value,
                )

    def __call__(self, state: RetryCallState) -> float:
        exponent = state.attempt_number - 1
        # Cap before raising to a power that could overflow on long runs.
        cap = (
            self.maximum
            if exponent >= 64
            else min(self.maximum, self.initial * self.base**exponent)
        )
        return self.rng() * cap


class _Outcome:
    """What an attempt produced; duck-types tenacity's ``Future`` for its strategies."""

    __slots__ = ("_exception", "_result", "attempt_number")

    def __init__(
        self, attempt_number: int, result: object, exception: BaseException | None
    ) -> None:
        self.attempt_number = attempt_number
        self._result = result
        self._exception = exception

    @property
    def failed(self) -> bool:
        return self._exception is not None

    def exception(self) -> BaseException | None:
        return self._exception

    def result(self) -> object:
        if self._exception is not None:
            raise self._exception
        return self._result


class RetryState:
    """The state of one call's retries, as tenacity's strategies read it.

    It has the attributes of ``tenacity.RetryCallState`` that strategies use
    (``attempt_number``, ``outcome``, ``seconds_since_start``, ``idle_for``,
    ``upcoming_sleep``, ``start_time``, ``fn``, ``args``, ``kwargs``); times
    come from the ``Retry``'s clock. It exists only once an attempt failed.
    ``start_time`` is the start of the first attempt when ``stop=`` is given
    (the clock is read before every call then), else the end of the first
    attempt: a retry without ``stop=`` never reads the clock on success.
    """

    __slots__ = (
        "args",
        "attempt_number",
        "fn",
        "idle_for",
        "kwargs",
        "next_action",
        "outcome",
        "outcome_timestamp",
        "retry_object",
        "start_time",
        "upcoming_sleep",
    )

    def __init__(
        self, fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], start_time: float
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.start_time = start_time
        self.attempt_number = 1
        self.outcome: _Outcome | None = None
        self.outcome_timestamp: float | None = None
        self.idle_for = 0.0
        self.upcoming_sleep = 0.0
        self.next_action: object = None
        self.retry_object: object = None

    @property
    def seconds_since_start(self) -> float | None:
        if self.outcome_timestamp is None:
            return None
        return self.outcome_timestamp - self.start_time

    def record(
        self, at: float, result: object = None, exception: BaseException | None = None
    ) -> None:
        """Store the outcome of the current attempt, which ended at ``at``."""
        self.outcome = _Outcome(self.attempt_number, result, exception)
        self.outcome_timestamp = at

    def advance(self, waited: float) -> None:
        """Move on to the next attempt after waiting ``waited`` seconds."""
        self.idle_for += waited
        self.attempt_number += 1
        self.outcome = None
        self.outcome_timestamp = None
        self.upcoming_sleep = 0.0

    def give_up(self) -> Any:
        """End the call with the last outcome: raise its error or return its result."""
        outcome = self.outcome
        assert outcome is not None  # only called after an attempt
        exc = outcome._exception
        if exc is None:
            return outcome._result
        self.outcome = None  # break the state <-> traceback cycle
        raise exc

    def __repr__(self) -> str:
        return f"<RetryState attempt #{self.attempt_number}; slept {self.idle_for:.3f}s>"


def _exception_only(strategy: object) -> bool:
    """Whether a ``retry=`` strategy can only ever ask to retry an exception.

    True for tenacity's ``retry_if_exception`` family (and ``retry_any``/
    ``retry_all`` of them): then a successful first attempt needs no state and
    no question. Anything else (``retry_if_result``, a plain callable) is asked
    about results too, and pays for a state on every success.
    """
    module = sys.modules.get("tenacity.retry")
    if module is None:  # tenacity not loaded: it cannot be a tenacity strategy
        return False
    base = module.retry_if_exception
    if isinstance(strategy, base):
        return type(strategy).__call__ is base.__call__
    if isinstance(strategy, module.retry_any | module.retry_all):
        return all(_exception_only(s) for s in strategy.retries)
    return isinstance(strategy, type(module.retry_never))


def _check_strategy(name: str, strategy: object) -> None:
    if strategy is None:
        return
    if not callable(strategy):
        raise ConfigError(f"retry {name}= must be a callable strategy", field=name, value=strategy)
    call = getattr(type(strategy), "__call__", None)  # noqa: B004 (the class's, not a bound check)
    if inspect.iscoroutinefunction(strategy) or inspect.iscoroutinefunction(call):
        raise ConfigError(
            f"retry {name}= must be a sync strategy (tenacity.asyncio ones are not supported)",
            field=name,
            value=strategy,
        )


def _normalise_on(
    on: object,
) -> tuple[tuple[type[BaseException], ...], Callable[[BaseException], bool] | None]:
    if isinstance(on, type) and issubclass(on, BaseException):
        return (on,), None
    if isinstance(on, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in on
    ):
        return on, None
    if callable(on) and not isinstance(on, type):
        return (), cast("Callable[[BaseException], bool]", on)
    raise ConfigError(
        "retry on= must be an exception type, a tuple of them, or a predicate",
        field="on",
        value=on,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A retry policy; calling it on a function returns the retrying function.

    Built by ``retry()``, which documents the parameters. Frozen: Policy
    derives variants with ``dataclasses.replace`` (its own clock and sleep).
    """

    attempts: int | None = 3
    on: OnArg = _DEFAULT_ON
    wait: WaitStrategy | None = None
    stop: StopStrategy | None = None
    retry: RetryStrategy | None = None
    budget: RetryBudget | None = None
    clock: Clock = time.monotonic
    sleep: Sleep | None = None

    # derived at construction
    _types: tuple[type[BaseException], ...] = field(init=False, repr=False, compare=False)
    _predicate: Callable[[BaseException], bool] | None = field(
        init=False, repr=False, compare=False
    )
    _wait: Callable[[Any], float] = field(init=False, repr=False, compare=False)
    _checks_results: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        attempts = self.attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
        ):
            raise ConfigError(
                f"retry attempts must be an integer >= 1 or None, got {attempts!r}",
                field="attempts",
                value=attempts,
            )
        if self.retry is not None and self.on is not _DEFAULT_ON:
            raise ConfigError(
                "retry: pass on= or retry=, not both (retry= decides alone)",
                field="retry",
                value=self.retry,
            )
        for name in ("wait", "stop", "retry"):
            _check_strategy(name, getattr(self, name))
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigError(
                "retry budget= must be a RetryBudget", field="budget", value=self.budget
            )
        if not callable(self.clock):
            raise ConfigError("retry clock= must be callable", field="clock", value=self.clock)
        if self.sleep is not None and not callable(self.sleep):
            raise ConfigError("retry sleep= must be callable", field="sleep", value=self.sleep)
        types, predicate = _normalise_on(self.on) if self.retry is None else ((), None)
        setattr_ = object.__setattr__
        setattr_(self, "_types", types)
        setattr_(self, "_predicate", predicate)
        setattr_(self, "_wait", self.wait if self.wait is not None else FullJitter())
        setattr_(
            self, "_checks_results", self.retry is not None and not _exception_only(self.retry)
        )

    # -- the decision, written once ------------------------------------------------------

    def _wants(self, state: RetryState, exc: BaseException | None) -> bool:
        if self.retry is not None:
            return bool(self.retry(cast("RetryCallState", state)))
        if exc is None:
            return False
        if self._predicate is not None:
            return bool(self._predicate(exc))
        return isinstance(exc, self._types)

    def _plan(self, state: RetryState) -> float | None:
        """After an attempt: seconds to wait before the next one, or None to stop.

        In order: the never-retried errors, the predicate (``on=``/``retry=``),
        ``attempts``, the wait, ``stop=`` (which sees ``upcoming_sleep``, as in
        tenacity), the deadline, and last the budget, which counts the retry.
        """
        outcome = state.outcome
        assert outcome is not None
        exc = outcome._exception
        if exc is not None and (isinstance(exc, NEVER_RETRIED) or not isinstance(exc, Exception)):
            return None
        if not self._wants(state, exc):
            return None
        if self.attempts is not None and state.attempt_number >= self.attempts:
            return None
        wait = float(self._wait(state))
        if not wait > 0.0:  # also NaN
            wait = 0.0
        state.upcoming_sleep = wait
        if self.stop is not None and self.stop(cast("RetryCallState", state)):
            return None
        scope = _current()
        if scope is not None and wait >= scope.remaining():
            return None
        if self.budget is not None and not self.budget.allow_retry():
            return None
        return wait

    # -- decoration ----------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function (chosen once, with ``inspect``)."""
        if inspect.iscoroutinefunction(fn):
            wrapper = cast("Callable[P, R]", self._wrap_async(fn))
        else:
            wrapper = self._wrap_sync(fn)
        return functools.update_wrapper(wrapper, fn)

    def _timed(self) -> bool:
        # A stop= strategy may measure time from the first attempt's start.
        return self.stop is not None

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        """The sync wrapper, without metadata (Policy nests it as a layer)."""
        again = self._again_sync
        if self.budget is None and not self._timed() and not self._checks_results:

            def attempt_first(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:  # leave the handler: later errors get no false context
                    failure: Exception | None = exc
                try:
                    return again(fn, args, kwargs, failure, None, math.nan)
                finally:
                    failure = None

            return attempt_first

        budget, clock, timed, checks = self.budget, self.clock, self._timed(), self._checks_results

        def attempt_first_general(*args: P.args, **kwargs: P.kwargs) -> R:
            if budget is not None:
                budget.record_request()
            started = clock() if timed else math.nan
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                if not checks:
                    return result
                return again(fn, args, kwargs, None, result, started)
            try:
                return again(fn, args, kwargs, failure, None, started)
            finally:
                failure = None

        return attempt_first_general

    def _state_after_first(
        self,
        fn: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failure: BaseException | None,
        result: object,
        started: float,
    ) -> RetryState:
        """The state once the first attempt ended (``started`` is NaN when not measured)."""
        now = self.clock()
        state = RetryState(fn, args, kwargs, now if math.isnan(started) else started)
        state.record(now, result, failure)
        return state

    def _again_sync(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failure: BaseException | None,
        result: object,
        started: float,
    ) -> R:
        clock = self.clock
        sleep = self.sleep if self.sleep is not None else time.sleep
        state = self._state_after_first(fn, args, kwargs, failure, result, started)
        del failure, result
        while True:
            wait = self._plan(state)
            if wait is None:
                return cast("R", state.give_up())
            if wait > 0.0:
                sleep(wait)
            state.advance(wait)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                state.record(clock(), None, exc)
                continue
            if not self._checks_results:
                return result
            state.record(clock(), result)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """The async wrapper, without metadata (Policy nests it as a layer)."""
        again = self._again_async
        if self.budget is None and not self._timed() and not self._checks_results:

            async def attempt_first(*args: P.args, **kwargs: P.kwargs) -> R:
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    failure: Exception | None = exc
                try:
                    return await again(fn, args, kwargs, failure, None, math.nan)
                finally:
                    failure = None

            return attempt_first

        budget, clock, timed, checks = self.budget, self.clock, self._timed(), self._checks_results

        async def attempt_first_general(*args: P.args, **kwargs: P.kwargs) -> R:
            if budget is not None:
                budget.record_request()
            started = clock() if timed else math.nan
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                if not checks:
                    return result
                return await again(fn, args, kwargs, None, result, started)
            try:
                return await again(fn, args, kwargs, failure, None, started)
            finally:
                failure = None

        return attempt_first_general

    async def _again_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failure: BaseException | None,
        result: object,
        started: float,
    ) -> R:
        clock = self.clock
        sleep = self.sleep if self.sleep is not None else asyncio.sleep
        state = self._state_after_first(fn, args, kwargs, failure, result, started)
        del failure, result
        while True:
            wait = self._plan(state)
            if wait is None:
                return cast("R", state.give_up())
            if wait > 0.0:
                slept = sleep(wait)
                if inspect.isawaitable(slept):
                    await slept
            state.advance(wait)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                state.record(clock(), None, exc)
                continue
            if not self._checks_results:
                return result
            state.record(clock(), result)

    def with_time(self, *, clock: Clock | None = None, sleep: Sleep | None = None) -> Retry:
        """This retry with another clock and/or sleep (Policy's ``clock=`` and ``sleep=``)."""
        changes: dict[str, Any] = {}
        if clock is not None:
            changes["clock"] = clock
        if sleep is not None:
            changes["sleep"] = sleep
        return dataclasses.replace(self, **changes) if changes else self


def retry(
    *,
    attempts: int | None = 3,
    on: OnArg = _DEFAULT_ON,
    wait: WaitStrategy | None = None,
    stop: StopStrategy | None = None,
    retry: RetryStrategy | None = None,
    budget: RetryBudget | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> Retry:
    """A retry decorator for sync and async functions: ``@retry(attempts=3, on=(OSError,))``.

    Args:
        attempts: the most calls in all, the first included; ``None`` for no
            limit (then ``stop=``, the deadline or the budget must end it).
        on: what to retry: an exception type, a tuple of them, or a predicate
            ``exc -> bool``. ``OSError`` covers connection errors and
            ``TimeoutError`` (so a Policy's per-attempt timeout), but not
            ``DeadlineExceeded``, which is never retried.
        wait: seconds before the next attempt: a tenacity ``wait_*`` object or
            any callable taking the state. Default ``FullJitter()``:
            exponential backoff with full jitter from 0.1 s, capped at 5 s.
        stop: a tenacity ``stop_*`` object (or callable) that can end the
            retries earlier than ``attempts`` (either one ends them).
        retry: a tenacity ``retry_*`` object (or callable) deciding instead of
            ``on=``. One that inspects results (``retry_if_result``) is asked
            after successful attempts too; when the retries end on a result,
            that result is returned.
        budget: a shared ``RetryBudget``; a retry it refuses raises the last error.
        clock: monotonic seconds, for ``stop=`` and the state's times.
        sleep: how to wait (``time.sleep``/``asyncio.sleep`` by default); may
            return an awaitable in async code. Injected by tests.

    Raises:
        ConfigError: an argument is invalid (named in the message and ``.field``).
    """
    return Retry(
        attempts=attempts,
        on=on,
        wait=wait,
        stop=stop,
        retry=retry,
        budget=budget,
        clock=clock,
        sleep=sleep,
    )
