"""A healthy, long-tailed upstream: ``resilient.http.session()``'s tail against bare aiohttp's.

    python -m bench.long_tail [--shape 20x|50x ...] [--seconds 30] [--rate 200] [--rounds 1]

Nothing fails: the upstream (``resilient.demo.AsyncUpstreamProcess``, on
loopback in its own process) answers every request with 200, most in 3 ms
and a few far later (``slow_headers``):

- ``20x``: 2% of requests take 60 ms (20 times the usual answer);
- ``50x``: 1% take 150 ms (50 times).

Two clients, both with every default, run at once in one event loop, each on
its own path of the same upstream and each at ``--rate`` requests/s open
loop (request ``i`` is sent at ``i / rate`` whatever happened to the others),
so the machine's noise falls on both alike:

- ``aiohttp``: ``aiohttp.ClientSession()``;
- ``resilient``: ``resilient.http.session()`` (a fresh in-memory hub).

Every request counts, from the first (the learned limits start from nothing,
as in a process that just started), timed from send to the end of its body.
Reported per client: P50, P99, P999, failures, and the requests that reached
the upstream per request sent (its hits on the client's path; a retry is a
second hit). Targets (issue 22), against aiohttp in the same run:
resilient's P99 and P999 <= 1.05x, and at most 1% extra upstream requests.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from resilient.demo import AsyncUpstreamProcess
from resilient.http import session
from resilient.hub import Hub

#: The usual answer (seconds).
LATENCY = 0.003
#: shape -> (share of slow answers, how long a slow answer takes in all)
SHAPES: dict[str, tuple[float, float]] = {"20x": (0.02, 0.060), "50x": (0.01, 0.150)}
#: Seconds to let the last requests finish.
DRAIN = 2.0

Factory = Callable[[], aiohttp.ClientSession]
CLIENTS: dict[str, Factory] = {
    "aiohttp": aiohttp.ClientSession,
    "resilient": lambda: session(hub=Hub(namespace="bench-long-tail")),
}


@dataclass
class Seen:
    """What one client saw in one round."""

    latency: list[float] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    hits: int = 0

    @property
    def sent(self) -> int:
        return len(self.latency)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank, as the chaos benchmark reports them."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


async def one(s: aiohttp.ClientSession, url: str, seen: Seen) -> None:
    started = time.perf_counter()
    try:
        async with s.get(url) as resp:
            await resp.read()
            if resp.status != 200:
                seen.failed[str(resp.status)] += 1
    except Exception as exc:
        seen.failed[type(exc).__name__] += 1
    seen.latency.append(time.perf_counter() - started)


async def one_round(
    shape: str, seconds: float, rate: float, clients: Mapping[str, Factory] = CLIENTS
) -> dict[str, Seen]:
    """One round of ``shape``: every client at ``rate``, each on its own path of one upstream."""
    share, slow = SHAPES[shape]
    behaviour = {"latency": LATENCY, "slow_headers": share, "header_delay": slow - LATENCY}
    seen = {name: Seen() for name in clients}
    async with AsyncUpstreamProcess(seed=1) as upstream:
        await upstream.apply(behaviour)
        sessions = {name: factory() for name, factory in clients.items()}
        try:
            urls = {name: f"{upstream.url}/{name}" for name in clients}
            loop = asyncio.get_running_loop()
            tasks: set[asyncio.Task[None]] = set()
            origin = loop.time() + 0.05
            for i in range(int(seconds * rate)):
                delay = origin + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                for name, s in sessions.items():
                    task = asyncio.create_task(one(s, urls[name], seen[name]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=DRAIN)
            for task in tasks:
                task.cancel()
            hits = await upstream.hits()
            for name in clients:
                seen[name].hits = hits.get(f"/{name}", 0)
        finally:
            for s in sessions.values():
                await s.close()
    return seen


def print_table(seen: Mapping[str, Seen]) -> None:
    print(f"  {'client':<10} {'P50':>8} {'P99':>8} {'P999':>8} {'sent':>6} {'upstream':>9}  failed")
    for name, s in seen.items():
        p50, p99, p999 = (percentile(s.latency, q) * 1e3 for q in (0.5, 0.99, 0.999))
        print(
            f"  {name:<10} {p50:6.1f}ms {p99:6.1f}ms {p999:6.1f}ms "
            f"{s.sent:6d} {s.hits / s.sent:8.3f}x  {dict(s.failed) or '-'}"
        )


def report(shape: str, seen: dict[str, Seen]) -> bool:
    base, ours = seen["aiohttp"], seen["resilient"]
    print_table(seen)
    passed = True
    for q, label in ((0.99, "P99"), (0.999, "P999")):
        ratio = percentile(ours.latency, q) / percentile(base.latency, q)
        ok = ratio <= 1.05
        passed &= ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {shape}: {label} {ratio:.3f}x aiohttp's (<= 1.05x)")
    extra = ours.hits / ours.sent - 1.0
    ok = extra <= 0.01 and not ours.failed
    passed &= ok
    print(
        f"  [{'PASS' if ok else 'FAIL'}] {shape}: {extra:+.2%} upstream requests, "
        f"{sum(ours.failed.values())} failed (<= +1%, none failed)"
    )
    return passed


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "python -m bench.long_tail",
    doc: str = __doc__,
    clients: Mapping[str, Factory] = CLIENTS,
    judge: Callable[[str, dict[str, Seen]], bool] = report,
) -> int:
    """The command line; bench.hedging runs its own clients and targets through it."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--shape", action="append", choices=list(SHAPES), help="default: all")
    parser.add_argument("--seconds", type=float, default=30.0, help="per round (default 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s per client")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per shape, fresh each")
    args = parser.parse_args(argv)
    passed = True
    for shape in args.shape or list(SHAPES):
        share, slow = SHAPES[shape]
        for n in range(args.rounds):
            print(
                f"{shape}: {share:.0%} of requests take {slow * 1e3:g} ms, the rest "
                f"{LATENCY * 1e3:g} ms; {args.rate:g} req/s per client for {args.seconds:g} s "
                f"(round {n + 1} of {args.rounds})",
                flush=True,
            )
            passed &= judge(shape, asyncio.run(one_round(shape, args.seconds, args.rate, clients)))
    print(f"\nall targets met: {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
