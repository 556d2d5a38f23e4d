"""What shadowing costs the caller: ``Shadow`` at sample 0, and at 0.1 with a candidate that hangs.

    python -m bench.shadow_cost [--calls 100000] [--repeats 9] [--rounds 40] [--seconds 1.5]
                                [--rate 500] [--resamples 1000] [--primary http|sleep]
                                [--no-instructions]

Two targets (DESIGN.md, "shadowing at sample 0 / 0.1"), each against the
unshadowed function in the same run:

1. **Sample 0, per call.** A ``Shadow``-decorated function with
   ``sample=0`` against the same function undecorated, async and sync: the
   overhead in µs per call (best of ``--repeats`` interleaved rounds of
   ``--calls`` calls, as ``bench.breaker_overhead``). Target <= +0.5 µs.
   The same difference is also counted in instructions, which the load on
   a shared machine does not move: three processes under ``valgrind
   --tool=callgrind`` each run ``--calls`` calls of each twin, one with
   neither shadowed, one with the sync twin shadowed, one with the async
   twin shadowed; the difference over ``--calls`` is one call's cost,
   start-up excluded (``PYTHONHASHSEED=0``, so the three start alike).
   Skipped without ``valgrind`` or with ``--no-instructions``.

2. **Sample 0.1, the candidate hanging.** The primary is a real call: an
   aiohttp GET to an upstream on loopback in its own process that answers
   after 1 ms (``resilient.demo.AsyncUpstreamProcess``), the kind of call
   one shadows; ``--primary sleep`` makes it ``asyncio.sleep(0.001)``
   instead, which leaves out the client's own CPU and the network. The
   candidate never returns (it awaits a future nobody resolves). The
   ``Shadow`` has every other default: ``timeout=1.0``, ``bulkhead=16``,
   its own breaker, ``noise=0.05`` (a noise sample calls the primary a
   second time, which is real extra work on the loop), and a real
   ``JsonlSink`` in a temporary folder (records are written on the
   reporter's thread, which shares the GIL and the 2 CPUs with the loop).
   Open loop at ``--rate`` calls/s; each call's latency is timed from the
   moment it was due (so a loop delayed by the shadow's work counts) to its
   end. Each call runs in a trace of its own (a current OpenTelemetry span
   context with a seeded random trace id), as a call inside a request
   would, so the draw is the trace id's hash, and the calls the shadow drew
   are known: their P50 and P99, and their share of the slowest 1% of the
   shadowed calls, say whether the mirrored calls themselves make the tail.

   A round is three short phases of ``--seconds`` in the same event loop
   and aiohttp session: shadowed, unshadowed, and unshadowed again (the
   A/A control, which shows what this bench resolves on this machine in
   the same run), their order rotating from round to round. After every
   phase the shadow is flushed (hung candidates are cut at their 1 s
   timeout and recorded: the shadowed phase's cost, never the next
   phase's), then ``REST`` seconds pass. Each phase's process CPU time
   (every thread, the flush included) per call is kept beside the
   latencies. Reported: P50, P99, P999 and CPU per call of each variant,
   pooled over the rounds, and the pooled ratios to the unshadowed variant
   (P99, P50, CPU per call) with 95% intervals from a paired bootstrap
   over rounds (``--resamples``). Target: shadowed P99 <= 1.05x the
   unshadowed P99, pooled: **met** when the interval's top is at most
   1.05, **not met** when its bottom is above, else **not resolved**.

About 6 minutes with the defaults (part 2: 40 rounds of about 5.5 s), of which the
instruction counts take 45 s; instructions per call at sample 0.1 are
``bench.shadow_instructions``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from resilient.demo import AsyncUpstreamProcess
from resilient.gray import bucket
from resilient.shadow import JsonlSink, Shadow

COLLECTED = re.compile(r"Collected : (\d+)")
#: Seconds an upstream answer takes (the realistic primary).
LATENCY = 0.001
#: The share mirrored in part 2.
SAMPLE = 0.1
#: Seconds of rest after every phase (once the shadow has flushed).
REST = 0.25


class NullSink:
    """Keeps nothing (part 1 never records: at sample 0 nothing is mirrored)."""

    def write(self, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- part 1: sample 0


def sync_target(x: int) -> int:
    return x


async def async_target(x: int) -> int:
    return x


def twins() -> dict[str, Callable[[int], Any]]:
    """The four functions timed: each twin bare and shadowed at sample 0."""
    sync_shadow = Shadow("bench-sync", sync_target, sample=0, sink=NullSink())
    async_shadow = Shadow("bench-async", async_target, sample=0, sink=NullSink())
    return {
        "sync bare": sync_target,
        "sync shadowed": sync_shadow(sync_target),
        "async bare": async_target,
        "async shadowed": async_shadow(async_target),
    }


def time_sync(fn: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls


def time_async(fn: Callable[[int], Awaitable[object]], calls: int) -> float:
    async def loop() -> float:
        start = time.perf_counter()
        for i in range(calls):
            await fn(i)
        return (time.perf_counter() - start) / calls

    return asyncio.run(loop())


def sample_zero(calls: int, repeats: int) -> dict[str, float]:
    """Best time per call (seconds) of each of ``twins()``, rounds interleaved."""
    fns = twins()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            timer = time_async if name.startswith("async") else time_sync
            rounds[name].append(timer(fn, calls))
    return {name: min(times) for name, times in rounds.items()}


def count_loop(variant: str, calls: int) -> None:
    """The process callgrind counts: ``calls`` calls of each twin, ``variant`` shadowed."""
    fns = twins()
    sync_fn = fns["sync shadowed" if variant == "sync" else "sync bare"]
    async_fn = fns["async shadowed" if variant == "async" else "async bare"]
    time_sync(sync_fn, calls)
    time_async(async_fn, calls)


def instructions(variant: str, calls: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.shadow_cost", "--count-loop", variant, "--calls", str(calls),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


# ---------------------------------------------------------------------- part 2: sample 0.1, hung


async def hang(*_: object) -> None:
    await asyncio.get_running_loop().create_future()  # nobody ever resolves it


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


async def phase(
    fn: Callable[[int], Awaitable[object]], seconds: float, rate: float, seed: int
) -> tuple[list[float], list[bool]]:
    """Call ``fn`` open loop at ``rate`` for ``seconds``, each call in a trace of its own.

    Returns each call's time from when it was due, and whether its trace id
    is one a ``sample=0.1`` shadow mirrors (the same trace ids, so the same
    draws, for the same ``seed``).
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    latencies: list[float] = []
    drawn: list[bool] = []
    failures = 0

    async def one(i: int, due: float, trace_id: int) -> None:
        nonlocal failures
        span = NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(1)))
        token = otel_context.attach(set_span_in_context(span))
        try:
            await fn(i)
        except Exception:
            failures += 1
        finally:
            otel_context.detach(token)
        latencies.append(loop.time() - due)
        drawn.append(bucket(f"{trace_id:032x}") < SAMPLE * 10_000)

    tasks: set[asyncio.Task[None]] = set()
    origin = loop.time() + 0.02
    for i in range(int(seconds * rate)):
        due = origin + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i, due, rng.getrandbits(128) or 1))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)
    if failures:
        raise RuntimeError(f"{failures} primary calls failed: the comparison would be void")
    return latencies, drawn


