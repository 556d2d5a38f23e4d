"""An upstream whose capacity drops, then returns: the adaptive concurrency limit against none.

    python -m bench.limit_step [--algorithm gradient2|vegas ...] [--rate 150] [--rounds 1]

The upstream (``resilient.demo.AsyncUpstreamProcess``, its own process on
loopback) answers in 100 ms while at most ``capacity`` requests are in flight
on a path; past that, a request arriving as the ``n``-th waits ``n /
capacity`` times as long, so a path serves at most ``capacity / 0.1 s``
answers a second however many are sent (``Behaviour.capacity``):

- ``healthy`` 6 s: capacity 50 (500 answers/s);
- ``step`` 12 s: capacity 10 (100 answers/s), while the load stays at
  ``--rate`` (150 requests/s by default: half again what it can serve);
- ``recovered`` 8 s: capacity 50 again.

Open loop (request ``i`` sent at ``i / rate``), every client at once, each on
its own path (each has its own capacity), every request timed from send to
the end of its body or its error (``resilient.demo.run``):

- ``aiohttp``: ``ClientSession(timeout=ClientTimeout(total=2))``;
- ``retry-only``: ``resilient.http.session(timeouts=Timeouts(total=2.0))``,
  every other setting default (budgeted retries, breaker, learned timeouts);
- ``gradient2`` / ``vegas``: the same with ``limit="gradient2"`` (or
  ``"vegas"``): a ``ConcurrencyLimit`` per host, its defaults (initial 20).

Judged per limited client, in half-second buckets by send time. "Healthy
latency" is the client's own P99 in the healthy phase (about 100 ms).

- settled: from this many seconds after the step on, every bucket's
  admitted P99 (requests not refused) is <= 2x the healthy latency and its
  goodput (200s finished in it, per second) >= 90% of the capacity; target
  <= 5 s;
- once settled: admitted P99 <= 2x healthy, goodput >= 90% of capacity;
- back up: from this many seconds after the capacity returns on, every
  bucket has >= 95% of its requests answered 200 and P99 <= 2x healthy;
  target <= 5 s.

The limit each limited client's host had is printed over time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from resilient import ConcurrencyLimit
from resilient.demo import Contender, Phase, Result, Scenario, baseline, contender, plot, run

TOTAL = 2.0
LATENCY = 0.1
HEALTHY_CAPACITY = 50
STEP_CAPACITY = 10
BUCKET = 0.5
SETTLE_TARGET = 5.0


def step_scenario(rate: float) -> Scenario:
    def at(capacity: int) -> dict[str, float]:
        return {"latency": LATENCY, "capacity": capacity}

    return Scenario(
        f"capacity step @ {rate:g} req/s",
        rate,
        (
            Phase("healthy", 6.0, at(HEALTHY_CAPACITY), False),
            Phase("step", 12.0, at(STEP_CAPACITY), True),
            Phase("recovered", 8.0, at(HEALTHY_CAPACITY), False),
        ),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as the chaos benchmark reports them (nan for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One half second of a client's requests (by send time) and of its finished 200s."""

    sent: int
    answered: int  # of those sent in it, answered 200
    admitted: tuple[float, ...]  # latencies of those sent in it and not refused
    goodput: float  # 200s finished in it, per second

    @property
    def p99(self) -> float:
        return percentile(self.admitted, 0.99)


def buckets(result: Result, start: float, end: float) -> list[Bucket]:
    count = round((end - start) / BUCKET)
    sent = [0] * count
    answered = [0] * count
    admitted: list[list[float]] = [[] for _ in range(count)]
    finished = [0] * count
    for at, latency, kind in zip(result.sent, result.latency, result.kind, strict=True):
        k = math.floor((at - start) / BUCKET)
        if 0 <= k < count:
            sent[k] += 1
            answered[k] += kind == "200"
            if kind != "LimitExceededError":
                admitted[k].append(latency)
        done = math.floor((at + latency - start) / BUCKET)
        if kind == "200" and 0 <= done < count:
            finished[done] += 1
    return [
        Bucket(sent[k], answered[k], tuple(admitted[k]), finished[k] / BUCKET) for k in range(count)
    ]


def settled_after(grid: Sequence[Bucket], good: Callable[[Bucket], bool]) -> float | None:
    """Seconds until every bucket from then on is ``good`` (None: never)."""
    for k in range(len(grid)):
        if all(good(b) for b in grid[k:]):
            return k * BUCKET
    return None


def phase_span(scenario: Scenario, name: str) -> tuple[float, float]:
    return next((start, end) for phase, start, end in scenario.spans() if phase.name == name)


