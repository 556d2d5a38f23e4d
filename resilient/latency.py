"""The slow-call limit in force: a fixed number of seconds, or learned ("auto").

``slow_call_duration="auto"`` learns the limit from the latency the
dependency shows while healthy: ``multiple`` times the 99th percentile of
recent successful calls that were not slow, never below ``floor`` and never
above ``ceiling`` (which a caller sets below its request timeout, so a hung
call is judged slow well before it times out). Until ``min_samples`` calls
have been seen, the limit is ``ceiling``.

The limit moves only when the learned value differs by more than 20%, so the
breaker's in-flight tracker (whose slots are cut from the limit) is rebuilt
rarely. Once learned, it samples: at most one call per ``SAMPLE_GAP``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["SAMPLE_GAP", "AutoSlow", "Recent", "SlowThreshold"]


@dataclass(frozen=True, slots=True)
class AutoSlow:
    """How ``slow_call_duration="auto"`` is learned.

    Args:
        multiple: the limit is this many times the healthy 99th percentile.
        floor: never below this (seconds): fast dependencies jitter.
        ceiling: never above this (seconds); also the limit until enough
            calls were seen. Set it below the request timeout.
        samples: how many recent healthy durations the percentile is taken over.
        min_samples: healthy calls needed before re-learning, and samples
            between two re-learnings (after the first, at most one call per
            ``SAMPLE_GAP`` is a sample).
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


#: Once learned, a learner takes at most one duration per this many seconds
#: (1,000 a second; 256 samples then span a quarter of a second or more): at
#: higher rates a sample describes the dependency as well, and costs the
#: success path less.
SAMPLE_GAP: Final = 0.001


class Recent:
    """The last ``size`` durations, with a quantile due after ``first``, then every ``every``.

    ``add`` is the hot path: a store into a ring and a count; the quantile,
    a sort of the ring (in C), is taken once per ``every`` durations. Until
    the first quantile every duration is taken, then at most one per
    ``gap`` seconds: a duration that ends before ``next_at`` is skipped, and
    hot callers test ``next_at`` themselves to skip the call.
    """

    __slots__ = ("_count", "_due", "_every", "_gap", "_ring", "_sample_gap", "next_at")

    def __init__(self, size: int, first: int, every: int, gap: float = SAMPLE_GAP) -> None:
        self._ring = [0.0] * size
        self._count = 0  # durations seen
        self._due = first  # the count at which a quantile is due next
        self._every = every
        self._gap = 0.0  # every duration, until the first quantile ...
        self._sample_gap = gap  # ... then one per this many seconds
        self.next_at = -math.inf  # when (the caller's clock) the next duration is taken

    def add(self, duration: float, now: float) -> bool:
        """Record a duration that ended at ``now``; True when a quantile is due (take it)."""
        if now < self.next_at:
            return False
        count = self._count
        ring = self._ring
        ring[count % len(ring)] = duration
        self._count = count = count + 1
        if count < self._due:
            self.next_at = now + self._gap
            return False
        self._due = count + self._every
        self._gap = self._sample_gap
        self.next_at = now + self._gap
        return True

    def slowest(self) -> float:
        """The longest of the durations held; 0.0 if none."""
        held = min(self._count, len(self._ring))
        if held == 0:
            return 0.0
        return max(self._ring if held == len(self._ring) else self._ring[:held])

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of the durations held; 0.0 if none."""
        held = min(self._count, len(self._ring))
        if held == 0:
            return 0.0
        ordered = sorted(self._ring if held == len(self._ring) else self._ring[:held])
        return ordered[max(1, math.ceil(q * held)) - 1]


class SlowThreshold(Recent):
    """``seconds`` is the limit now; ``learning`` says it is "auto" (else ``next_at`` is inf)."""

    __slots__ = ("auto", "learning", "seconds")

    def __init__(self, value: float | Literal["auto"], auto: AutoSlow | None = None) -> None:
        self.auto = auto = auto or AutoSlow()
        super().__init__(auto.samples, auto.min_samples, auto.min_samples)
        self.learning = value == "auto"
        self.seconds = auto.ceiling if value == "auto" else float(value)
        if not self.learning:
            self.next_at = math.inf

    def observe(self, duration: float, now: float) -> bool:
        """Feed a healthy call's duration, ended at ``now``; True when the limit moved."""
        if not self.add(duration, now):
            return False
        auto = self.auto
        p99 = self.quantile(0.99)
        learned = min(auto.ceiling, max(auto.floor, auto.multiple * p99))
        if abs(learned - self.seconds) <= 0.2 * self.seconds:
            return False
        self.seconds = learned
        return True
