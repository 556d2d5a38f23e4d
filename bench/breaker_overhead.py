"""Success-path (and rejection-path) overhead of a breaker, beside its peers, in one run.

    python -m bench.breaker_overhead [--calls 200000] [--repeats 7]

Each contender wraps the same trivial function; its overhead is the time per
call minus a bare call's, best of ``--repeats`` rounds (the least disturbed
round on a shared, noisy machine). Peers are measured in the same process and
round-robin, so the ratios hold even when absolute figures drift.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiobreaker
import circuitbreaker
import purgatory
import pybreaker

import resilient


def sync_target() -> int:
    return 1


async def async_target() -> int:
    return 1


def time_sync(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_async(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    async def loop() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        return (time.perf_counter() - start) / calls

    return asyncio.run(loop())


def time_rejections(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        with contextlib.suppress(Exception):
            fn()
    return (time.perf_counter() - start) / calls


def sync_contenders() -> dict[str, Callable[[], object]]:
    return {
        "bare": sync_target,
        "resilient": resilient.CircuitBreaker("bench")(sync_target),
        "circuitbreaker": circuitbreaker.circuit(failure_threshold=5)(sync_target),
        "pybreaker": pybreaker.CircuitBreaker()(sync_target),
    }


def async_contenders() -> dict[str, Callable[[], Awaitable[object]]]:
    factory = purgatory.AsyncCircuitBreakerFactory()

    @factory("bench")  # type: ignore[misc]
    async def purgatory_target() -> int:
        return 1

    return {
        "bare": async_target,
        "resilient": resilient.CircuitBreaker("bench-async")(async_target),
        "circuitbreaker": circuitbreaker.circuit(failure_threshold=5)(async_target),
        "aiobreaker": aiobreaker.CircuitBreaker()(async_target),
        "purgatory": purgatory_target,
    }


def rejection_contenders() -> dict[str, Callable[[], object]]:
    ours = resilient.CircuitBreaker("bench-open")
    ours.force_open()
    theirs = pybreaker.CircuitBreaker()
    theirs.open()
    cb = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    cb_fn = cb(sync_target)
    with contextlib.suppress(ZeroDivisionError):
        cb(lambda: 1 / 0)()
    return {
        "resilient": ours(sync_target),
        "circuitbreaker": cb_fn,
        "pybreaker": theirs(sync_target),
    }


def best(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: min(times) for name, times in rounds.items()}


def report(title: str, per_call: dict[str, float], baseline: str | None, ours: str) -> None:
    bare = per_call.get("bare", 0.0)
    print(f"\n{title}")
    overhead = {n: (t - bare) * 1e6 for n, t in per_call.items() if n != "bare"}
    ref = overhead.get(baseline) if baseline else None
    for name, us in sorted(overhead.items(), key=lambda kv: kv[1]):
        ratio = f"  {us / ref:5.2f}x {baseline}" if ref else ""
        print(f"  {name:16s} {us:7.3f} us/call{ratio}")
    if ref:
        print(f"  -> {ours} / {baseline} = {overhead[ours] / ref:.2f} (target <= 0.80)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    sync_fns, async_fns, reject_fns = sync_contenders(), async_contenders(), rejection_contenders()
    sync_rounds: dict[str, list[float]] = {n: [] for n in sync_fns}
    async_rounds: dict[str, list[float]] = {n: [] for n in async_fns}
    reject_rounds: dict[str, list[float]] = {n: [] for n in reject_fns}
    for _ in range(args.repeats):
        for name, fn in sync_fns.items():
            sync_rounds[name].append(time_sync(fn, args.calls))
        for name, afn in async_fns.items():
            async_rounds[name].append(time_async(afn, args.calls // 2))
        for name, fn in reject_fns.items():
            reject_rounds[name].append(time_rejections(fn, args.calls // 10))

    print(f"breaker overhead, best of {args.repeats} rounds of {args.calls} calls")
    report("success path, sync", best(sync_rounds), "circuitbreaker", "resilient")
    report("success path, async", best(async_rounds), "circuitbreaker", "resilient")
    rejections = best(reject_rounds)
    print("\nrejection path, sync (time per rejected call, raise and catch included)")
    for name, t in sorted(rejections.items(), key=lambda kv: kv[1]):
        print(f"  {name:16s} {t * 1e6:7.3f} us/call")


if __name__ == "__main__":
    main()
