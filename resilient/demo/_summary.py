"""The figures of a run: percentiles, success, hits, time to trip and to recover."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from resilient.demo._run import Result

__all__ = ["RECOVERED", "WINDOW", "Summary", "hits_text", "milliseconds", "rows", "summarize"]

#: Success windows after the heal are this long (seconds) ...
WINDOW: Final = 0.2
#: ... and count as recovered at this success rate.
RECOVERED: Final = 0.95


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one ``Result`` (latencies in seconds, rates in [0, 1]).

    Attributes:
        trip: seconds from the start of the fault phase in which the breaker
            first opened to that opening (None: it never opened).
        recover: seconds from the heal until every later ``WINDOW`` had at
            least ``RECOVERED`` success (None: it never did).
        after_heal: the worst window's success rate from 1 s after the heal on.
        outside: the share of requests sent outside the fault.
        opened: whether the breaker opened at all.
    """

    name: str
    requests: int
    p50: float
    p99: float
    p999: float
    success: float
    hits: int
    hits_by_phase: Mapping[str, int]
    trip: float | None
    recover: float | None
    after_heal: float
    outside: float
    opened: bool


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _windows(result: Result, start: float, end: float) -> list[float]:
    """Success rate of each ``WINDOW``-long window of send times in ``[start, end)``."""
    count = max(0, int((end - start) / WINDOW + 1e-9))
    sent = [0] * count
    good = [0] * count
    for at, ok in zip(result.sent, result.ok, strict=True):
        if start <= at < start + count * WINDOW:
            i = int((at - start) / WINDOW)
            sent[i] += 1
            good[i] += ok
    return [g / n if n else 1.0 for g, n in zip(good, sent, strict=True)]


def summarize(result: Result) -> Summary:
    """The table's figures for one run of one contender."""
    scenario = result.scenario
    ordered = sorted(result.latency)
    n = len(ordered)
    faults = scenario.faults()
    first, heal = (faults[0][0], faults[-1][1]) if faults else (0.0, 0.0)
    inside = sum(1 for at in result.sent if any(s <= at < e for s, e in faults))
    opened_at = [at for at, state in result.states if state == "open" and at >= first]
    trip = None
    if opened_at:  # from the start of the fault phase it opened in
        starts = [start for phase, start, _ in scenario.spans() if phase.fault]
        trip = opened_at[0] - max(start for start in starts if start <= opened_at[0])
    recover = None
    if faults:
        grid = _windows(result, heal, scenario.duration)
        for k in range(len(grid)):
            if all(rate >= RECOVERED for rate in grid[k:]):
                recover = k * WINDOW
                break
    later = _windows(result, heal + 1.0, scenario.duration) if faults else []
    return Summary(
        name=result.name,
        requests=n,
        p50=_percentile(ordered, 0.50),
        p99=_percentile(ordered, 0.99),
        p999=_percentile(ordered, 0.999),
        success=sum(result.ok) / n if n else math.nan,
        hits=sum(result.hits.values()),
        hits_by_phase=dict(result.hits),
        trip=trip,
        recover=recover,
        after_heal=min(later, default=1.0),
        outside=1.0 - inside / n if n else math.nan,
        opened=any(state == "open" for _, state in result.states),
    )


def rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """The table's cells: a header row, then one row per contender.

    Hits at the sick upstream get a column per fault phase when there are
    several (``mixed``: the brownout's and the outage's).
    """
    phases = list(dict.fromkeys(p for s in summaries for p in s.hits_by_phase))
    hits = [f"hits: {p}" for p in phases] if len(phases) > 1 else ["hits at sick upstream"]
    head = ["client", "P50", "P99", "P999", "success", *hits, "trip", "recover"]

    def counts(s: Summary) -> list[str]:
        if len(phases) > 1:
            return [str(s.hits_by_phase.get(p, 0)) for p in phases]
        return [str(s.hits)]

    return [
        head,
        *(
            [
                s.name,
                milliseconds(s.p50),
                milliseconds(s.p99),
                milliseconds(s.p999),
                f"{s.success:.1%}",
                *counts(s),
                "-" if s.trip is None else f"{s.trip:.2f} s",
                "-" if s.recover is None else f"{s.recover:.1f} s",
            ]
            for s in summaries
        ),
    ]


def hits_text(summary: Summary) -> str:
    if len(summary.hits_by_phase) <= 1:
        return str(summary.hits)
    return ", ".join(f"{n} ({phase})" for phase, n in summary.hits_by_phase.items())


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
