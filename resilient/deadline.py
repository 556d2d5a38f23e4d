"""Deadlines: one budget, set once at the edge, that clips every timeout beneath it.

A ``deadline(seconds)`` scope computes its expiry when it is entered, from its
clock, and publishes itself through one ``ContextVar``. Nested scopes take the
minimum: an inner scope that is not tighter than the one in force changes
nothing and arms nothing, so the ContextVar always names the *effective*
scope, the one whose timer will fire first.

In async code the effective scope arms one timer (``loop.call_at``, with
``asyncio.timeout``'s cancel and ``uncancel()`` protocol, so a caller's own
cancellation stays a cancellation). When it fires, the awaited body is
cancelled and the scope raises ``DeadlineExceeded`` (a ``TimeoutError``) on
exit. Code running beneath the scope sees a
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
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from resilient.errors import DeadlineExceeded

__all__ = ["DeadlineExceeded", "deadline", "remaining"]

Clock = Callable[[], float]

_scope: ContextVar[deadline | None] = ContextVar("resilient.deadline", default=None)


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

    __slots__ = ("_cancelling", "_clock", "_expiry", "_handle", "_seconds", "_token", "expires_at")

    def __init__(self, seconds: float, *, clock: Clock = time.monotonic) -> None:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise TypeError(f"deadline seconds must be a number, got {seconds!r}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"deadline seconds must be >= 0, got {seconds!r}")
        self._seconds = float(seconds)
        self._clock = clock
        self._token: Token[deadline | None] | None = None
        self._expiry: Expiry | None = None
        self._handle: asyncio.Handle | None = None
        self._cancelling = 0
        #: expiry in this scope's clock; set on enter (inf until then)
        self.expires_at = math.inf

    # -- what beneath-the-scope code reads ---------------------------------------------

    def remaining(self) -> float:
        """Seconds left in this scope, never below zero."""
        left = self.expires_at - self._clock()
        return left if left > 0.0 else 0.0

    @property
    def fired(self) -> bool:
        """Whether this scope's timer has fired (its budget ran out while awaiting)."""
        return self._expiry is not None and self._expiry.fired

    @property
    def armed(self) -> bool:
        """Whether this scope armed a timer (async enter, tighter than the one in force)."""
        return self._expiry is not None

    def budget_at(self, started_at: float) -> float:
        """The budget a call started at ``started_at`` (this scope's clock) had left."""
        return self.expires_at - started_at

    # -- sync ------------------------------------------------------------------------

    def __enter__(self) -> deadline:
        if self.expires_at != math.inf or self._token is not None:
            raise RuntimeError("a deadline scope can be entered only once")
        outer = _scope.get()
        if outer is not None and outer.remaining() <= self._seconds:
            # The scope in force is at least as tight: nothing to arm. Remember
            # its expiry so ``remaining()`` on this object agrees with it.
            self.expires_at = outer.expires_at
            self._clock = outer._clock
            return self
        self.expires_at = self._clock() + self._seconds
        self._token = _scope.set(self)
        return self

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
        self.__enter__()
        if self._token is not None and self._seconds != math.inf:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("an async deadline needs to run in an asyncio task")
            self._cancelling = task.cancelling()
            self._expiry = Expiry(task)
            if self._seconds > 0:
                self._handle = loop.call_at(loop.time() + self._seconds, self._expiry)
            else:  # spent already: cancel at the first await, as asyncio.timeout does
                self._handle = loop.call_soon(self._expiry)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            expiry = self._expiry
            if expiry is not None:
                assert self._handle is not None
                self._handle.cancel()
                # Fired: take our cancel request back; if nobody else asked for
                # one and it surfaced, the expiry is ours to report.
                if (
                    expiry.fired
                    and expiry.task.uncancel() <= self._cancelling
                    and exc_type is asyncio.CancelledError
                ):
                    raise DeadlineExceeded(f"deadline of {self._seconds:g}s exceeded") from exc
        finally:
            self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        if self.expires_at == math.inf:
            return f"<deadline {self._seconds:g}s (not entered)>"
        return f"<deadline {self._seconds:g}s, {self.remaining():.3f}s left>"


class Expiry:
    """A timer's callback: cancel the task, and remember that it did.

    Shared by deadline scopes and the policy's per-attempt timeout.
    """

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


def remaining() -> float | None:
    """Seconds left before the current deadline, or ``None`` outside any deadline."""
    scope = _scope.get()
    return None if scope is None else scope.remaining()


#: The effective deadline scope (for the layers beneath it), or None: the
#: variable's own ``get``, so the hot paths pay no Python call for it.
_current: Callable[[], deadline | None] = _scope.get