#: The phases of part 2: the shadow's, and two unshadowed (A, and A' the control).
VARIANTS = ("unshadowed", "shadowed", "control")


@dataclass
class Rounds:
    """Part 2's measurements, per round and per variant."""

    latencies: list[dict[str, list[float]]] = field(default_factory=list)  # seconds from due
    cpu: list[dict[str, float]] = field(default_factory=list)  # process CPU seconds per call
    drawn: list[bool] = field(default_factory=list)  # of the shadowed calls, pooled, in order
    counts: dict[str, int] = field(default_factory=dict)  # the shadow's outcomes


async def hung_candidate(
    rounds: int, seconds: float, rate: float, primary_kind: str, records: Path
) -> Rounds:
    """Rounds of three phases (shadowed, unshadowed, and unshadowed again as the control),
    in an order that rotates round by round, each followed by the same rest."""
    async with AsyncUpstreamProcess(seed=1) as upstream, aiohttp.ClientSession() as session:
        await upstream.apply({"latency": LATENCY})
        url = f"{upstream.url}/primary"

        async def http_primary(i: int) -> bytes:
            async with session.get(url) as resp:
                return await resp.read()

        async def sleep_primary(i: int) -> int:
            await asyncio.sleep(LATENCY)
            return i

        primary = http_primary if primary_kind == "http" else sleep_primary
        shadow = Shadow("bench-hung", hang, sample=SAMPLE, sink=JsonlSink(records))
        shadowed = shadow(primary)

        fns = {"unshadowed": primary, "shadowed": shadowed, "control": primary}
        out = Rounds()
        await phase(primary, 1.0, rate, -1)  # warm the connections and the upstream
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            latencies: dict[str, list[float]] = {}
            cpu: dict[str, float] = {}
            for name in order:
                cpu_start = time.process_time()
                latencies[name], drawn = await phase(fns[name], seconds, rate, r)
                if name == "shadowed":
                    out.drawn.extend(drawn)
                # Wait for the shadow's leftovers (hung candidates cut at their timeout,
                # records written): they are the shadowed phase's cost, never the next's.
                # Looked at every 50 ms (aflush polls every 2 ms: CPU the bench would add).
                give_up = time.monotonic() + 10.0
                while sum(shadow.counts.values()) < sum(out.drawn):
                    if time.monotonic() > give_up:
                        raise RuntimeError("the shadow did not record every mirror in 10 s")
                    await asyncio.sleep(0.05)
                if not await shadow.aflush(10.0):
                    raise RuntimeError("the shadow did not flush in 10 s")
                cpu[name] = (time.process_time() - cpu_start) / len(latencies[name])
                await asyncio.sleep(REST)
            out.latencies.append(latencies)
            out.cpu.append(cpu)
        out.counts = dict(shadow.counts)
        return out


