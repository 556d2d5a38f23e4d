"""The slow-call limit in force: a fixed number of seconds, or learned ("auto").

``slow_call_duration="auto"`` learns the limit from the latency the
dependency shows while healthy: ``multiple`` times the 99th percentile of
recent successful calls that were not slow, never below ``floor`` and never
above ``ceiling`` (which a caller sets below its request timeout, so a hung
call is judged slow well before it times out). Until ``min_samples`` calls
have been seen, the limit is ``ceiling``.

The limit moves only when the learned value differs by more than 20%, so the
breaker's in-flight tracker (whose slots are cut from the limit) is rebuilt
rarely.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["SlowThreshold"]


class SlowThreshold:
    """``seconds`` is the limit now; ``learning`` says it is "auto".

    Args:
        value: seconds, or ``"auto"``.
        multiple, floor, ceiling: how the auto limit is learned (see module doc).
        samples: how many recent healthy durations the percentile is taken over.
    """

    __slots__ = (
        "_filled",
        "_next",
        "_ring",
        "_since",
        "ceiling",
        "floor",
        "learning",
        "min_samples",
        "multiple",
        "seconds",
    )

    def __init__(
        self,
        value: float | Literal["auto"],
        *,
        multiple: float = 4.0,
        floor: float = 0.05,
        ceiling: float = 2.0,
        samples: int = 256,
        min_samples: int = 32,
    ) -> None:
        if not 0 < floor <= ceiling or not math.isfinite(ceiling):
            raise ValueError(f"need 0 < floor <= ceiling, got floor={floor!r}, ceiling={ceiling!r}")
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple!r}")
        self.learning = value == "auto"
        self.seconds = ceiling if value == "auto" else float(value)
        self.multiple = multiple
        self.floor = floor
        self.ceiling = ceiling
        self.min_samples = min_samples
        self._ring = [0.0] * samples
        self._next = 0
        self._filled = 0
        self._since = 0

    def observe(self, duration: float) -> bool:
        """Feed a healthy call's duration; True when the limit moved."""
        if not self.learning:
            return False
        ring = self._ring
        ring[self._next] = duration
        self._next = (self._next + 1) % len(ring)
        self._filled = min(self._filled + 1, len(ring))
        self._since += 1
        if self._filled < self.min_samples or self._since < self.min_samples:
            return False
        self._since = 0
        recent = sorted(ring[: self._filled])
        p99 = recent[min(len(recent) - 1, math.ceil(0.99 * len(recent)) - 1)]
        learned = min(self.ceiling, max(self.floor, self.multiple * p99))
        if abs(learned - self.seconds) <= 0.2 * self.seconds:
            return False
        self.seconds = learned
        return True
