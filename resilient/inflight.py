"""Calls through a breaker that are still running, and what may cut them.

One idea: a breaker must know what is running, not only what has ended, to
judge a dependency that hangs and to fail fast the callers already waiting
on it. Two kinds of bookkeeping, kept here together:

- ``InFlight`` counts every running call by the slot of time it started in,
  so that calls older than ``slow_call_duration`` count as slow calls before
  they end (what trips a breaker on a dependency that hangs). The success
  path adds and takes one from a slot; no call, no lock.
- ``Running`` remembers the async tasks of calls through a breaker with
  ``cancel_on_open`` (task -> start), cuts the ones that started too long ago
  when the breaker opens or judges a probe slow, and tells a cut task from
  one its caller cancelled (asyncio's ``uncancel`` protocol, as
  ``asyncio.timeout`` uses it). Its timer is ``watch_probe``: a probe that
  hangs is judged slow by a loop timer, since nobody else may call.

Concurrency: ``InFlight``'s per-call operations are short runs of integer
arithmetic with no call inside, which CPython (3.10+, with the GIL) never
interrupts for another thread; its owner calls ``advance`` and ``retime``
under its guard. ``Running`` is used from the tasks' threads; a cut of a task
of another loop goes through that loop (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["InFlight", "Running", "watch_probe"]


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


class Running:
    """Async calls that an opening may cut (``cancel_on_open``): task -> start."""

    __slots__ = ("_cut", "started")

    def __init__(self) -> None:
        self.started: dict[asyncio.Task[Any], float] = {}
        self._cut: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()  # never pins a task

    def cut(self, started_by: float) -> None:
        """Cancel every call that started at or before ``started_by`` (once each)."""
        for task, started in list(self.started.items()):
            if started <= started_by and not task.done() and task not in self._cut:
                self._cut.add(task)
                _cancel_soon(task)

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """Was ``task`` cancelled by the breaker, and by nobody else?"""
        if task not in self._cut:
            return False
        self._cut.discard(task)
        return task.uncancel() == 0


def _cancel_soon(task: asyncio.Task[Any]) -> None:
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task.cancel()
    else:
        loop.call_soon_threadsafe(task.cancel)


def watch_probe(slow_seconds: float, judge: Callable[[], None]) -> None:
    """Call ``judge`` just past ``slow_seconds`` from now, on this thread's running loop.

    Just past the limit, so the probe is old enough when the timer runs; the
    timer is left to run when the probe ends first (it then judges nothing).
    Sync code with no running loop gets no timer: its next caller judges.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.call_later(slow_seconds * 1.01, judge)
