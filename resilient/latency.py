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
from dataclasses import dataclass
from typing import Literal

__all__ = ["AutoSlow", "SlowThreshold"]


@dataclass(frozen=True, slots=True)
class AutoSlow:
    """How ``slow_call_duration="auto"`` is learned.

    Args:
        multiple: the limit is this many times the healthy 99th percentile.
        floor: never below this (seconds): fast dependencies jitter.
        ceiling: never above this (seconds); also the limit until enough
            calls were seen. Set it below the request timeout.
        samples: how many recent healthy durations the percentile is taken over.
        min_samples: healthy calls needed before (and between) re-learning.
    """

    multiple: float = 4.0
    floor: float = 0.05
    ceiling: float = 2.0
    samples: int = 256
    min_samples: int = 32

    def __post_init__(self) -> None:
        if not (0 < self.floor <= self.ceiling and math.isfinite(self.ceiling)):
            raise ValueError(
                f"AutoSlow needs 0 < floor <= ceiling, got floor={self.floor!r}, "
                f"ceiling={self.ceiling!r}"
            )
        if self.multiple < 1:
            raise ValueError(f"AutoSlow multiple must be >= 1, got {self.multiple!r}")
        if not 1 <= self.min_samples <= self.samples:
            raise ValueError(
                f"AutoSlow needs 1 <= min_samples <= samples, got {self.min_samples!r} "
                f"and {self.samples!r}"
            )


class SlowThreshold:
    """``seconds`` is the limit now; ``learning`` says it is "auto"."""

    __slots__ = ("_filled", "_next", "_ring", "_since", "auto", "learning", "seconds")

    def __init__(self, value: float | Literal["auto"], auto: AutoSlow | None = None) -> None:
        self.auto = auto = auto or AutoSlow()
        self.learning = value == "auto"
        self.seconds = auto.ceiling if value == "auto" else float(value)
        self._ring = [0.0] * auto.samples
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
        auto = self.auto
        if self._since < auto.min_samples:
            return False
        self._since = 0
        recent = sorted(ring[: self._filled])
        p99 = recent[min(len(recent) - 1, math.ceil(0.99 * len(recent)) - 1)]
        learned = min(auto.ceiling, max(auto.floor, auto.multiple * p99))
        if abs(learned - self.seconds) <= 0.2 * self.seconds:
            return False
        self.seconds = learned
        return True