Interval = tuple[float, float, float]  # (estimate, low, high)


def pooled_ratios(
    rounds: Rounds, picks: Sequence[int], top: str, bottom: str, qs: Sequence[float]
) -> list[float]:
    """``top``'s over ``bottom``'s pooled quantiles ``qs`` over the rounds ``picks``, then
    their CPU per call."""
    tops = sorted(t for i in picks for t in rounds.latencies[i][top])
    bottoms = sorted(t for i in picks for t in rounds.latencies[i][bottom])
    ratios = [percentile(tops, q) / percentile(bottoms, q) for q in qs]
    cpu_top = sum(rounds.cpu[i][top] for i in picks)
    return [*ratios, cpu_top / sum(rounds.cpu[i][bottom] for i in picks)]


def bootstrap(
    rounds: Rounds, top: str, bottom: str, qs: Sequence[float], resamples: int, seed: int = 17
) -> list[Interval]:
    """Pooled ratios with 95% intervals, for each of ``qs`` and then for CPU per call.

    Paired by round: a resample draws whole rounds with replacement and
    pools both variants of the rounds it drew, so what moved a whole round
    (the machine's load that minute) moves both sides of the ratio alike.
    """
    n = len(rounds.latencies)
    estimate = pooled_ratios(rounds, range(n), top, bottom, qs)
    rng = random.Random(seed)
    draws = [
        pooled_ratios(rounds, rng.choices(range(n), k=n), top, bottom, qs) for _ in range(resamples)
    ]
    intervals = []
    for k, value in enumerate(estimate):
        ordered = sorted(d[k] for d in draws)
        low = ordered[int(0.025 * resamples)]
        high = ordered[min(resamples - 1, int(0.975 * resamples))]
        intervals.append((value, low, high))
    return intervals


