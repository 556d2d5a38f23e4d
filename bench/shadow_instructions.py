"""What a ``Shadow`` at sample 0.1 costs per primary call, in instructions (callgrind).

    python -m bench.shadow_instructions [--small 200] [--large 1000]
                                        [--mix breaker=1151,bulkhead=8,hung=56]

The wall-clock bench (``bench.shadow_cost``) cannot resolve a few percent
on a shared machine; instructions do not move with its load. Each path a
call can take through a ``Shadow`` is counted apart, in an event loop, each
call in a trace of its own (so the draw is the trace id's sha256, as in
``bench.shadow_cost``):

- ``bare``: the primary alone (``async def primary(i): return i``);
- ``undrawn``: shadowed at 0.1, a trace id the draw leaves out (90% of calls);
- ``breaker``: drawn, the candidate's breaker open: dropped and recorded;
- ``bulkhead``: drawn, the bulkhead full: dropped and recorded;
- ``hung``: drawn and admitted, the candidate never returns: its task and
  timer, the cut at its timeout, the breaker's failure, the record;
- ``http``: for scale, the unshadowed primary of ``bench.shadow_cost``: an
  aiohttp GET to an upstream on loopback (in its own process, outside
  valgrind) that answers after 1 ms.

Every path's record is written by a real ``JsonlSink`` on the reporter's
thread, and counted (callgrind counts every thread). Each variant runs in
two processes under ``valgrind --tool=callgrind``, ``--small`` and
``--large`` calls; the difference over the difference in calls is one
call's cost, start-up excluded (``PYTHONHASHSEED=0``). A path's cost is its
instructions less ``bare``'s.

Per primary call at sample 0.1 with a hung candidate: 0.9 of ``undrawn``
plus 0.1 of the drawn paths weighted by ``--mix``, by default the outcomes
of the thirty-round run of ``bench.shadow_cost`` (once the hung
candidate's breaker opens, nearly every mirror is dropped by it). About 4
minutes; needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from resilient import BreakerConfig, CircuitBreaker
from resilient.bulkhead import Bulkhead
from resilient.demo import AsyncUpstreamProcess
from resilient.gray import bucket
from resilient.shadow import JsonlSink, Shadow

COLLECTED = re.compile(r"Collected : (\d+)")
TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.MULTILINE)
PATHS = ("bare", "undrawn", "breaker", "bulkhead", "hung", "http")
DRAWN = ("breaker", "bulkhead", "hung")
SAMPLE = 0.1
#: The outcomes of ``python -m bench.shadow_cost --rounds 30`` (docs/benchmarks.md).
MIX = {"breaker": 1151, "bulkhead": 8, "hung": 56}


async def primary(i: int) -> int:
    return i


async def hang(*_: object) -> None:
    await asyncio.get_running_loop().create_future()  # nobody ever resolves it


def trace_ids(count: int, seed: int = 1) -> tuple[list[int], list[int]]:
    """``count`` trace ids a ``sample=0.1`` shadow leaves out, and ``count`` it draws."""
    rng = random.Random(seed)
    left: list[int] = []
    taken: list[int] = []
    while len(left) < count or len(taken) < count:
        trace_id = rng.getrandbits(128) or 1
        pick = taken if bucket(f"{trace_id:032x}") < SAMPLE * 10_000 else left
        if len(pick) < count:
            pick.append(trace_id)
    return left, taken


Call = Callable[[int], Awaitable[object]]


def shadowed(path: str, sink: JsonlSink) -> tuple[Shadow | None, Call]:
    """The shadow of ``path`` (every default but what puts the call on that path)."""
    if path in ("bare", "http"):
        return None, primary
    if path in ("undrawn", "breaker"):
        shadow = Shadow("bench", hang, sample=SAMPLE, sink=sink)
        if path == "breaker":
            assert shadow.breaker is not None
            shadow.breaker.force_open()
    elif path == "bulkhead":
        full = Bulkhead(1)
        full.try_enter()
        shadow = Shadow("bench", hang, sample=SAMPLE, sink=sink, bulkhead=full)
    else:  # hung: a breaker that counts every timeout and never opens, so each is admitted
        never = CircuitBreaker("shadow:bench", BreakerConfig(minimum_calls=1_000_000))
        shadow = Shadow(
            "bench", hang, sample=SAMPLE, sink=sink, timeout=0.2, bulkhead=1 << 20, breaker=never
        )
    return shadow, shadow(primary)


async def run(path: str, left: list[int], taken: list[int]) -> None:
    """The process callgrind counts: calls down ``path``, every record written.

    ``left`` and ``taken``: trace ids the draw leaves out and takes (drawn
    outside valgrind), one per call.
    """
    with tempfile.TemporaryDirectory() as scratch:
        sink = JsonlSink(Path(scratch) / "shadow.jsonl")
        shadow, fn = shadowed(path, sink)
        if path == "http":
            async with AsyncUpstreamProcess(seed=1) as upstream, aiohttp.ClientSession() as http:
                await upstream.apply({"latency": 0.001})
                url = f"{upstream.url}/primary"

                async def get(i: int) -> bytes:
                    async with http.get(url) as resp:
                        return await resp.read()

                await get(0)  # the connection is opened in both processes alike
                await calls_in_traces(get, left)
            return
        await calls_in_traces(fn, taken if path in DRAWN else left)
        if shadow is not None and not await shadow.aflush(600.0):
            raise RuntimeError("the shadow did not flush")
        if path in DRAWN and shadow is not None and len(taken) > 1:
            outcome = "error" if path == "hung" else "dropped"
            if shadow.counts[outcome] != len(taken):
                raise RuntimeError(f"{path}: not every call took the path: {shadow.counts}")


async def calls_in_traces(fn: Call, ids: list[int]) -> None:
    for i, trace_id in enumerate(ids):
        span = NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(1)))
        token = otel_context.attach(set_span_in_context(span))
        try:
            await fn(i)
        finally:
            otel_context.detach(token)


def instructions(path: str, calls: int, ids: Path) -> tuple[int, int]:
    """Instructions of the process down ``path``: its main thread's (the loop), and in all."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out}", sys.executable, "-m", "bench.shadow_instructions",
            "--run", path, "--calls", str(calls), "--ids", str(ids),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        found = COLLECTED.search(done.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
        main_thread = Path(f"{out}-01").read_text()
        totals = TOTALS.search(main_thread)
        if totals is None:
            raise RuntimeError("no totals in the main thread's callgrind file")
    return int(totals.group(1)), int(found.group(1))


def mix(text: str) -> dict[str, int]:
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in DRAWN or not value.isdigit():
            raise argparse.ArgumentTypeError(f"expected breaker=N,bulkhead=N,hung=N, got {text!r}")
        weights[name] = int(value)
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shadow_instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--mix", type=mix, default=MIX, help="drawn calls by path")
    parser.add_argument("--path", action="append", choices=PATHS, help="count only these")
    parser.add_argument("--run", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        left, taken = (pool[: args.calls] for pool in json.loads(args.ids.read_text()))
        asyncio.run(run(args.run, left, taken))
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is needed (Debian: apt-get install valgrind)")
    paths = args.path or list(PATHS)
    if "bare" not in paths:
        paths.insert(0, "bare")
    loop: dict[str, float] = {}
    every: dict[str, float] = {}
    print("instructions per call: the loop's thread / every thread", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        ids = Path(scratch) / "ids.json"
        ids.write_text(json.dumps(trace_ids(args.large)))
        for path in paths:
            small = instructions(path, args.small, ids)
            large = instructions(path, args.large, ids)
            calls = args.large - args.small
            loop[path] = (large[0] - small[0]) / calls
            every[path] = (large[1] - small[1]) / calls
            extra = ""
            if path != "bare":
                extra = (
                    f"  ({loop[path] - loop['bare']:+,.0f} / {every[path] - every['bare']:+,.0f})"
                )
            print(f"  {path:<9} {loop[path]:9,.0f} / {every[path]:9,.0f}{extra}", flush=True)
    if all(path in loop for path in ("undrawn", *DRAWN)):
        weights = args.mix
        mixed = ", ".join(f"{p} {w}" for p, w in weights.items())
        print(f"per primary call at sample {SAMPLE:g}, the candidate hung (drawn: {mixed}):")
        for label, counts in (("the loop's thread", loop), ("every thread", every)):
            cost = {path: counts[path] - counts["bare"] for path in counts}
            drawn = sum(cost[p] * w for p, w in weights.items()) / sum(weights.values())
            shadow = (1 - SAMPLE) * cost["undrawn"] + SAMPLE * drawn
            scale = ""
            if "http" in counts:
                base = counts["http"] - counts["bare"]  # the GET's own, as the primary is free
                scale = f", {(base + shadow) / base:.3f}x the http primary's {base:,.0f}"
            print(f"  {label:<17}: {shadow:+9,.0f} (a drawn call {drawn:+,.0f}){scale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
