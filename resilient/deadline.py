"""Deadlines: one budget, set once at the edge, that clips every timeout beneath it.

A ``deadline(seconds)`` scope computes its expiry when it is entered, from its
clock, and publishes itself through one ``ContextVar``. Nested scopes take the
minimum: an inner scope that is not tighter than the one in force changes
nothing and arms nothing, so the ContextVar always names the *effective*
scope, the one whose timer will fire first.

In async code the effective scope arms one ``asyncio.Timeout``. When it fires,
the awaited body is cancelled and the scope raises ``DeadlineExceeded`` (a
``TimeoutError``) on exit. Code running beneath the scope sees a
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

    __slots__ = ("_clock", "_seconds", "_timeout", "_token", "expires_at")

    def __init__(self, seconds: float, *, clock: Clock = time.monotonic) -> None:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise TypeError(f"deadline seconds must be a number, got {seconds!r}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"deadline seconds must be >= 0, got {seconds!r}")
        self._seconds = float(seconds)
        self._clock = clock
        self._token: Token[deadline | None] | None = None
        self._timeout: asyncio.Timeout | None = None
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
        return self._timeout is not None and self._timeout.expired()

    @property
    def armed(self) -> bool:
        """Whether this scope armed a timer (async enter, tighter than the one in force)."""
        return self._timeout is not None

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
            self._timeout = asyncio.timeout_at(loop.time() + self._seconds)
            await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._timeout is not None:
                try:
                    await self._timeout.__aexit__(exc_type, exc, tb)
                except TimeoutError as timed_out:
                    raise DeadlineExceeded(f"deadline of {self._seconds:g}s exceeded") from (
                        exc or timed_out
                    )
        finally:
            self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        if self.expires_at == math.inf:
            return f"<deadline {self._seconds:g}s (not entered)>"
        return f"<deadline {self._seconds:g}s, {self.remaining():.3f}s left>"


def remaining() -> float | None:
    """Seconds left before the current deadline, or ``None`` outside any deadline."""
    scope = _scope.get()
    return None if scope is None else scope.remaining()


def _current() -> deadline | None:
    """The effective deadline scope (for the layers beneath it), or None."""
    return _scope.get()
