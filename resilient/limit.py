"""An adaptive concurrency limit: learn how many calls a dependency sustains, refuse the rest.

``ConcurrencyLimit("gradient2" | "vegas", initial=20, min=1, max=1000)`` admits
a call while fewer than ``limit`` are in flight and refuses it at once
otherwise (``LimitExceededError``, a ``RejectedError``: the function is never
called, a breaker does not count it, retry does not retry it). The limit moves
with latency, as in Netflix concurrency-limits and Envoy's adaptive
concurrency filter: when calls queue somewhere, they take longer than the
dependency's no-load latency, and the limit comes down; when they do not, it
goes up.

The limit is recomputed once per ``window`` finished calls from their mean
latency (the "short" RTT):

Both compare the short RTT with a "long" one, the no-load latency: it
follows the short RTT down at once and up slowly (``drift`` of the gap per
second), so queueing shows against it while a lasting shift of the
dependency's own latency is still learned in time.

- ``gradient2``: ``gradient = clamp(tolerance * long / short, 0.5, 1)``;
  under ``tolerance`` (``gradient`` 1) ``new = limit + sqrt(limit)`` (the
  queue allowance: room to find out whether more is sustained), past it
  ``new = limit * gradient``; smoothed by ``smoothing`` (0.2). The limit
  settles where the latency is about ``tolerance`` times the no-load
  latency. (Netflix adds the allowance past ``tolerance`` too; then the limit
  settles where the allowance balances the cut, ``sqrt(limit)`` calls of
  queue beyond ``tolerance``: about twice the no-load latency at a limit of 20.)
- ``vegas``: ``queue = limit * (1 - long / short)``; below ``alpha = 3
  log10(limit)`` the limit grows by ``log10(limit)``, above ``beta = 6
  log10(limit)`` it shrinks by as much, unsmoothed by default (as Netflix's:
  its steps are already small).

Neither raises the limit while fewer than half of it are in flight (the
caller, not the dependency, is the bottleneck then).

A call that fails (an exception other than a rejection or a cancellation)
counts as a drop: the limit is cut by ``backoff`` (0.9) at the window's end.
A cancelled call is not a sample.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar, cast

from resilient.errors import ConfigError, LimitExceededError, RejectedError

__all__ = ["ConcurrencyLimit", "LimitSnapshot"]

P = ParamSpec("P")
R = TypeVar("R")

Clock = Callable[[], float]
Algorithm = Literal["gradient2", "vegas"]


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """A limit's state now: ``limit`` admitted at most, ``inflight`` running, RTTs in seconds."""

    algorithm: str
    limit: int
    inflight: int
    rejected: int
    short_rtt: float
    long_rtt: float


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"ConcurrencyLimit {name}= must be an integer >= 1, got {value!r}",
            field=name,
            value=value,
        )
    return value


