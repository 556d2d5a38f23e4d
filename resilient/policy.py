"""Policy: the resilience layers composed in one documented order.

    fallback > deadline > retry > hedge > breaker > concurrency limit > bulkhead
      > per-attempt timeout > call

(the order Resilience4j recommends, with hedging and the adaptive limit of
docs/concepts/tail.md). Read it from the outside in: the caller's
deadline bounds everything; retry asks again when an attempt fails; the
breaker sees every attempt (so a retry storm is itself visible to it) and
rejects when the dependency is down; the bulkhead caps how many attempts are
in flight; the per-attempt timeout bounds one attempt. A hedge races extra
attempts of one try through the breaker and the limit (a retry counts as
one try); the limit refuses at once what the dependency cannot take now.
Consequences:

- A per-attempt timeout raises a plain ``TimeoutError`` (not
  ``DeadlineExceeded``: that name is the caller's deadline), which the breaker
  counts as a failure and ``retry``'s default ``on=(OSError,)`` retries.
- A ``BulkheadFullError`` (a ``RejectedError``) passes the breaker uncounted
  and is never retried; nor is an open breaker's ``CircuitOpenError``.
- A deadline and a per-attempt timeout share one timer: when the deadline
  leaves less than the timeout, no second timer is armed; the deadline's
  fires, and its expiry surfaces as the deadline's (``DeadlineExceeded``).
- ``fallback=fn``: ``fn(exc)`` supplies the result when the policy fails,
  rejections included (any ``Exception``; never a cancellation).

The layers are built at decoration time as nested thin wrappers, one per
layer present, chosen once for a sync or an async function; the breaker is
applied through its own decorator, its fastest path.

Sync code cannot be interrupted. There the deadline layer refuses to start a
call with no budget left (``DeadlineExceeded``), and the per-attempt timeout
is enforced after the fact: an attempt that overran ``timeout`` has its result
discarded and raises ``TimeoutError`` (``DeadlineExceeded`` if it was the
deadline that it overran), so the breaker, retry and fallback see what they
would have seen in async code; the call itself runs to its end.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from resilient.bulkhead import Bulkhead
from resilient.deadline import Expiry, _current
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.hedge import Hedge, gate
from resilient.limit import ConcurrencyLimit
from resilient.retry import Clock, Retry, Sleep

__all__ = ["Policy"]

P = ParamSpec("P")
R = TypeVar("R")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
Fallback = Callable[[Exception], Any]


def _timeout_async(call: Callable[P, Awaitable[R]], seconds: float) -> Callable[P, Awaitable[R]]:
    """The per-attempt timeout layer (async): one ``loop.call_at`` timer per attempt.

    A lean ``asyncio.timeout``: the same cancel and ``uncancel()`` protocol
    (so a caller's own cancellation stays a cancellation), without the
    context-manager object and its state machine.
    """
    message = f"attempt timed out after {seconds:g}s"

    async def timed_attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        limit = seconds
        scope = _current()
        if scope is not None:
            left = scope.remaining()
            if left <= seconds:
                if scope.armed:  # (a sync `with deadline()` arms none)
                    return await call(*args, **kwargs)  # the deadline's timer serves
                limit = left
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a per-attempt timeout needs to run in an asyncio task")
        cancelling = task.cancelling()
        expiry = Expiry(task)
        handle = loop.call_at(loop.time() + limit, expiry)
        try:
            return await call(*args, **kwargs)
        except asyncio.CancelledError as exc:
            if expiry.fired:
                expiry.fired = False
                if task.uncancel() <= cancelling:
                    if limit < seconds:  # an unarmed deadline's budget ran out
                        raise DeadlineExceeded("deadline exceeded during the attempt") from exc
                    raise TimeoutError(message) from exc
            raise
        finally:
            handle.cancel()
            if expiry.fired:  # it fired, but the call finished anyway
                task.uncancel()

    return timed_attempt


def _timeout_sync(call: Callable[P, R], seconds: float, clock: Clock) -> Callable[P, R]:
    """The per-attempt timeout layer (sync): checked when the attempt returns."""
    message = f"attempt overran its timeout of {seconds:g}s (the result was discarded)"

    def timed_attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        scope = _current()
        if scope is not None and scope.remaining() <= seconds:
            if scope.remaining() <= 0.0:
                raise DeadlineExceeded("no budget left to start the attempt")
            result = call(*args, **kwargs)
            if scope.remaining() <= 0.0:
                raise DeadlineExceeded("deadline exceeded during the attempt (result discarded)")
            return result
        started = clock()
        result = call(*args, **kwargs)
        if clock() - started > seconds:
            raise TimeoutError(message)
        return result

    return timed_attempt


def _deadline_sync(call: Callable[P, R]) -> Callable[P, R]:
    """The deadline layer (sync): never start a call with no budget left."""

    def within_deadline(*args: P.args, **kwargs: P.kwargs) -> R:
        scope = _current()
        if scope is not None and scope.remaining() <= 0.0:
            raise DeadlineExceeded("no budget left to start the call")
        return call(*args, **kwargs)

    return within_deadline


def _fallback_sync(call: Callable[P, R], fallback: Fallback) -> Callable[P, R]:
    def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            return cast("R", fallback(exc))

    return with_fallback


def _fallback_async(
    call: Callable[P, Awaitable[R]], fallback: Fallback
) -> Callable[P, Awaitable[R]]:
    awaited = inspect.iscoroutinefunction(fallback)

    async def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except Exception as exc:
            value = fallback(exc)
            return cast("R", await value if awaited else value)

    return with_fallback


def _passthrough_async(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    async def passthrough(*args: P.args, **kwargs: P.kwargs) -> R:
        return await call(*args, **kwargs)

    return passthrough


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Resilience layers composed in one order; use ``@policy`` on sync or async functions.

    Args:
        breaker: a ``CircuitBreaker`` (or any decorator: ``breaker(fn)``
            returns the guarded function).
        retry: a ``retry(...)``; it retries whole attempts through the
            breaker, bulkhead and timeout.
        timeout: seconds per attempt (> 0). Async: the attempt is cancelled
            and raises ``TimeoutError``. Sync: see the module docstring.
        bulkhead: an ``int`` N (``Bulkhead(N)``: N attempts in flight, no
            queue) or a ``Bulkhead``; shared by every function this policy
            decorates.
        hedge: a ``hedge(...)`` (async functions only); hedges draw on the
            retry's budget when the hedge has none of its own.
        limit: a ``ConcurrencyLimit``; shared like the bulkhead.
        fallback: ``fn(exc) -> result`` when the policy fails (async
            functions may have an async fallback).
        clock: monotonic seconds for the retry's state and the sync timeout;
            replaces the retry's own clock when given.
        sleep: replaces the retry's sleep when given (tests inject both).

    Raises:
        ConfigError: a parameter is invalid (named in the message).
    """

    breaker: Decorator | None = None
    retry: Retry | None = None
    timeout: float | None = None
    bulkhead: int | Bulkhead | None = None
    hedge: Hedge | None = None
    limit: ConcurrencyLimit | None = None
    fallback: Fallback | None = None
    clock: Clock | None = None
    sleep: Sleep | None = None

    _bulkhead: Bulkhead | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.breaker is not None and not callable(self.breaker):
            raise ConfigError("Policy breaker= must be a CircuitBreaker", field="breaker")
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise ConfigError(
                "Policy retry= must be a retry(...) object", field="retry", value=self.retry
            )
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(
                f"Policy timeout= must be a finite number of seconds > 0, got {timeout!r}",
                field="timeout",
                value=timeout,
            )
        bulkhead = self.bulkhead
        if bulkhead is None or isinstance(bulkhead, Bulkhead):
            built = bulkhead
        elif isinstance(bulkhead, int) and not isinstance(bulkhead, bool) and bulkhead >= 1:
            built = Bulkhead(bulkhead)
        else:
            raise ConfigError(
                f"Policy bulkhead= must be an integer >= 1 or a Bulkhead, got {bulkhead!r}",
                field="bulkhead",
                value=bulkhead,
            )
        object.__setattr__(self, "_bulkhead", built)
        if self.hedge is not None and not isinstance(self.hedge, Hedge):
            raise ConfigError("Policy hedge= must be a hedge(...)", field="hedge", value=self.hedge)
        if self.limit is not None and not isinstance(self.limit, ConcurrencyLimit):
            raise ConfigError(
                "Policy limit= must be a ConcurrencyLimit", field="limit", value=self.limit
            )
        for name in ("fallback", "clock", "sleep"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(f"Policy {name}= must be callable", field=name, value=value)

    def _retry(self) -> Retry | None:
        if self.retry is None:
            return None
        return self.retry.with_time(clock=self.clock, sleep=self.sleep)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function (chosen once, with ``inspect``)."""
        if inspect.iscoroutinefunction(fn):
            wrapper = cast("Callable[P, R]", self._build_async(fn))
        else:
            wrapper = self._build_sync(fn)
        return functools.update_wrapper(wrapper, fn)

    def _build_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        call = fn
        if self.timeout is not None:
            call = _timeout_sync(call, float(self.timeout), self.clock or time.monotonic)
        if self._bulkhead is not None:
            call = self._bulkhead._wrap_sync(call)
        if self.limit is not None:
            call = self.limit._wrap_sync(call)
        if self.hedge is not None:
            raise ConfigError("Policy hedge= needs an async function", field="hedge")
        if self.breaker is not None:
            call = self.breaker(call)
        retry = self._retry()
        if retry is not None:
            call = retry._wrap_sync(call)
        call = _deadline_sync(call)
        if self.fallback is not None:
            if inspect.iscoroutinefunction(self.fallback):
                raise ConfigError(
                    "Policy fallback= of a sync function must be sync", field="fallback"
                )
            call = _fallback_sync(call, self.fallback)
        return call

    def _build_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        call = fn
        if self.timeout is not None:
            call = _timeout_async(call, float(self.timeout))
        if self._bulkhead is not None:
            call = self._bulkhead._wrap_async(call)
        if self.limit is not None:
            call = self.limit._wrap_async(call)
        if self.hedge is not None:
            call = gate(call)  # beneath the breaker: it counts one success per call
        if self.breaker is not None:
            call = self.breaker(call)
        retry = self._retry()
        if self.hedge is not None:
            budget = retry.budget if retry is not None else None
            call = self.hedge._wrap_async(call, budget, record_requests=budget is None)
        if retry is not None:
            call = retry._wrap_async(call)
        # The deadline layer needs no code of its own here: the deadline's timer
        # interrupts whatever runs beneath it.
        if self.fallback is not None:
            call = _fallback_async(call, self.fallback)
        if call is fn:  # no layer at all: still a wrapper of our own to stamp
            call = _passthrough_async(call)
        return call
