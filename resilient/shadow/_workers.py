"""Worker threads for sync candidates: daemon threads, as many as the bulkhead admits.

One idea: a sync candidate runs on a worker thread so the caller never
waits for it. The bulkhead admits at most ``size`` candidates at once and
there are ``size`` workers, so an admitted candidate never waits for a
thread (refused mirrors are dropped, never queued). Workers are daemon
threads, started together on first use: a candidate that hangs can neither
hold the caller nor keep the process from exiting (``concurrent.futures``
joins its threads at exit).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["Workers"]


class Workers:
    """``size`` daemon threads running submitted jobs."""

    __slots__ = ("_lock", "_queue", "_started", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        if not self._started:
            self._start()
        self._queue.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for i in range(self.size):
                threading.Thread(
                    target=self._run, name=f"resilient-shadow-{i}", daemon=True
                ).start()
            self._started = True

    def _run(self) -> None:
        get = self._queue.get
        while True:
            get()()  # jobs catch their own errors (Shadow's candidate runners)
