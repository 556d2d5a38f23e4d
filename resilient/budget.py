"""A retry budget: retries may add at most a fixed share to the load on a dependency.

Retries multiply load exactly when a dependency can least afford it: three
attempts per call triple the traffic to a service that is already failing. A
budget caps that, as Finagle's ``RetryBudget`` and Envoy's retry budgets do:
every call deposits a fraction of a retry, every retry withdraws a whole one,
and a small floor per second keeps low-traffic clients able to retry at all.

The accounting, exactly. Over the sliding window (the last ``window`` seconds):

    a retry is allowed  <=>  retries + 1 <= ratio * requests + min_per_second * window

``requests`` counts calls (first attempts: ``record_request()``), ``retries``
counts the retries this budget allowed (``allow_retry()`` returning True); a
refused retry counts nothing. The window is ten buckets of ``window / 10``
seconds each: at any moment it holds the current, partly filled bucket and the
nine before it, and counts leave it one bucket at a time. With the defaults
(ratio 0.2, 10 per second, 10 s), a client making 1000 calls in the window may
retry 0.2 * 1000 + 10 * 10 = 300 times in it, and an idle one 100 times.

One budget object is meant to be shared by every caller of a dependency (the
HTTP layer keeps one per host), across threads and event loops.

Concurrency: ``record_request()`` is the hot path and takes no lock: the
request counter of a bucket is an ``itertools.count`` (its ``next()`` is atomic
in CPython), and a bucket object is never reused, so a late increment into the
bucket that was just current is still counted. Buckets rotate under a lock,
once per ``window / 10`` seconds. ``allow_retry()`` checks and records under
the lock, so concurrent retries never overdraw the budget. No I/O anywhere.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from resilient.errors import ConfigError

__all__ = ["BudgetSnapshot", "RetryBudget"]

Clock = Callable[[], float]

#: buckets per window: the window's counts expire in steps of window / BUCKETS
BUCKETS = 10


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """The budget's counts over its current window.

    Attributes:
        requests: calls recorded in the window.
        retries: retries allowed in the window.
        limit: the most retries the window allows now,
            ``ratio * requests + min_per_second * window``.
    """

    requests: int
    retries: int
    limit: float


class _Bucket:
    """Counts of one ``window / 10`` slice of time, identified by its index."""

    __slots__ = ("batched", "index", "requests", "retries")

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests = itertools.count()  # next() is atomic: no lock on the hot path
        self.batched = 0  # calls recorded in bulk (record_requests), under the lock
        self.retries = 0  # written under the budget's lock only


def _value(counter: itertools.count[int]) -> int:
    """How many times ``next()`` was called on a counter started at 0 (without advancing it)."""
    # repr is "count(N)"; it is the one way to read a count that does not advance
    # it and is not deprecated (its __reduce__ is, from Python 3.12).
    return int(repr(counter)[6:-1])


def _check(field: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"RetryBudget {field} must be a number, got {value!r}", field=field, value=value
        )
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(
            f"RetryBudget {field} must be finite and {bound}, got {value!r}",
            field=field,
            value=value,
        )
    return float(value)


class RetryBudget:
    """Retries allowed only while ``retries <= ratio * requests + min_per_second * window``.

    Args:
        ratio: retries allowed per call recorded in the window (0.2: one
            retry per five calls). 0 leaves only the floor.
        min_per_second: the floor: retries per second of window that are
            always allowed, so a client with little traffic can still retry.
        window: seconds of history the counts cover (ten buckets).
        clock: monotonic seconds; injected by tests.

    Raises:
        ConfigError: a parameter is not a finite number in range (the message
            and ``.field`` name it).
    """

    __slots__ = ("_clock", "_current", "_floor", "_lock", "_old", "_width", "ratio", "window")

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ratio = _check("ratio", ratio, positive=False)
        min_per_second = _check("min_per_second", min_per_second, positive=False)
        self.window = _check("window", window, positive=True)
        self._floor = min_per_second * self.window
        self._width = self.window / BUCKETS
        self._clock = clock
        self._lock = threading.Lock()
        # The mutable state, in one place: the current bucket and the older ones
        # still inside the window (oldest first). Both are replaced under the lock.
        self._current = _Bucket(self._index())
        self._old: deque[_Bucket] = deque()

    @property
    def min_per_second(self) -> float:
        """The floor, in retries per second of window."""
        return self._floor / self.window

    def _index(self) -> int:
        return int(self._clock() // self._width)

    # -- the hot path ----------------------------------------------------------------

    def record_request(self) -> None:
        """Count one call (a first attempt). Lock-free unless a bucket boundary passed."""
        index = int(self._clock() // self._width)
        bucket = self._current
        if bucket.index != index:
            with self._lock:
                bucket = self._advance_locked(index)
        next(bucket.requests)

    def record_requests(self, count: int, age: float = 0.0) -> None:
        """Count ``count`` calls made ``age`` seconds ago, at once (takes the lock).

        For a caller that batches its deposits: they go into the bucket of
        their time, or nowhere if that is outside the window, so a batch
        held over a quiet spell does not buy retries it should not.
        """
        if count <= 0 or not 0.0 <= age < self.window:  # also NaN
            return
        now = self._clock()
        index = int((now - age) // self._width)
        with self._lock:
            current = self._advance_locked(int(now // self._width))
            if index >= current.index:
                current.batched += count
                return
            if index <= current.index - BUCKETS:
                return  # older than the window (a bucket boundary passed meanwhile)
            old = self._old  # oldest first; a bucket of the window may not exist yet
            pos = len(old)
            while pos > 0 and old[pos - 1].index > index:
                pos -= 1
            if pos > 0 and old[pos - 1].index == index:
                old[pos - 1].batched += count
            else:
                bucket = _Bucket(index)
                bucket.batched = count
                old.insert(pos, bucket)

    # -- the retry path --------------------------------------------------------------

    def allow_retry(self) -> bool:
        """Whether one more retry fits the budget now; if it does, it is counted."""
        index = self._index()
        with self._lock:
            bucket = self._advance_locked(index)
            requests, retries = self._totals_locked()
            if retries + 1 > self.ratio * requests + self._floor:
                return False
            bucket.retries += 1
            return True

    def snapshot(self) -> BudgetSnapshot:
        """The counts over the window as of now."""
        index = self._index()
        with self._lock:
            self._advance_locked(index)
            requests, retries = self._totals_locked()
        return BudgetSnapshot(requests, retries, self.ratio * requests + self._floor)

    # -- under the lock --------------------------------------------------------------

    def _advance_locked(self, index: int) -> _Bucket:
        """Make the bucket of ``index`` current and drop buckets older than the window."""
        current = self._current
        if index > current.index:
            self._old.append(current)
            current = self._current = _Bucket(index)
            oldest = index - BUCKETS + 1
            old = self._old
            while old and old[0].index < oldest:
                old.popleft()
        # index < current.index: a caller that read the clock just before another
        # advanced the window; counting it in the newest bucket is within one bucket.
        return current

    def _totals_locked(self) -> tuple[int, int]:
        buckets = (*self._old, self._current)
        requests = sum(_value(b.requests) + b.batched for b in buckets)
        retries = sum(b.retries for b in buckets)
        return requests, retries

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"<RetryBudget ratio={self.ratio:g} min_per_second={self.min_per_second:g} "
            f"window={self.window:g}s: {s.retries} retries / {s.requests} requests, "
            f"limit {s.limit:g}>"
        )