class ConcurrencyLimit:
    """At most ``limit`` calls in flight, with ``limit`` learned from their latency.

    Use as a decorator (sync or async), or ``started = acquire()`` then
    ``release(started, ok)``. Shared by every caller of one dependency;
    thread-safe (one small lock).

    Args:
        algorithm: ``"gradient2"`` or ``"vegas"``.
        initial: the limit to start with; min, max: its bounds.
        window: finished calls per recomputation.
        tolerance: gradient2's allowed short/long RTT ratio before it cuts.
        smoothing: share of a new estimate taken per window (0 < s <= 1;
            default 0.2 for gradient2, 1 for vegas).
        backoff: the factor a window with a failed call cuts the limit by.
        drift: share of the gap per second the no-load RTT rises by (0.01:
            a lasting rise of the dependency's own latency is learned in
            a minute or two).
        clock: monotonic seconds; injected by tests.

    Raises:
        ConfigError: a parameter is invalid (named in the message).
    """

    def __init__(
        self,
        algorithm: Algorithm = "gradient2",
        *,
        initial: int = 20,
        min: int = 1,
        max: int = 1000,
        window: int = 20,
        tolerance: float = 1.5,
        smoothing: float | None = None,
        backoff: float = 0.9,
        drift: float = 0.01,
        clock: Clock = time.monotonic,
    ) -> None:
        if algorithm not in ("gradient2", "vegas"):
            raise ConfigError(
                f"ConcurrencyLimit algorithm must be 'gradient2' or 'vegas', got {algorithm!r}",
                field="algorithm",
                value=algorithm,
            )
        self.algorithm = algorithm
        self.min = _int("min", min)
        self.max = _int("max", max)
        initial = _int("initial", initial)
        if not self.min <= initial <= self.max:
            raise ConfigError(
                f"ConcurrencyLimit needs min <= initial <= max, got {self.min}, {initial}, "
                f"{self.max}",
                field="initial",
                value=initial,
            )
        self.window = _int("window", window)
        if smoothing is None:
            smoothing = 0.2 if algorithm == "gradient2" else 1.0
        for name, value, low, high in (
            ("tolerance", tolerance, 1.0, math.inf),
            ("smoothing", smoothing, 0.0, 1.0),
            ("backoff", backoff, 0.0, 1.0),
            ("drift", drift, 0.0, 1.0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (low <= value <= high and value > 0 and math.isfinite(value))
            ):
                raise ConfigError(
                    f"ConcurrencyLimit {name}= must be in ({low:g}, {high:g}], got {value!r}",
                    field=name,
                    value=value,
                )
        self.tolerance = float(tolerance)
        self.smoothing = float(smoothing)
        self.backoff = float(backoff)
        self.drift = float(drift)
        self._clock = clock
        self._lock = threading.Lock()
        self._estimate = float(initial)  # the limit, unrounded
        self._limit = initial
        self._inflight = 0
        self._rejected = 0
        # The window being filled: its RTT sum, count, the most in flight, a drop.
        self._sum = 0.0
        self._count = 0
        self._peak = 0
        self._dropped = False
        self._short = 0.0
        self._window_at = clock()
        self._long = 0.0

    # -- what callers see ------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Calls admitted at most, now."""
        return self._limit

    @property
    def inflight(self) -> int:
        """Calls admitted and not finished."""
        return self._inflight

    def snapshot(self) -> LimitSnapshot:
        return LimitSnapshot(
            self.algorithm, self._limit, self._inflight, self._rejected, self._short, self._long
        )

    def __repr__(self) -> str:
        return f"<ConcurrencyLimit {self.algorithm} limit={self._limit} inflight={self._inflight}>"

    # -- the way in ------------------------------------------------------------------

    def acquire(self) -> float:
        """Admit one call (its start time, for ``release``) or raise ``LimitExceededError``."""
        with self._lock:
            if self._inflight >= self._limit:
                self._rejected += 1
                raise LimitExceededError(self._limit)
            self._inflight += 1
            if self._inflight > self._peak:
                self._peak = self._inflight
        return self._clock()

    def release(self, started: float, outcome: Literal["ok", "dropped", "ignored"] = "ok") -> None:
        """End a call admitted at ``started``: a sample (``"ok"``), a drop, or neither."""
        now = self._clock()
        with self._lock:
            self._inflight -= 1
            if outcome == "ignored":
                return
            if outcome == "dropped":
                self._dropped = True
            self._sum += now - started
            self._count += 1
            if self._count >= self.window:
                self._recompute(now)

    def _recompute(self, now: float) -> None:
        short = self._sum / self._count
        peak, dropped = self._peak, self._dropped
        self._sum, self._count, self._dropped = 0.0, 0, False
        self._peak = self._inflight
        self._short = short
        long = self._long
        if long == 0.0 or short < long:
            self._long = short
        else:
            rise = self.drift * (now - self._window_at)
            self._long = long + (short - long) * (rise if rise < 1.0 else 1.0)
        self._window_at = now
        estimate = self._estimate
        if dropped:
            new = estimate * self.backoff
        elif self.algorithm == "gradient2":
            new = self._gradient2(estimate, short, peak)
        else:
            new = self._vegas(estimate, short, peak)
        new = min(float(self.max), max(float(self.min), new))
        self._estimate = new
        self._limit = max(self.min, int(new))

    def _gradient2(self, estimate: float, short: float, peak: int) -> float:
        if peak < estimate / 2.0:
            return estimate  # application-limited: the latency says nothing of the limit
        gradient = min(1.0, max(0.5, self.tolerance * self._long / short))
        target = estimate + math.sqrt(estimate) if gradient == 1.0 else estimate * gradient
        return estimate * (1.0 - self.smoothing) + target * self.smoothing

    def _vegas(self, estimate: float, short: float, peak: int) -> float:
        log = max(1.0, math.log10(estimate))
        queue = estimate * (1.0 - self._long / short)
        if queue > 6.0 * log:
            target = estimate - log
        elif queue < 3.0 * log and peak >= estimate / 2.0:
            target = estimate + log
        else:
            return estimate
        return estimate * (1.0 - self.smoothing) + target * self.smoothing

    # -- as a layer ------------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):
            wrapper = cast("Callable[P, R]", self._wrap_async(fn))
        else:
            wrapper = self._wrap_sync(fn)
        return functools.update_wrapper(wrapper, fn)

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            started = self.acquire()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self.release(started, verdict(exc))
                raise
            self.release(started)
            return result

        return limited

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            started = self.acquire()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self.release(started, verdict(exc))
                raise
            self.release(started)
            return result

        return limited


def verdict(exc: BaseException) -> Literal["dropped", "ignored"]:
    """What a call that raised ``exc`` tells the limit: a drop, or nothing (cancelled, refused)."""
    if isinstance(exc, asyncio.CancelledError | RejectedError) or not isinstance(exc, Exception):
        return "ignored"
    return "dropped"
