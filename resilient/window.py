"""Counting for a breaker: sliding windows of outcomes.

Plain objects that take ``now`` and advance lazily (no timers, no threads),
in the manner of Polly's RollingHealthMetrics:

- ``TimeWindow``: a ring of ``buckets`` buckets spanning ``window_size``
  seconds. Each bucket counts the four outcomes and, for adaptive mode, the
  admission attempts (``REQUESTS``).
- ``CountWindow``: the last ``window_size`` outcomes, exactly.

Calls still running are counted apart, in ``resilient.inflight``.

Concurrency: the owner (the breaker) calls ``advance`` and ``totals`` under its
guard. The per-call operations (``add`` and the success path's count) are short
runs of integer arithmetic with no call inside, which CPython (3.10+, with the
GIL) never interrupts for another thread; so no update is lost without a lock
on the hot path. A free-threaded build would need the guard there too.
"""

from __future__ import annotations

import math

__all__ = [
    "FAILURE",
    "KINDS",
    "REQUESTS",
    "SLOW_FAILURE",
    "SLOW_SUCCESS",
    "SUCCESS",
    "CountWindow",
    "TimeWindow",
    "Totals",
]

# Outcome kinds. A slow failure is both a failure and a slow call.
SUCCESS = 0
SLOW_SUCCESS = 1
FAILURE = 2
SLOW_FAILURE = 3
REQUESTS = 4  # admission attempts (adaptive mode), drops included
KINDS = 5


class Totals:
    """What a window holds now, summed."""

    __slots__ = ("accepts", "calls", "failures", "requests", "slow")

    def __init__(self, counts: list[int]) -> None:
        ok, slow_ok, failed, slow_failed, requests = counts
        self.accepts = ok
        self.calls = ok + slow_ok + failed + slow_failed
        self.failures = failed + slow_failed
        self.slow = slow_ok + slow_failed
        self.requests = requests


class TimeWindow:
    """Outcomes of the last ``size`` seconds, in ``buckets`` buckets.

    Bucket ``n`` covers ``[n * width, (n + 1) * width)`` of the owner's clock.
    ``pos`` is the offset of the current bucket in ``counts``; a caller adds to
    ``counts[pos + kind]`` after ``advance(now)`` has moved the ring to ``now``.
    """

    __slots__ = ("buckets", "counts", "head", "pos", "width")

    def __init__(self, size: float, buckets: int) -> None:
        self.buckets = buckets
        self.width = size / buckets
        self.counts = [0] * (buckets * KINDS)
        self.head = -(2**62)  # the absolute number of the current bucket
        self.pos = 0

    def advance(self, now: float) -> None:
        """Make the bucket holding ``now`` current, clearing the ones that expired."""
        head = math.floor(now / self.width)
        if head <= self.head:
            return
        counts, n = self.counts, self.buckets
        for number in range(max(self.head + 1, head - n + 1), head + 1):
            start = (number % n) * KINDS
            counts[start : start + KINDS] = _ZEROS
        self.head = head
        self.pos = (head % n) * KINDS

    def next_boundary(self) -> float:
        """When the current bucket ends: the next time ``advance`` has work to do."""
        return (self.head + 1) * self.width

    def add(self, kind: int) -> None:
        self.counts[self.pos + kind] += 1

    def admitted(self) -> None:
        """An adaptive admission: a request now (its outcome is added when it ends)."""
        self.counts[self.pos + REQUESTS] += 1

    def totals(self) -> Totals:
        counts = self.counts
        return Totals([sum(counts[kind::KINDS]) for kind in range(KINDS)])

    def healthy_streak(self) -> int:
        """How many of the newest buckets, in a row, saw successes and nothing bad."""
        counts, n, streak = self.counts, self.buckets, 0
        for back in range(n):
            start = ((self.head - back) % n) * KINDS
            ok, slow_ok, failed, slow_failed, _ = counts[start : start + KINDS]
            if ok == 0 or slow_ok or failed or slow_failed:
                break
            streak += 1
        return streak


_ZEROS = [0] * KINDS


class CountWindow:
    """The last ``size`` outcomes.

    A ring of one byte per outcome, and running counts per kind kept as the
    ring turns (the outcome a new one overwrites is taken off). Admission
    attempts that were dropped (adaptive mode) are ``REQUESTS`` entries of the
    same ring, so requests and outcomes share the window's length.

    Like ``TimeWindow``, the success path adds to ``counts[pos]``: here a cell
    of successes not yet in the ring, written into it (in one slice) before
    anything else is added or counted.
    """

    __slots__ = ("counts", "next", "pos", "ring", "size")

    _EMPTY = KINDS  # the kind of a slot not yet written: counted in a spare cell
    _PENDING = KINDS + 1

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = bytearray([self._EMPTY]) * size
        self.counts = [0] * KINDS + [size, 0]  # then: empty slots, successes not yet in the ring
        self.next = 0
        self.pos = self._PENDING

    def _fold(self) -> None:
        """Write the successes the success path counted into the ring."""
        counts = self.counts
        pending = counts[self._PENDING]
        if not pending:
            return
        counts[self._PENDING] -= pending
        ring, size = self.ring, self.size
        if pending >= size:
            ring[:] = bytes(size)  # SUCCESS is 0
            counts[: KINDS + 1] = [size] + [0] * KINDS
            self.next = (self.next + pending) % size
            return
        for _ in range(pending):
            i = self.next % size
            self.next = i + 1
            counts[ring[i]] -= 1
            ring[i] = SUCCESS
        counts[SUCCESS] += pending

    def advance(self, now: float) -> None:
        """Count windows do not age."""

    def next_boundary(self) -> float:
        return math.inf

    def add(self, kind: int) -> None:
        self._fold()
        i = self.next % self.size
        self.next = i + 1
        counts, ring = self.counts, self.ring
        counts[ring[i]] -= 1
        ring[i] = kind
        counts[kind] += 1

    def admitted(self) -> None:
        """Count windows count a request with its outcome, when the call ends."""

    def healthy_streak(self) -> int:
        """Count windows have no buckets to look back over."""
        return 0

    def totals(self) -> Totals:
        self._fold()
        counts = self.counts[:KINDS]
        # Every outcome was also an admission attempt.
        counts[REQUESTS] += counts[SUCCESS] + counts[SLOW_SUCCESS]
        counts[REQUESTS] += counts[FAILURE] + counts[SLOW_FAILURE]
        return Totals(counts)


Window = TimeWindow | CountWindow