def judge(result: Result) -> bool:
    scenario = result.scenario
    h_start, h_end = phase_span(scenario, "healthy")
    healthy = [
        latency
        for at, latency, kind in zip(result.sent, result.latency, result.kind, strict=True)
        if h_start + 1.0 <= at < h_end and kind == "200"
    ]
    bound = 2.0 * percentile(healthy, 0.99)
    capacity = STEP_CAPACITY / LATENCY
    step = buckets(result, *phase_span(scenario, "step"))
    settled = settled_after(step, lambda b: b.p99 <= bound and b.goodput >= 0.9 * capacity)
    back = settled_after(
        buckets(result, *phase_span(scenario, "recovered")),
        lambda b: b.sent > 0 and b.answered >= 0.95 * b.sent and b.p99 <= bound,
    )
    checks: list[tuple[str, bool]] = []
    if settled is None:
        checks.append(("settled: never, within the step", False))
    else:
        rest = step[round(settled / BUCKET) :]
        p99 = percentile([x for b in rest for x in b.admitted], 0.99)
        goodput = sum(b.goodput for b in rest) / len(rest)
        checks += [
            (f"settled {settled:.1f} s after the step (<= {SETTLE_TARGET:g} s)", settled <= 5.0),
            (
                f"admitted P99 once settled {p99 * 1e3:.0f} ms = {p99 / bound * 2:.2f}x healthy "
                f"(<= 2x)",
                p99 <= bound,
            ),
            (
                f"goodput once settled {goodput:.0f}/s = {goodput / capacity:.0%} of capacity "
                f"(>= 90%)",
                goodput >= 0.9 * capacity,
            ),
        ]
    checks.append(
        (
            f"back up {back:.1f} s after the capacity returned (<= {SETTLE_TARGET:g} s)"
            if back is not None
            else "back up: never, within the recovered phase",
            back is not None and back <= SETTLE_TARGET,
        )
    )
    passed = True
    for text, ok in checks:
        passed &= ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {result.name}: {text}")
    return passed


def describe(result: Result) -> None:
    """A row per phase: P50/P99 of admitted requests, 200s, refused, other failures."""
    scenario = result.scenario
    for phase, start, end in scenario.spans():
        rows = [
            (latency, kind)
            for at, latency, kind in zip(result.sent, result.latency, result.kind, strict=True)
            if start <= at < end
        ]
        admitted = [latency for latency, kind in rows if kind != "LimitExceededError"]
        ok = sum(kind == "200" for _, kind in rows)
        refused = sum(kind == "LimitExceededError" for _, kind in rows)
        other = len(rows) - ok - refused
        print(
            f"  {result.name:<10} {phase.name:<9} P50 {percentile(admitted, 0.5) * 1e3:6.0f} ms  "
            f"P99 {percentile(admitted, 0.99) * 1e3:6.0f} ms  200: {ok / len(rows):6.1%}  "
            f"refused: {refused / len(rows):6.1%}  other: {other / len(rows):6.1%}"
        )


class Limits:
    """Makes the session's per-host limits, and keeps them to be watched."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.made: list[ConcurrencyLimit] = []
        self.seen: list[tuple[float, int]] = []

    def __call__(self) -> ConcurrencyLimit:
        limit = ConcurrencyLimit(self.algorithm)  # type: ignore[arg-type]
        self.made.append(limit)
        return limit

    def watch(self, elapsed: float) -> None:
        if self.made:
            self.seen.append((elapsed, self.made[0].limit))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limit_step", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--algorithm", action="append", choices=["gradient2", "vegas"], help="default: both"
    )
    parser.add_argument("--rate", type=float, default=150.0, help="requests/s per client")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="where the plot goes")
    args = parser.parse_args(argv)
    algorithms = args.algorithm or ["gradient2", "vegas"]
    passed = True
    for n in range(args.rounds):
        scenario = step_scenario(args.rate)
        limits = {name: Limits(name) for name in algorithms}
        contenders: list[Contender] = [
            baseline(TOTAL),
            contender(TOTAL, name="retry-only"),
            *(contender(TOTAL, name=name, limit=made) for name, made in limits.items()),
        ]
        phases = ", ".join(f"{p.name} {p.seconds:g}s" for p in scenario.phases)
        print(f"{scenario.name}: {phases} (round {n + 1} of {args.rounds})", flush=True)

        watched = list(limits.values())

        def tick(elapsed: float, phase: str, results: Sequence[Result]) -> None:
            for made in watched:  # noqa: B023 (called only while this round runs)
                made.watch(elapsed)

        results = asyncio.run(run(scenario, contenders, on_tick=tick))
        for result in results:
            describe(result)
        for name, made in limits.items():
            trace = "  ".join(f"{t:.0f}s:{v}" for t, v in made.seen[::4])
            print(f"  {name} limit over time: {trace}")
        for result in results:
            if result.name in limits:
                passed &= judge(result)
        path = plot(results, args.out / "limit-step.png", title=f"adaptive limit: {scenario.name}")
        print(f"  plot: {path}")
    print(f"\nall targets met: {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