def verdict(low: float, high: float, target: float) -> str:
    if high <= target:
        return "met"
    if low > target:
        return "not met"
    return "not resolved"


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shadow_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=100_000, help="calls per timing round")
    parser.add_argument("--repeats", type=int, default=9, help="timing rounds (best is kept)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the hung candidate")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="primary calls per second")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--primary", choices=["http", "sleep"], default="http")
    parser.add_argument("--no-instructions", action="store_true", help="skip the callgrind counts")
    parser.add_argument("--count-loop", choices=["bare", "sync", "async"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_loop:
        count_loop(args.count_loop, args.calls)
        return 0
    passed = True
    load = os.getloadavg()[0]
    print(f"shadow cost ({os.cpu_count()} CPUs, load average {load:.2f} at the start)\n")

    print(f"1. sample=0: best of {args.repeats} rounds of {args.calls} calls")
    best = sample_zero(args.calls, args.repeats)
    for twin in ("sync", "async"):
        bare, shadowed = best[f"{twin} bare"], best[f"{twin} shadowed"]
        extra = (shadowed - bare) * 1e6
        ok = extra <= 0.5
        passed &= ok
        print(
            f"  [{'PASS' if ok else 'FAIL'}] {twin:<5}: {shadowed * 1e6:6.3f} us/call shadowed, "
            f"{bare * 1e6:6.3f} bare: {extra:+.3f} us (<= +0.5 us)"
        )
    if args.no_instructions or shutil.which("valgrind") is None:
        print("  (instructions: skipped: --no-instructions, or no valgrind)")
    else:
        calls = min(args.calls, 50_000)
        counts = {v: instructions(v, calls) for v in ("bare", "sync", "async")}
        for twin in ("sync", "async"):
            extra = (counts[twin] - counts["bare"]) / calls
            print(f"  instructions: {twin:<5} {extra:+7.1f} per call shadowed at sample 0")

    print(
        f"\n2. sample=0.1, the candidate hanging: {args.primary} primary at {args.rate:g}/s, "
        f"{args.rounds} rounds of three {args.seconds:g} s phases (shadowed, unshadowed, "
        f"and unshadowed again: the A/A control), their order rotating"
    )
    with tempfile.TemporaryDirectory() as scratch:
        records = Path(scratch) / "shadow.jsonl"
        rounds = asyncio.run(
            hung_candidate(args.rounds, args.seconds, args.rate, args.primary, records)
        )
        lines = [json.loads(line) for line in records.read_text().splitlines()]
        dropped = Counter(r["dropped"] for r in lines if r["dropped"] is not None)
    pooled = {name: [t for r in rounds.latencies for t in r[name]] for name in VARIANTS}
    for name in VARIANTS:
        p50, p99, p999 = (percentile(pooled[name], q) * 1e3 for q in (0.5, 0.99, 0.999))
        cpu = sum(r[name] for r in rounds.cpu) / len(rounds.cpu) * 1e6
        print(
            f"  {name:<10} P50 {p50:6.2f} ms  P99 {p99:6.2f} ms  P999 {p999:6.2f} ms  "
            f"CPU {cpu:6.1f} us/call  ({len(pooled[name])} calls)"
        )
    in_shadow = pooled["shadowed"]
    slowest = percentile(in_shadow, 0.99)
    for label, pick in (("drawn", True), ("not drawn", False)):
        calls = [t for t, d in zip(in_shadow, rounds.drawn, strict=True) if d is pick]
        tail = sum(t >= slowest for t in calls)
        p50, p99 = (percentile(calls, q) * 1e3 for q in (0.5, 0.99))
        print(
            f"    shadowed, {label:<9}: {len(calls):5d} calls, P50 {p50:5.2f} ms, "
            f"P99 {p99:5.2f} ms; {tail} of the slowest 1%"
        )
    print(
        f"  the shadow's outcomes: {rounds.counts}; dropped by {dict(dropped)}; "
        f"{len(lines)} records written"
    )
    print(f"  pooled ratios, 95% intervals from {args.resamples} paired resamples of the rounds:")
    found: dict[str, list[Interval]] = {}
    for top, label in (("shadowed", "shadowed"), ("control", "A/A control")):
        found[top] = bootstrap(rounds, top, "unshadowed", (0.99, 0.5), args.resamples)
        for name, (ratio, low, high) in zip(("P99", "P50", "CPU/call"), found[top], strict=True):
            print(f"    {label:<11} / unshadowed  {name:<8} {ratio:.3f}x [{low:.3f}, {high:.3f}]")
    ratio, low, high = found["shadowed"][0]
    said = verdict(low, high, 1.05)
    passed &= said == "met"
    print(
        f"  [{'PASS' if said == 'met' else 'FAIL'}] P99 {ratio:.3f}x [{low:.3f}, {high:.3f}] "
        f"the unshadowed P99 (<= 1.05x): {said}"
    )
    print(f"\nall targets met: {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
