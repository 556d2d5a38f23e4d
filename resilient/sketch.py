"""Latency sketches: quantiles within a fixed relative error, mergeable across a fleet.

One idea: a duration is kept only as the logarithmic bucket it falls in, so
a histogram of any number of calls is a few hundred small integers, two of
them add up bucket by bucket, and any quantile read from the sum is within
``ALPHA`` (1%) of a duration that was really at that rank. This is DDSketch's
logarithmic mapping (Masson, Rim, Lee, VLDB 2019): with ``gamma = (1 + a) /
(1 - a)``, bucket ``k`` holds the durations in ``(gamma^(k-1), gamma^k]``
and answers with ``2 gamma^k / (gamma + 1)``, at most ``a`` from either end.

- Durations at or below ``FLOOR`` (1 µs) share bucket ``ZERO``: a call that
  fast is "no time" for a P99.
- ``add_many`` buckets a batch at once; the breaker hot path only appends a
  float to a list, and the store's flush turns the list into buckets off the
  calling path (``resilient.stores.redis``).
- ``quantile(q)`` uses the nearest rank (the ``ceil(q * n)``-th smallest), as
  the benchmarks do, so a sketch's P99 is comparable to theirs.
- The wire form is a plain mapping of bucket index to count (``counts``);
  ``from_counts`` refuses anything but integer indices in range and counts
  >= 0, so a malformed histogram from a store is an error, never a quantile.

Why not the ``ddsketch`` package: its ``add`` is a method call chain per
value, and a sketch here is built from a batch and merged from Redis hash
fields; the mapping itself is the few lines below.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ALPHA", "FLOOR", "ZERO", "LatencySketch", "bucket", "is_bucket", "value"]

#: The relative error of every quantile.
ALPHA = 0.01
#: Durations at or below this many seconds count as zero.
FLOOR = 1e-6
#: The bucket of durations at or below ``FLOOR``.
ZERO = -(2**31)
#: No duration this long is kept apart (seconds): about 114 days.
CEILING = 1e7

_GAMMA = (1.0 + ALPHA) / (1.0 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_LOWEST = math.ceil(math.log(FLOOR) / _LOG_GAMMA)
_HIGHEST = math.ceil(math.log(CEILING) / _LOG_GAMMA)
_DECIMAL = re.compile(r"-?[0-9]{1,11}")


def bucket(seconds: float) -> int:
    """The bucket of one duration (NaN and negatives count as zero)."""
    if not seconds > FLOOR:
        return ZERO
    if seconds >= CEILING:
        return _HIGHEST
    return math.ceil(math.log(seconds) / _LOG_GAMMA)


def is_bucket(index: int) -> bool:
    """Whether ``index`` is a bucket some duration falls in."""
    return index == ZERO or _LOWEST <= index <= _HIGHEST


def value(index: int) -> float:
    """The duration a bucket answers with: within ``ALPHA`` of all it holds."""
    if index == ZERO:
        return 0.0
    return 2.0 * _GAMMA**index / (_GAMMA + 1.0)


class LatencySketch:
    """A histogram of durations in logarithmic buckets; ``quantile()`` within 1%."""

    __slots__ = ("_counts", "count")

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self.count = 0

    def add(self, seconds: float) -> None:
        self._counts[bucket(seconds)] += 1
        self.count += 1

    def add_many(self, durations: Sequence[float], *, limit: int | None = None) -> None:
        """Add every duration; beyond ``limit`` of them, an even stride of ``limit``
        each counted as ``len(durations) / limit`` (whole counts, so the total is
        within a stride of the truth)."""
        n = len(durations)
        step = 1
        if limit is not None and n > limit:
            step = -(-n // limit)  # ceil: at most ``limit`` taken
            durations = durations[::step]
        counts = self._counts
        for index, calls in Counter(map(bucket, durations)).items():
            counts[index] += calls * step
        self.count += step * len(durations)

    def merge(self, other: LatencySketch | Mapping[int, int]) -> None:
        """Add ``other``'s counts to this sketch's (a fleet's sum)."""
        counts = other._counts if isinstance(other, LatencySketch) else other
        for index, n in counts.items():
            self._counts[index] += n
            self.count += n

    @property
    def counts(self) -> dict[int, int]:
        """Bucket index to count, the buckets with calls only (the wire form)."""
        return {index: n for index, n in self._counts.items() if n}

    @classmethod
    def from_counts(cls, counts: Mapping[Any, object]) -> LatencySketch:
        """A sketch from a wire form, whose keys may be decimal strings (a Redis hash).

        Raises:
            ValueError: a key is not a bucket index in range or a count is not
                an integer >= 0; the message names it.
        """
        sketch = cls()
        for key, n in counts.items():
            index = _integer(key, "bucket")
            if not is_bucket(index):
                raise ValueError(f"bucket {index} is out of range [{_LOWEST}, {_HIGHEST}]")
            number = _integer(n, "count")
            if number < 0:
                raise ValueError(f"count of bucket {index} must be >= 0, got {number}")
            if number:
                sketch._counts[index] += number
                sketch.count += number
        return sketch

    def quantile(self, q: float) -> float:
        """The duration at rank ``ceil(q * count)`` (nearest rank), within ``ALPHA``.

        Raises:
            ValueError: ``q`` is not in ``[0, 1]`` or the sketch is empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if self.count == 0:
            raise ValueError("an empty sketch has no quantiles")
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return value(index)
        raise AssertionError("unreachable: the counts sum to count")  # pragma: no cover

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        if not self.count:
            return "<LatencySketch empty>"
        p50, p99 = self.quantile(0.5), self.quantile(0.99)
        return f"<LatencySketch {self.count} calls, p50 {p50 * 1e3:.3g} ms, p99 {p99 * 1e3:.3g} ms>"


def _integer(raw: object, what: str) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{what} must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if isinstance(raw, str) and _DECIMAL.fullmatch(raw):
        return int(raw)
    raise ValueError(f"{what} must be an integer, got {raw!r:.40}")
