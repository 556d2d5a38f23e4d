"""Noise: the paths on which the primary disagrees with itself (Diffy's trick).

One idea: for a share of mirrored calls the primary is called a second time;
every path where the two primary answers differ (a timestamp, a request id,
a random order) is learned as noise, in its general form (``$.items[*].ts``).
A candidate's difference on a learned path is reported as noise, never as a
mismatch. What is learned only grows, for the life of the process;
``resilient reconcile`` also applies the noise learned anywhere in a source
to every record of the operation, so a mismatch recorded before the noise
was learned is still reported as noise there.

Concurrency: the learned patterns are replaced whole (copy on write) on the
reporter's thread; reading them takes no lock.
"""

from __future__ import annotations

from collections.abc import Iterable

from resilient.shadow._paths import Patterns, generalize

__all__ = ["NoiseModel"]


class NoiseModel:
    """The noisy paths learned so far for one operation."""

    __slots__ = ("_learned", "_patterns")

    def __init__(self) -> None:
        self._learned: frozenset[str] = frozenset()
        self._patterns = Patterns()

    @property
    def learned(self) -> frozenset[str]:
        """The noisy path patterns learned so far."""
        return self._learned

    def learn(self, paths: Iterable[str]) -> None:
        """Learn the paths where two primary answers differed."""
        new = self._learned | {generalize(p) for p in paths}
        if new != self._learned:
            self._learned = new
            self._patterns = Patterns(sorted(new))

    def split(self, paths: Iterable[str]) -> tuple[list[str], list[str]]:
        """``paths`` as (real differences, noise)."""
        patterns = self._patterns
        real: list[str] = []
        noisy: list[str] = []
        for p in paths:
            (noisy if patterns.covers(p) else real).append(p)
        return real, noisy
