"""Counting for a breaker: sliding windows of outcomes, and calls still in flight.

Plain objects that take ``now`` and advance lazily (no timers, no threads),
in the manner of Polly's RollingHealthMetrics:

- ``TimeWindow``: a ring of ``buckets`` buckets spanning ``window_size``
  seconds. Each bucket counts the four outcomes and, for adaptive mode, the
  admission attempts (``REQUESTS``).
- ``CountWindow``: the last ``window_size`` outcomes, exactly.
- ``InFlight``: calls that are running, by the slot of time they started in,
  so that calls older than ``slow_call_duration`` can be counted as slow
  before they end. This is what trips a breaker on a dependency that hangs.

Concurrency: the owner (the breaker) calls ``advance`` and ``totals`` under its
guard. The per-call operations (``add``, ``InFlight.start``/``end``) are short
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
    "InFlight",
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


class InFlight:
    """Calls still running, by the time slot they started in.

    Time is cut into slots of ``slow / SLOTS`` seconds, numbered from
    ``base`` at ``origin``. A starting call adds one to its slot and keeps the
    slot's number as its ticket; an ending call takes one away. When a slot is
    wholly older than ``slow`` it is folded into ``old``: those calls are
    running past ``slow_call_duration`` and count as slow calls until they
    end. A call is judged at most one slot (an eighth of ``slow``) late.
    """

    SLOTS = 8
    RING = SLOTS + 2  # live slots never span more than SLOTS + 1 numbers
    __slots__ = (
        "base",
        "counts",
        "legacy",
        "legacy_until",
        "old",
        "oldest",
        "origin",
        "slot",
        "slow",
        "width",
    )

    def __init__(self, slow: float, now: float, base: int = 0) -> None:
        self.slow = slow
        self.width = slow / self.SLOTS
        self.origin = now
        self.base = base
        self.counts = [0] * self.RING
        self.slot = base  # the slot a call starting now takes
        self.oldest = base  # the oldest slot not yet folded into ``old``
        self.old = 0  # calls running for longer than ``slow``
        # Calls handed over by a tracker with another ``slow`` (see ``retime``).
        self.legacy = 0
        self.legacy_until = math.inf

    @property
    def running(self) -> int:
        return sum(self.counts) + self.old + self.legacy

    def start(self) -> int:
        slot = self.slot
        self.counts[slot % self.RING] += 1
        return slot

    def end(self, slot: int) -> None:
        if slot >= self.oldest:
            self.counts[slot % self.RING] -= 1
        elif slot < self.base and self.legacy:
            self.legacy -= 1
        else:
            self.old -= 1

    def _number(self, at: float) -> int:
        return self.base + math.floor((at - self.origin) / self.width)

    def advance(self, now: float) -> None:
        """Move to ``now``: fold the slots that became older than ``slow``."""
        # Slot s ends where slot s + 1 starts; it is old once that is <= now - slow.
        cutoff = self._number(now - self.slow)
        counts = self.counts
        while self.oldest < cutoff and self.oldest <= self.slot:
            cell = self.oldest % self.RING
            self.old += counts[cell]
            counts[cell] = 0
            self.oldest += 1
        slot = self._number(now)
        if slot > self.slot:
            self.slot = slot
            self.oldest = max(self.oldest, min(cutoff, slot))
        if now >= self.legacy_until:
            self.old += self.legacy
            self.legacy = 0
            self.legacy_until = math.inf

    def next_event(self) -> float:
        """When ``advance`` next has work: a new slot, or a slot turning old."""
        new_slot = self.origin + (self.slot + 1 - self.base) * self.width
        turns_old = self.origin + (self.oldest + 1 - self.base) * self.width + self.slow
        return min(new_slot, turns_old, self.legacy_until)

    def retime(self, slow: float, now: float) -> InFlight:
        """A tracker for a new ``slow`` that takes over this one's running calls.

        Calls that were not yet old are judged as if they started ``now``;
        calls already old stay old. Tickets handed out before keep working:
        the new tracker numbers its slots above them and takes their ends from
        the carried-over counts.
        """
        self.advance(now)
        fresh = InFlight(slow, now, base=self.slot + 1)
        fresh.legacy = sum(self.counts) + self.legacy
        fresh.legacy_until = now + slow if fresh.legacy else math.inf
        fresh.old = self.old
        return fresh
