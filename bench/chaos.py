"""The chaos benchmark: four HTTP clients through the same outage, judged against targets.

    python -m bench.chaos [--scenario outage|outage-50|brownout ...] [--stack aiohttp|httpx]
                          [--out DIR]

An upstream on loopback in its own process (``resilient.demo.AsyncUpstreamProcess``)
and an open-loop load, one client at a time (each against a fresh upstream,
so none inherits another's sockets, breaker or counts):

- ``outage``: 150 requests/s; 4 s healthy (2 ms per request), 6 s in which
  every request hangs, 6 s healed.
- ``outage-50``: the same at 50 requests/s with a 10 s outage.
- ``brownout``: 150 requests/s; for 6 s a third of the requests hang and a
  sixth answer 503.

The clients:

- ``aiohttp``: ``ClientSession(timeout=ClientTimeout(total=2))``, the default
  connector: what most code does today, and the baseline of every ratio.
- ``aiohttp+tenacity``: the same, each request in tenacity's ``AsyncRetrying``
  (3 attempts, full-jitter exponential waits from 0.1 s, retrying ``ClientError`` and
  timeouts; ``raise_for_status`` so 5xx are retried).
- ``aiohttp+pybreaker+tenacity``: the same, each attempt through a
  ``pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1)``: far shorter
  than its 60 s default reset, so it can recover within this scenario.
- ``resilient``: ``resilient.http.session(timeouts=Timeouts(total=2.0))``,
  every other setting at its default (a fresh in-memory hub, as the default
  hub is).
- ``resilient+hedge``: the same with ``hedge=hedge("p95")`` (issue 18),
  judged by the same targets and, in the brownout, by P99 <= 0.05x.
- ``resilient+hedge-3x`` (only when asked for with ``--client``): a hedge
  every 10 ms, up to three, with a budget of three hedges per request: what
  that brownout P99 takes, and what it costs the upstream.

With ``--stack httpx`` the same run is made through httpx instead:

- ``httpx``: ``httpx.AsyncClient(timeout=2.0)``, httpx's default pool: the
  baseline of that stack's ratios.
- ``httpx-unlimited``: the same with no pool limit (``Limits(max_connections=None)``):
  a peer whose loop is not spent on httpx's pool queue (hundreds of requests
  wait there in an outage, at a CPU cost quadratic in their number).
- ``resilient-httpx``: ``resilient.httpx.AsyncClient(timeouts=Timeouts(total=2.0))``,
  every other setting at its default.

Latency counts every request, failures and rejections at the time they took.
Targets (resilient against aiohttp, same run): in the outages, P99 <= 0.18x,
success >= the share of requests sent outside the outage minus 8 points,
hits at the hung upstream <= 10%, and from 1 s after the heal on every
200 ms window >= 95% success; in the brownout, P99 <= 0.18x, success at most
5 points under aiohttp's, and the breaker never opens. A PNG of latency over
time (breaker states shaded) is written per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pybreaker
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from resilient import hedge
from resilient.budget import RetryBudget
from resilient.demo import (
    Contender,
    Fetch,
    Scenario,
    StateSink,
    Summary,
    baseline,
    contender,
    plot,
    rows,
    run,
    scenario,
    summarize,
)
from resilient.demo._httpx import httpx_baseline, httpx_contender

TOTAL = 2.0
SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "outage": lambda: scenario("outage", rate=150.0, healthy=4.0, faulty=6.0, healed=6.0),
    "outage-50": lambda: scenario("outage", rate=50.0, healthy=4.0, faulty=10.0, healed=6.0),
    "brownout": lambda: scenario("brownout", rate=150.0, healthy=4.0, faulty=6.0, healed=6.0),
}
RETRIED = (aiohttp.ClientError, asyncio.TimeoutError)


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(3),
        wait=wait_random_exponential(multiplier=0.1, max=1.0),
        retry=retry_if_exception_type(RETRIED),
        reraise=True,
    )


async def _attempt(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        resp.raise_for_status()
        await resp.read()
        return resp.status


def with_tenacity() -> Contender:
    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TOTAL)) as s:

            async def fetch(url: str) -> int:
                async for attempt in _retrying():
                    with attempt:
                        return await _attempt(s, url)
                raise AssertionError("unreachable: reraise=True")

            yield fetch

    return Contender("aiohttp+tenacity", open_)


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, sink: StateSink) -> None:
        self._sink = sink

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._sink(str(new_state.name).replace("-", "_"))


def with_pybreaker() -> Contender:
    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        breaker = pybreaker.CircuitBreaker(
            fail_max=5, reset_timeout=1.0, listeners=[_StateListener(state)]
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TOTAL)) as s:

            async def fetch(url: str) -> int:
                async for attempt in _retrying():
                    # pybreaker has no asyncio API; its context manager
                    # spans the awaited call and counts what escapes it.
                    with attempt, breaker.calling():
                        return await _attempt(s, url)
                raise AssertionError("unreachable: reraise=True")

            yield fetch

    return Contender("aiohttp+pybreaker+tenacity", open_)


CONTENDERS: dict[str, Callable[[], Contender]] = {
    "aiohttp": lambda: baseline(TOTAL),
    "tenacity": with_tenacity,
    "pybreaker": with_pybreaker,
    "resilient": lambda: contender(TOTAL),
    "resilient+hedge": lambda: contender(TOTAL, name="resilient+hedge", hedge=hedge("p95")),
    "resilient+hedge-3x": lambda: contender(
        TOTAL,
        name="resilient+hedge-3x",
        hedge=hedge(0.01, max_extra=3, budget=RetryBudget(ratio=3.0, min_per_second=10.0)),
    ),
}
#: Run only when named with --client.
ON_REQUEST = ("resilient+hedge-3x",)
#: The most a hedged client's brownout P99 may be of the baseline's (issue 18).
HEDGED_BROWNOUT_P99 = 0.05
HTTPX_CONTENDERS: dict[str, Callable[[], Contender]] = {
    "httpx": lambda: httpx_baseline(TOTAL),
    "httpx-unlimited": lambda: httpx_baseline(TOTAL, pool_limit=False),
    "resilient-httpx": lambda: httpx_contender(TOTAL),
}
#: The client library a run goes through: its contenders and the pair judged (baseline, ours).
STACKS: dict[str, tuple[dict[str, Callable[[], Contender]], tuple[str, str]]] = {
    "aiohttp": (CONTENDERS, ("aiohttp", "resilient")),
    "httpx": (HTTPX_CONTENDERS, ("httpx", "resilient-httpx")),
}


def targets(
    name: str, base: Summary, ours: Summary, peer: str = "aiohttp", *, p99_most: float = 0.18
) -> list[tuple[str, bool]]:
    """The targets of a scenario, each with whether ``ours`` met it against ``base`` (``peer``)."""
    ratio = ours.p99 / base.p99 if base.p99 > 0 else float("inf")
    p99 = (f"{ours.name}: P99 {ratio:.3f}x {peer}'s (<= {p99_most:g}x)", ratio <= p99_most)
    if name.startswith("brownout"):
        gap = ours.success - base.success
        return [
            p99,
            (
                f"success {ours.success:.1%} vs {base.success:.1%} (at most 5 points under)",
                gap >= -0.05,
            ),
            (
                "the breaker stayed closed" if not ours.opened else "the breaker opened",
                not ours.opened,
            ),
        ]
    floor = ours.outside - 0.08
    share = ours.hits / base.hits if base.hits else 0.0
    return [
        p99,
        (
            f"success {ours.success:.1%} (>= {floor:.1%}: sent outside the outage - 8 points)",
            ours.success >= floor,
        ),
        (
            f"hits at the hung upstream {ours.hits} = {share:.1%} of {peer}'s {base.hits} (<= 10%)",
            share <= 0.10,
        ),
        (
            f"worst 200 ms window from 1 s after the heal: {ours.after_heal:.1%} (>= 95%)",
            ours.after_heal >= 0.95,
        ),
    ]


def _print_table(title: str, summaries: Sequence[Summary]) -> None:
    cells = rows(summaries)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


async def bench(
    names: Sequence[str],
    who: Sequence[str],
    out: Path,
    *,
    contenders: Mapping[str, Callable[[], Contender]] = CONTENDERS,
    pair: tuple[str, str] = ("aiohttp", "resilient"),
    grpc: bool = False,
    prefix: str = "chaos",
    title: str = "chaos benchmark",
) -> bool:
    """Run each scenario for each contender in ``who``; judge ``pair`` (baseline, ours).

    ``grpc``: the upstream is the gRPC twin (bench/chaos_grpc.py).
    """
    passed = True
    peer, mine = pair
    for name in names:
        chosen = SCENARIOS[name]()
        results = []
        for key in who:
            print(f"  {name}: {key} ...", flush=True)
            results.extend(await run(chosen, [contenders[key]()], grpc=grpc))
        summaries = [summarize(r) for r in results]
        phases = ", ".join(f"{p.name} {p.seconds:g}s" for p in chosen.phases)
        _print_table(f"{name}: {chosen.name}, {phases}", summaries)
        by_name = {s.name: s for s in summaries}
        judged = [(mine, 0.18)]
        for hedged in ("resilient+hedge", "resilient+hedge-3x"):
            most = HEDGED_BROWNOUT_P99 if name.startswith("brownout") else 0.18
            judged.append((hedged, most))
        for client, most in judged:
            if peer not in by_name or client not in by_name:
                continue
            for text, ok in targets(name, by_name[peer], by_name[client], peer, p99_most=most):
                passed &= ok
                print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
        path = plot(results, out / f"{prefix}-{name}.png", title=f"{title}: {chosen.name}")
        print(f"  plot: {path}")
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default: all"
    )
    parser.add_argument(
        "--stack", choices=list(STACKS), default="aiohttp", help="the client library (%(default)s)"
    )
    parser.add_argument(
        "--client",
        action="append",
        choices=[name for contenders, _ in STACKS.values() for name in contenders],
        help="repeatable; default: all of the stack's",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="where the plots go")
    args = parser.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    contenders, pair = STACKS[args.stack]
    who = args.client or [name for name in contenders if name not in ON_REQUEST]
    unknown = [name for name in who if name not in contenders]
    if unknown:
        parser.error(f"--client {', '.join(unknown)}: not of the {args.stack} stack")
    aiohttp_stack = args.stack == "aiohttp"
    passed = asyncio.run(
        bench(
            names,
            who,
            args.out,
            contenders=contenders,
            pair=pair,
            prefix="chaos" if aiohttp_stack else f"chaos-{args.stack}",
            title="chaos benchmark" if aiohttp_stack else f"chaos benchmark over {args.stack}",
        )
    )
    print(f"\nall targets met: {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
