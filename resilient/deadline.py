"""Deadlines: one budget, set once at the edge, that clips every timeout beneath it.

A ``deadline(seconds)`` scope computes its expiry when it is entered, from its
clock, and publishes itself through one ``ContextVar``. Nested scopes take the
minimum: an inner scope that is not tighter than the one in force changes
nothing and arms nothing, so the ContextVar always names the *effective*
scope, the one whose timer will fire first.

In async code the effective scope is armed (``asyncio.timeout``'s cancel
and ``uncancel()`` protocol, so a caller's own cancellation stays a
cancellation). When its expiry comes, the awaited body is cancelled and the
scope raises ``DeadlineExceeded`` (a ``TimeoutError``) on exit. The scopes of
one event loop share one loop timer (``Timers``), set for the earliest expiry
armed; each scope costs a dict entry instead of a timer of its own, which
asyncio keeps (cancelled or not) in a heap ordered by Python comparisons.
Each scope still fires at its own expiry, as a timer of its own would (to
the loop clock's resolution). Code running beneath the scope sees a
``CancelledError`` first; it can tell that cancellation from its caller's own
through ``_current().fired``: this is how a breaker applies the fair-budget
rule instead of counting every cancellation.

Sync code cannot be interrupted. There the scope clips timeouts through
``remaining()``, and layers that start work (retry, policy, the HTTP layer)
refuse to start with no budget left, raising ``DeadlineExceeded``.

Concurrency: a ContextVar is per task and per thread, so scopes never leak
between concurrent requests. A scope object is single use.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from resilient.errors import DeadlineExceeded

__all__ = ["DeadlineExceeded", "deadline", "remaining"]

Clock = Callable[[], float]

_scope: ContextVar[deadline | None] = ContextVar("resilient.deadline", default=None)
_NUMBER = (int, float)  # (a tuple: ``int | float`` would build a union on every call)
_INF = math.inf
_running_loop = asyncio.get_running_loop  # (module attributes, read once)
_current_task = asyncio.current_task


class deadline:
    """A deadline scope: ``with deadline(0.2):`` or ``async with deadline(0.2):``.

    Args:
        seconds: the budget, counted from entering the scope (not from
            creating this object). ``math.inf`` means no deadline of its own.
        clock: monotonic seconds; injected by tests.

    Raises:
        ValueError: ``seconds`` is negative or NaN.
        DeadlineExceeded: (async, on exit) the budget ran out while the body
            was awaiting; the body was cancelled.
    """

    __slots__ = (
        "_cancelling",
        "_clock",
        "_handle",
        "_seconds",
        "_task",
        "_timers",
        "_token",
        "expires_at",
        "fired",
    )
    # Set by ``arm`` and read only when ``_task`` is set (not in ``__init__``:
    # a middleware makes one scope per request).
    _cancelling: int  # the task's cancel requests before ours
    _timers: Timers | None  # where the expiry is armed
    _handle: asyncio.Handle | None  # or a spent budget's call_soon

    def __init__(self, seconds: float, *, clock: Clock = time.monotonic) -> None:
        if seconds.__class__ is not float:  # a float needs no check but NaN's and the sign's
            if not isinstance(seconds, _NUMBER) or isinstance(seconds, bool):
                raise TypeError(f"deadline seconds must be a number, got {seconds!r}")
            seconds = float(seconds)
        if not seconds >= 0.0:  # (NaN too)
            raise ValueError(f"deadline seconds must be >= 0, got {seconds!r}")
        self._seconds = seconds
        self._clock = clock
        self._token: Token[deadline | None] | None = None
        self._task: asyncio.Task[Any] | None = None  # the task an armed scope cancels
        #: expiry in this scope's clock; set on enter (inf until then)
        self.expires_at = _INF
        #: whether this scope's timer has fired (its budget ran out while awaiting)
        self.fired = False

    # -- what beneath-the-scope code reads ---------------------------------------------

    def remaining(self) -> float:
        """Seconds left in this scope, never below zero."""
        left = self.expires_at - self._clock()
        return left if left > 0.0 else 0.0

    @property
    def armed(self) -> bool:
        """Whether this scope armed a timer (async enter, tighter than the one in force)."""
        return self._task is not None

    def budget_at(self, started_at: float) -> float:
        """The budget a call started at ``started_at`` (this scope's clock) had left."""
        return self.expires_at - started_at

    # -- sync ------------------------------------------------------------------------

    def __enter__(self) -> deadline:
        self._enter()
        return self

    def _enter(self) -> bool:
        """Enter the scope; whether it is the effective one (tighter than the one in force)."""
        if self.expires_at != _INF or self._token is not None:
            raise RuntimeError("a deadline scope can be entered only once")
        outer = _scope.get()
        if outer is not None and outer.remaining() <= self._seconds:
            # The scope in force is at least as tight: nothing to arm. Remember
            # its expiry so ``remaining()`` on this object agrees with it.
            self.expires_at = outer.expires_at
            self._clock = outer._clock
            return False
        self.expires_at = self._clock() + self._seconds
        self._token = _scope.set(self)
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _scope.reset(self._token)

    # -- async -----------------------------------------------------------------------

    async def __aenter__(self) -> deadline:
        self.arm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disarm(exc_type, exc)

    # What ``async with`` does, as two plain calls: for a middleware that runs
    # the whole request under a scope, two coroutines fewer per request.

    def arm(self) -> None:
        """Enter the scope in the current asyncio task: ``async with``'s enter."""
        seconds = self._seconds
        if seconds == _INF:  # no budget of its own: nothing to arm
            self._enter()
            return
        loop = _running_loop()
        task = _current_task(loop)
        if task is None:
            raise RuntimeError("an async deadline needs to run in an asyncio task")
        if not self._enter():
            return
        self._task = task
        self._cancelling = task.cancelling()
        if seconds > 0.0:
            last = _last  # timers_of(loop), its common case written out
            timers = last[1] if last is not None and last[0]() is loop else timers_of(loop)
            self._timers = timers
            at = self.expires_at if self._clock is timers.clock else loop.time() + seconds
            timers.due[self] = at  # armed; the timer moves only for an earlier expiry
            if at < timers.at:
                timers.arm(loop, at)
        else:  # spent already: cancel at the first await, as asyncio.timeout does
            self._timers = None
            self._handle = loop.call_soon(self)

    def disarm(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        """Leave the scope entered by ``arm``: ``async with``'s exit.

        Args:
            exc_type: the type of the exception the body raised, or None.
            exc: that exception, or None.

        Raises:
            DeadlineExceeded: the scope's expiry cancelled the body (``exc`` is
                the ``CancelledError`` that surfaced); raised from ``exc``.
        """
        token = self._token
        if token is None:
            return  # not the effective scope: nothing was armed or published
        try:
            task = self._task
            if task is not None:
                timers = self._timers
                if timers is not None:
                    timers.due.pop(self, None)
                elif self._handle is not None:
                    self._handle.cancel()
                # Fired: take our cancel request back; if nobody else asked for
                # one and it surfaced, the expiry is ours to report.
                if (
                    self.fired
                    and task.uncancel() <= self._cancelling
                    and exc_type is asyncio.CancelledError
                ):
                    raise DeadlineExceeded(f"deadline of {self._seconds:g}s exceeded") from exc
        finally:
            _scope.reset(token)  # __exit__, written out

    def __call__(self) -> None:
        """The expiry (a loop callback): cancel the task, and remember that it did."""
        self.fired = True
        if self._task is not None:
            self._task.cancel()

    def __repr__(self) -> str:
        if self.expires_at == _INF:
            return f"<deadline {self._seconds:g}s (not entered)>"
        return f"<deadline {self._seconds:g}s, {self.remaining():.3f}s left>"


class Expiry:
    """A timer's callback for the policy's per-attempt timeout: cancel the task, remember it.

    (A deadline scope is its own callback.)
    """

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


class Timers:
    """One loop timer for every armed deadline scope of an event loop.

    ``due`` maps each armed scope (called when it expires) to its expiry in loop time;
    a scope adds its entry on enter (and calls ``arm`` if it is the earliest)
    and pops it on exit. The loop timer is
    set for the earliest expiry added (moved only when an earlier one comes);
    when it goes off, every entry whose expiry has come fires, in this same
    loop iteration, and the timer is set for the next. An entry that left
    early costs nothing more than its pop: the timer, if it was set for it,
    goes off, finds nothing due and moves on.

    Concurrency: touched only from its loop's thread (deadline scopes enter
    and exit in their task, the timer runs in the loop).
    """

    __slots__ = ("__weakref__", "_handle", "at", "clock", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: the scopes' clock that is the loop's own (asyncio's loops tell
        #: ``time.monotonic()``), so an expiry in it is one in loop time
        self.clock: Clock | None = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else None
        )
        self.due: dict[deadline, float] = {}
        # Weakly: a handle refers to its loop, and the loop is the weak key
        # this object is kept under. The loop holds the handle until it runs.
        self._handle: weakref.ref[asyncio.TimerHandle] | None = None
        self.at = math.inf  # when the loop timer goes off

    def arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Go off at ``at``, sooner than the timer was set for."""
        handle = None if self._handle is None else self._handle()
        if handle is not None:
            handle.cancel()
        self.at = at
        self._handle = weakref.ref(loop.call_at(at, self._fire, loop))

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop ran this timer: its time has come, even a hair before
        # ``loop.time()`` says so (asyncio runs timers within its clock
        # resolution). Anything due by then fires now, as its own timer would.
        now = max(loop.time(), self.at)
        later = math.inf
        fired = []
        for expiry, at in self.due.items():
            if at <= now:
                fired.append(expiry)
            elif at < later:
                later = at
        self.at = later
        self._handle = None
        if later != math.inf:
            self._handle = weakref.ref(loop.call_at(later, self._fire, loop))
        for expiry in fired:
            del self.due[expiry]
            expiry()


_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timers] = weakref.WeakKeyDictionary()
#: the loop last asked about and its timers (most processes run one loop)
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], Timers] | None = None


def timers_of(loop: asyncio.AbstractEventLoop) -> Timers:
    """The deadline timers of ``loop``, made on first use (kept while the loop lives)."""
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        return last[1]
    timers = _timers.get(loop)
    if timers is None:
        timers = _timers[loop] = Timers(loop)
    _last = (weakref.ref(loop), timers)
    return timers


def remaining() -> float | None:
    """Seconds left before the current deadline, or ``None`` outside any deadline."""
    scope = _scope.get()
    return None if scope is None else scope.remaining()


#: The effective deadline scope (for the layers beneath it), or None: the
#: variable's own ``get``, so the hot paths pay no Python call for it.
_current: Callable[[], deadline | None] = _scope.get
