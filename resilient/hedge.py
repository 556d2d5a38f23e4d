"""Hedged calls: when the first attempt is slow, ask again, and take the first answer.

``@hedge(delay="p95", max_extra=1)`` on an async function starts one attempt;
if it has not answered after ``delay``, it starts another (up to
``max_extra`` more), and the first success wins. The others are cancelled and
awaited, so their resources (an HTTP connection, a bulkhead slot) are free
when the call returns. Anchors: Dean & Barroso, "The Tail at Scale" (hedge
after the 95th percentile), Polly v8's hedging strategy.

- ``delay``: seconds, or ``"p90"`` | ``"p95"`` | ``"p99"`` of this operation's
  recent latency, learned as ``slow_call_duration="auto"`` learns
  (``resilient.latency.Recent``): until ``min_samples`` calls were seen no
  hedge is sent (``initial=`` gives a fixed delay for that time).
- Budget: every hedge withdraws one retry from ``budget`` (a ``RetryBudget``;
  in a ``Policy`` the retry's budget when the hedge has none), so a slow fleet
  is not doubled: with the budget spent, calls simply are not hedged.
- Exactly one winner: each attempt passes a gate right after it returns; the
  first success closes it, and a second attempt that also succeeded before
  it could be cancelled raises ``CancelledError`` from the gate instead. Put
  beneath a breaker (``Policy`` does), the breaker thus counts one success
  per call, and a loser, cancelled either way, as neither success nor failure.
- A failed attempt does not start a hedge (that is retry's work): the call
  fails with the last error once no attempt is left running.
- The deadline in force bounds all attempts together: its timer cancels the
  caller, which cancels every attempt; no hedge starts with no budget left.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

from resilient.budget import RetryBudget
from resilient.deadline import _current
from resilient.errors import ConfigError
from resilient.latency import Recent

__all__ = ["Hedge", "hedge"]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
Percentile = Literal["p90", "p95", "p99"]

PERCENTILES: Final = {"p90": 0.90, "p95": 0.95, "p99": 0.99}


class _Race:
    """One hedged call's attempts: ``won`` once one of them succeeded."""

    __slots__ = ("won",)

    def __init__(self) -> None:
        self.won = False


_race: contextvars.ContextVar[_Race | None] = contextvars.ContextVar(
    "resilient.hedge.race", default=None
)


def gate(
    call: Callable[P, Awaitable[R]], discard: Callable[[R], object] | None = None
) -> Callable[P, Awaitable[R]]:
    """Let one success through per hedged call; a later one is a cancellation.

    Between the check and the mark nothing is awaited, so on one event loop
    exactly one attempt passes. Outside a hedged call it passes everything.
    ``discard`` frees a result turned away (an HTTP response's connection).
    """

    async def gated(*args: P.args, **kwargs: P.kwargs) -> R:
        result = await call(*args, **kwargs)
        race = _race.get()
        if race is not None:
            if race.won:
                if discard is not None:
                    discard(result)
                raise asyncio.CancelledError("a hedged call already has its answer")
            race.won = True
        return result

    return gated


