"""A bulkhead: at most ``limit`` calls in flight, the rest rejected (or queued, boundedly).

A slow dependency ties up whatever calls it: threads, connections, memory. A
bulkhead caps how many calls one dependency may hold at once, so its trouble
stays in its own compartment. A call that finds no free slot is rejected at
once with ``BulkheadFullError`` (a ``RejectedError``: never retried, never
counted by a breaker), or, with ``queue=N``, waits in a bounded queue for at
most ``queue_timeout`` seconds (and never past the current deadline).

Concurrency: the free slots are tokens in a ``deque``; taking one is
``pop()`` and giving it back is ``append()``, both atomic in CPython, so the
hot path takes no lock, in threads and in coroutines alike, and one bulkhead
may serve both at once. Only queueing takes a lock. A waiter registers in the
queue *before* it looks for a token, and a release appends its token *before*
it looks for waiters, so a wake-up is never lost; a woken waiter that does not
use its wake-up (it timed out, was cancelled, or found the token taken by a
newcomer) passes it on. Waking is a hint, not a hand-off: the queue is fair
among waiters but a newcomer may take a freed slot first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar, cast

from resilient.deadline import _current
from resilient.errors import BulkheadFullError, ConfigError

__all__ = ["Bulkhead", "BulkheadFullError"]

P = ParamSpec("P")
R = TypeVar("R")
Clock = Callable[[], float]


class _ThreadWaiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> bool:
        self.event.set()
        return True


class _TaskWaiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> bool:
        try:
            if asyncio._get_running_loop() is self.loop:
                _resolve(self.future)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its loop is closed: nobody is waiting there any more
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_Waiter = _ThreadWaiter | _TaskWaiter


def _check_number(field: str, value: object, *, integer: bool, minimum: float) -> None:
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, int if integer else int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ConfigError(
            f"Bulkhead {field} must be {kind} >= {minimum:g}, got {value!r}",
            field=field,
            value=value,
        )


class Bulkhead:
    """At most ``limit`` concurrent calls; ``with bh:``, ``async with bh:`` or ``@bh``.

    Args:
        limit: calls allowed in flight at once (>= 1).
        queue: calls allowed to wait for a slot beyond ``limit`` (0: reject
            at once; ``Policy(bulkhead=N)`` means ``Bulkhead(N)``, no queue).
        queue_timeout: the longest a queued call waits, seconds; ``None``
            waits as long as the current deadline allows (or forever outside one).
        clock: monotonic seconds, for the queue wait of threads.

    Raises:
        ConfigError: a parameter is out of range (named in the message).
        BulkheadFullError: (on entry) no slot and no queue place, or the queue
            wait ran out.
    """

    __slots__ = ("_clock", "_free", "_lock", "_waiters", "limit", "queue", "queue_timeout")

    def __init__(
        self,
        limit: int,
        *,
        queue: int = 0,
        queue_timeout: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        _check_number("limit", limit, integer=True, minimum=1)
        _check_number("queue", queue, integer=True, minimum=0)
        if queue_timeout is not None:
            _check_number("queue_timeout", queue_timeout, integer=False, minimum=0)
        self.limit = limit
        self.queue = queue
        self.queue_timeout = None if queue_timeout is None else float(queue_timeout)
        self._clock = clock
        # The mutable state, in one place: one token per free slot (pop/append are
        # atomic), and the waiters, oldest first (changed under the lock only).
        self._free: deque[None] = deque(itertools.repeat(None, limit))
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        """Calls in flight now."""
        return self.limit - len(self._free)

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    # -- taking and giving back a slot -----------------------------------------------

    def _release(self) -> None:
        self._free.append(None)
        if self._waiters:
            self._wake_one()

    def _acquire(self) -> None:
        try:
            self._free.pop()
            return
        except IndexError:
            pass  # wait outside the handler: errors raised while queued get no false context
        self._acquire_queued()

    def _acquire_queued(self) -> None:
        """No free slot: reject, or wait in the queue (a thread)."""
        waiter = _ThreadWaiter()
        self._enqueue(waiter)
        try:
            give_up_at = self._clock() + (
                math.inf if self.queue_timeout is None else self.queue_timeout
            )
            while True:
                try:
                    self._free.pop()
                    return
                except IndexError:
                    pass
                left = give_up_at - self._clock()
                scope = _current()
                if scope is not None:
                    left = min(left, scope.remaining())
                if left <= 0.0:
                    raise BulkheadFullError(self.limit) from None
                if waiter.event.wait(None if math.isinf(left) else left):
                    waiter.event.clear()
                    self._requeue(waiter)
        finally:
            self._leave(waiter)

    async def _acquire_async(self) -> None:
        try:
            self._free.pop()
            return
        except IndexError:
            pass
        await self._acquire_queued_async()

    async def _acquire_queued_async(self) -> None:
        """No free slot: reject, or wait in the queue (a task). The deadline's timer bounds it."""
        loop = asyncio.get_running_loop()
        waiter = _TaskWaiter(loop)
        self._enqueue(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                while True:
                    try:
                        self._free.pop()
                        return
                    except IndexError:
                        pass
                    await waiter.future
                    waiter.future = loop.create_future()
                    self._requeue(waiter)
        except TimeoutError:
            raise BulkheadFullError(self.limit) from None
        finally:
            self._leave(waiter)

    # -- the queue (slow path) ---------------------------------------------------------

    def _enqueue(self, waiter: _Waiter) -> None:
        with self._lock:
            if len(self._waiters) >= self.queue:
                raise BulkheadFullError(self.limit) from None
            self._waiters.append(waiter)

    def _requeue(self, waiter: _Waiter) -> None:
        """A woken waiter that still has to find a token goes back to the front."""
        with self._lock:
            self._waiters.appendleft(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        with self._lock, contextlib.suppress(ValueError):  # a release took it out to wake it
            self._waiters.remove(waiter)
        # Whatever the reason it leaves, a wake-up it did not use must not be lost.
        if self._free and self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        with self._lock:
            while self._waiters:
                if self._waiters.popleft().wake():
                    return

    # -- the doors -------------------------------------------------------------------

    def try_enter(self) -> bool:
        """Take a free slot now or none, never joining the queue; leave with ``__exit__``.

        For work that is dropped rather than delayed (a shadow's mirror).
        """
        try:
            self._free.pop()
        except IndexError:
            return False
        return True

    def __enter__(self) -> Bulkhead:
        self._acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    async def __aenter__(self) -> Bulkhead:
        await self._acquire_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function (chosen once, with ``inspect``)."""
        if inspect.iscoroutinefunction(fn):
            wrapper = cast("Callable[P, R]", self._wrap_async(fn))
        else:
            wrapper = self._wrap_sync(fn)
        return functools.update_wrapper(wrapper, fn)

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        """The sync wrapper, without metadata (Policy nests it as a layer)."""
        take, release, acquire_queued = self._free.pop, self._release, self._acquire_queued

        def bulkhead_call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                take()
                queued = False
            except IndexError:
                queued = True
            if queued:
                acquire_queued()
            try:
                return fn(*args, **kwargs)
            finally:
                release()

        return bulkhead_call

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """The async wrapper, without metadata (Policy nests it as a layer)."""
        take, release, acquire_queued = self._free.pop, self._release, self._acquire_queued_async

        async def bulkhead_call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                take()
                queued = False
            except IndexError:
                queued = True
            if queued:
                await acquire_queued()
            try:
                return await fn(*args, **kwargs)
            finally:
                release()

        return bulkhead_call

    def __repr__(self) -> str:
        return f"<Bulkhead {self.active}/{self.limit} active, {self.queued}/{self.queue} queued>"
