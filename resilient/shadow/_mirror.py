"""One mirrored call in flight: the sides it waits for, each settled exactly once.

One idea: a mirror has two or three sides (the primary, the candidate, and
for a noise sample the primary's second call), settled from wherever each
ends: the caller's thread or task, a worker thread, a candidate task, or the
reporter's timer for a sync candidate past its timeout. The first settle of
a side wins (a timeout, then the late answer, counts once), and whoever
settles the last side hands the mirror on to be judged. ``settle`` returns
whether it won, so the winner alone settles the candidate's breaker permit.

Concurrency: one small lock per mirror around the side it settles; nothing
else is shared.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import asyncio

    from opentelemetry.trace import Span

__all__ = ["CANCELLED", "Mirror", "Outcome"]


class Outcome(NamedTuple):
    """How one side ended: its value or its exception, and how long it took (seconds)."""

    value: object
    error: BaseException | None
    seconds: float | None


#: The caller was cancelled: nothing to compare.
CANCELLED: Final = Outcome(None, None, None)

PRIMARY: Final = 0
CANDIDATE: Final = 1
SECONDARY: Final = 2


class Mirror:
    """One mirrored call: who it belongs to and how its sides ended."""

    __slots__ = (
        "_left",
        "_lock",
        "_on_done",
        "args",
        "gray",
        "kwargs",
        "outcomes",
        "secondary",
        "span",
        "tasks",
        "trace_id",
        "ts",
    )

    def __init__(
        self,
        *,
        ts: float,
        trace_id: str | None,
        gray: str | None,
        span: Span | None,
        secondary: bool,
        on_done: Callable[[Mirror], None],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.ts = ts
        self.trace_id = trace_id
        self.gray = gray
        self.span = span
        self.args = args
        self.kwargs = kwargs
        self.outcomes: list[Outcome | None] = [None, None, None]
        self.tasks: tuple[asyncio.Task[None], ...] = ()
        self.secondary = secondary
        self._left = 3 if secondary else 2
        self._lock = threading.Lock()
        self._on_done = on_done

    def settle(self, side: int, outcome: Outcome) -> bool:
        """Settle ``side`` unless it is settled already; True when this call settled it."""
        with self._lock:
            if self.outcomes[side] is not None:
                return False
            self.outcomes[side] = outcome
            self._left -= 1
            last = self._left == 0
        if last:
            self.args = ()  # the caller's arguments are not kept past the calls
            self.kwargs = {}
            self._on_done(self)
        return True

    def cancel(self) -> None:
        """The caller was cancelled: stop the background calls, settle every side."""
        for task in self.tasks:
            task.cancel()
        self.settle(PRIMARY, CANCELLED)