class LearnedDelay:
    """The hedge delay: fixed, or a percentile of the recent primary-attempt latency."""

    __slots__ = ("_q", "_recent", "seconds")

    def __init__(
        self, delay: float | Percentile, initial: float, samples: int, min_samples: int
    ) -> None:
        if isinstance(delay, str):
            self._q: float | None = PERCENTILES[delay]
            self._recent: Recent | None = Recent(samples, min_samples, max(1, min_samples // 4))
            self.seconds = initial
        else:
            self._q = None
            self._recent = None
            self.seconds = float(delay)

    def observe(self, duration: float, now: float) -> None:
        recent = self._recent
        if recent is not None and self._q is not None and recent.add(duration, now):
            self.seconds = recent.quantile(self._q)


def _seconds(name: str, value: object, *, allow_inf: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
        or (not allow_inf and math.isinf(value))
    ):
        raise ConfigError(
            f"hedge {name}= must be a number of seconds >= 0, got {value!r}",
            field=name,
            value=value,
        )
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hedge:
    """A hedging strategy; ``hedge(...)`` builds one. Decorate async functions with it.

    Args:
        delay: seconds before each hedge, or ``"p90"``/``"p95"``/``"p99"`` of
            the recent latency of this operation's first attempts.
        max_extra: at most this many hedges per call (>= 1).
        budget: the ``RetryBudget`` hedges draw on (none: unbudgeted).
        initial: the delay while a percentile is still being learned
            (``math.inf``, the default: no hedges until then).
        samples: durations the percentile is taken over.
        min_samples: durations needed before the first percentile.
        record_requests: count each call in ``budget`` (False when a retry
            layer above already counts it; ``Policy`` sees to that).
        clock: monotonic seconds; sleep: waits the delay (tests inject both).
    """

    delay: float | Percentile = "p95"
    max_extra: int = 1
    budget: RetryBudget | None = None
    initial: float = math.inf
    samples: int = 256
    min_samples: int = 32
    record_requests: bool = True
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep

    def __post_init__(self) -> None:
        delay = self.delay
        if isinstance(delay, str):
            if delay not in PERCENTILES:
                raise ConfigError(
                    f"hedge delay= must be seconds or one of p90, p95, p99, got {delay!r}",
                    field="delay",
                    value=delay,
                )
        else:
            _seconds("delay", delay, allow_inf=False)
        _seconds("initial", self.initial, allow_inf=True)
        extra = self.max_extra
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 1:
            raise ConfigError(
                f"hedge max_extra= must be an integer >= 1, got {extra!r}",
                field="max_extra",
                value=extra,
            )
        if not (isinstance(self.min_samples, int) and 1 <= self.min_samples <= self.samples):
            raise ConfigError(
                f"hedge needs 1 <= min_samples <= samples, got {self.min_samples!r} "
                f"and {self.samples!r}",
                field="min_samples",
                value=self.min_samples,
            )
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise ConfigError(
                "hedge budget= must be a RetryBudget", field="budget", value=self.budget
            )

    def learner(self) -> LearnedDelay:
        """A fresh delay for one operation (each decorated function learns its own)."""
        return LearnedDelay(self.delay, self.initial, self.samples, self.min_samples)

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"hedge decorates async functions only, got {fn!r}", field="fn", value=fn
            )
        return functools.update_wrapper(self._wrap_async(gate(fn)), fn)

    def _wrap_async(
        self,
        attempt: Callable[P, Awaitable[R]],
        budget: RetryBudget | None = None,
        record_requests: bool | None = None,
    ) -> Callable[P, Awaitable[R]]:
        """The hedging layer over ``attempt`` (which must already be ``gate``d)."""
        learned = self.learner()
        budget = budget if self.budget is None else self.budget
        record = self.record_requests if record_requests is None else record_requests
        clock, sleep, max_extra = self.clock, self.sleep, self.max_extra

        async def hedged(*args: P.args, **kwargs: P.kwargs) -> R:
            if budget is not None and record:
                budget.record_request()
            return await race(attempt, args, kwargs, learned, budget, clock, sleep, max_extra)

        return hedged


async def race(
    attempt: Callable[..., Awaitable[R]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    learned: LearnedDelay,
    budget: RetryBudget | None,
    clock: Clock,
    sleep: Sleep,
    max_extra: int,
) -> R:
    """Run ``attempt`` hedged: the first success is returned, the other attempts cancelled."""
    loop = asyncio.get_running_loop()
    marker = _Race()
    outer = contextvars.copy_context()
    outer.run(_race.set, marker)

    def start() -> asyncio.Task[R]:
        # A context copy each: an attempt's own scopes never leak into another's.
        return loop.create_task(cast("Any", attempt(*args, **kwargs)), context=outer.copy())

    started = clock()
    primary = start()
    running: set[asyncio.Future[Any]] = {primary}
    extra = 0
    timer: asyncio.Future[Any] | None = None
    last_error: BaseException | None = None
    try:
        while True:
            if timer is None and extra < max_extra and primary in running:
                wait = learned.seconds
                if math.isfinite(wait):
                    timer = loop.create_task(
                        cast("Any", sleep(max(0.0, wait - (clock() - started))))
                    )
            waiting = running | ({timer} if timer is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task not in running:
                    continue
                running.discard(task)
                if task.cancelled():
                    continue  # a loser the gate turned away
                error = task.exception()
                if error is None:
                    # The call's latency (the primary's, or a lower bound on it
                    # when a hedge won) feeds the percentile.
                    now = clock()
                    learned.observe(now - started, now)
                    return cast("R", task.result())
                last_error = error
            if timer is not None and timer in done:  # (after the answers: one may have won)
                timer = None
                scope = _current()
                if (
                    primary in running
                    and (scope is None or scope.remaining() > 0.0)
                    and (budget is None or budget.allow_retry())
                ):
                    extra += 1
                    running.add(start())
                else:
                    extra = max_extra  # budget spent (or no time): this call is not hedged
            if not running:
                assert last_error is not None
                raise last_error
    finally:
        pending: list[asyncio.Future[Any]] = []
        for left in (*running, timer):
            if left is None:
                continue
            if not left.done():
                pending.append(left)
            elif not left.cancelled():
                left.exception()  # one that ended with the winner: its error is seen, not logged
        for task in pending:
            task.cancel()
        if pending:
            # Wait for the losers to unwind (connections back in the pool), even
            # when the caller itself is being cancelled.
            await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))


def hedge(
    delay: float | Percentile = "p95",
    max_extra: int = 1,
    *,
    budget: RetryBudget | None = None,
    initial: float = math.inf,
    samples: int = 256,
    min_samples: int = 32,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Hedge:
    """A hedging strategy (see ``Hedge``): ``@hedge(delay="p95", max_extra=1)``."""
    return Hedge(
        delay=delay,
        max_extra=max_extra,
        budget=budget,
        initial=initial,
        samples=samples,
        min_samples=min_samples,
        clock=clock,
        sleep=sleep,
    )
