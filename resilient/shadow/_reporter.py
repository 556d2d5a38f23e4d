"""The reporter: one background thread that compares, records and keeps timers.

One idea: everything a mirror does after the caller has its answer
(normalising, diffing, writing to a sink, counting) runs here, on one daemon
thread, so none of it sits on a caller's path, in threads or in an event
loop. Callers only ``submit`` a job (a ``SimpleQueue.put``, lock-free in C).

The thread wakes once per batch, not once per job: an idle thread wakes
for a job and runs it at once; then, while jobs keep coming, it looks every
``batch`` seconds (sooner when a timer is due, at once when ``drain()``
waits), runs all those queued in one go, and goes back to sleeping on the
queue when a look finds none. A wake-up costs more than the small jobs it
runs (the thread needs a CPU the event loop shares, and its caches are
cold), so a shadow mirroring 20 calls a second wakes it about 11 times a
second, not 20 (docs/benchmarks.md, "Shadowing").

The queue is bounded: with ``max_pending`` jobs waiting, ``submit``
refuses (the caller drops the mirror and counts it), so a stuck sink cannot
grow memory without end. ``call_at`` runs a job at a monotonic time: the
sync candidates' timeouts, which no thread can enforce on itself.

A job that raises is logged once per kind of error and never stops the
thread. ``drain()`` waits until the jobs submitted before it have run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Reporter", "reporter"]

log = logging.getLogger("resilient.shadow")

Job = Callable[[], None]
_TIMER: Final = object()
#: Seconds a batch of jobs gathers before the thread runs it.
BATCH: Final = 0.1


class Reporter:
    """A daemon thread running submitted jobs in order, and timed jobs at their time.

    Args:
        max_pending: jobs allowed to wait before ``submit`` refuses (>= 1).
        clock: monotonic seconds (the timers' clock).
        batch: seconds a batch gathers after its first job (real time; 0
            runs each job as it comes).
    """

    def __init__(
        self,
        max_pending: int = 10_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        batch: float = BATCH,
    ) -> None:
        self.max_pending = max_pending
        self.batch = batch
        self.refused = 0
        self._clock = clock
        self._hurry = threading.Event()  # set by drain(): run the batch now
        self._queue: queue.SimpleQueue[tuple[object, float, Job]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Job]] = []  # this thread's alone
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._logged: set[type[BaseException]] = set()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and nothing queued) when too many wait already."""
        if self._queue.qsize() >= self.max_pending:
            self.refused += 1  # (approximate under races: a count for operators)
            return False
        self._ensure_started()
        self._queue.put((None, 0.0, job))
        return True

    def now(self) -> float:
        """The timers' clock: ``call_at`` times are in its seconds."""
        return self._clock()

    def call_at(self, when: float, job: Job) -> None:
        """Run ``job`` on this thread at time ``when`` of ``now()`` (or soon after)."""
        self._ensure_started()
        self._queue.put((_TIMER, when, job))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted before this call has run; False on timeout."""
        done = threading.Event()
        self._ensure_started()
        self._queue.put((None, 0.0, done.set))
        self._hurry.set()  # after the put: the batch that takes it holds it
        return done.wait(timeout)

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="resilient-shadow-reporter", daemon=True
                    )
                    thread.start()
                    self._thread = thread

    def _run(self) -> None:
        timers, clock = self._timers, self._clock
        busy = False  # jobs came lately: poll every ``batch`` instead of waking on each
        while True:
            if busy:
                gather = self.batch if not timers else min(self.batch, timers[0][0] - clock())
                if gather > 0:
                    self._hurry.wait(gather)
                self._hurry.clear()  # a drain() setting it now put its job first: it runs below
                busy = self._take_queued()
            else:
                wait = None
                if timers:
                    wait = max(0.0, timers[0][0] - clock())
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    pass
                else:
                    busy = self._take(item) and self.batch > 0
            now = clock()
            while timers and timers[0][0] <= now:
                self._execute(heapq.heappop(timers)[2])

    def _take_queued(self) -> bool:
        """Take what is queued now (no more, so timers never starve); True if a job ran."""
        ran = False
        for _ in range(self._queue.qsize()):
            try:
                ran |= self._take(self._queue.get_nowait())
            except queue.Empty:
                break
        return ran

    def _take(self, item: tuple[object, float, Job]) -> bool:
        """Run a job, or keep a timer for its time; True if a job ran."""
        kind, when, job = item
        if kind is _TIMER:
            heapq.heappush(self._timers, (when, next(self._seq), job))
            return False
        self._execute(job)
        return True

    def _execute(self, job: Job) -> None:
        try:
            job()
        except Exception as exc:  # a job must never stop the thread
            if type(exc) not in self._logged:
                self._logged.add(type(exc))
                log.exception("a shadow report failed (logged once per error type)")


_shared: Reporter | None = None
_shared_lock = threading.Lock()


def reporter() -> Reporter:
    """The process's shared reporter (one thread for every shadow)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = Reporter()
    return _shared
