"""Overhead of retry and of a Policy, beside tenacity, stamina and asyncio.timeout, in one run.

    python -m bench.policy_overhead [--calls 200000] [--repeats 7]

Success path: each contender wraps the same trivial function; its overhead is
the time per call minus a bare call's, best of ``--repeats`` rounds (the least
disturbed round on a shared, noisy machine). Contenders run round-robin in
one process, so the ratios hold even when absolute figures drift. Every loop
runs inside one ``deadline(3600)`` entered before it, as a request's edge
would: the policies read it on every call, the peers ignore it.

Contenders:

- ``retry``: ``resilient.retry()`` alone (defaults: 3 attempts, OSError).
- ``policy``: ``Policy(breaker=CircuitBreaker(...), retry=retry())``, under
  the deadline: the "deadline + retry + breaker" of the targets.
- ``policy+timeout`` (async): the same plus ``timeout=1.0`` per attempt.
- ``tenacity``: ``tenacity.retry`` with the same stop/retry/backoff.
- ``stamina``: ``stamina.retry(on=OSError, attempts=3)``.
- ``asyncio.timeout``: ``async with asyncio.timeout(1.0)`` around the call.

Failure path: the function fails every other call (one OSError, then a
success on the retry), with zero waits: what a retry costs when it happens.
Tenacity gets a no-op sleep as ours skips zero waits; stamina cannot take one,
so its figure includes a ``sleep(0)``.

Targets (docs/benchmarks.md): policy <= 1/8 of tenacity's retry alone, sync
and async; policy+timeout <= asyncio.timeout alone + 1.5 us.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import stamina
import tenacity

from resilient.breaker import CircuitBreaker
from resilient.config import BreakerConfig
from resilient.deadline import deadline
from resilient.policy import Policy
from resilient.retry import retry

EDGE_BUDGET = 3600.0  # the deadline entered once around each loop
# Half the calls of the failure path fail: a threshold of 1.0 keeps the breaker closed.
NEVER_TRIPS = BreakerConfig(failure_rate_threshold=1.0)
SLOW_PEERS = ("tenacity", "stamina")  # timed on a tenth of the calls: same precision
FULL_JITTER = tenacity.wait_random_exponential(multiplier=0.1, max=5.0)  # as retry()'s default


def sync_target() -> int:
    return 1


async def async_target() -> int:
    return 1


def alternating() -> Callable[[], int]:
    """A function failing every other call with OSError: one failure and one retry per call."""
    fail = False

    def call() -> int:
        nonlocal fail
        fail = not fail
        if fail:
            raise OSError("transient")
        return 1

    return call


def alternating_async() -> Callable[[], Awaitable[int]]:
    call = alternating()

    async def acall() -> int:
        return call()

    return acall


def no_sleep(seconds: float) -> None:
    return None


async def no_sleep_async(seconds: float) -> None:
    return None


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def tenacity_retry(wait: Any, sleep: Callable[[float], Any] | None = None) -> Decorator:
    """tenacity configured as ``resilient.retry()`` is: 3 attempts, on OSError."""
    extra: dict[str, Any] = {} if sleep is None else {"sleep": sleep}
    return cast(
        "Decorator",
        tenacity.retry(
            stop=tenacity.stop_after_attempt(3),
            retry=tenacity.retry_if_exception_type(OSError),
            wait=wait,
            reraise=True,
            **extra,
        ),
    )


def zero_wait_stamina() -> Decorator:
    return stamina.retry(on=OSError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)


def policy(name: str, timeout: float | None = None) -> Policy:
    return Policy(breaker=CircuitBreaker(name, NEVER_TRIPS), retry=retry(), timeout=timeout)


def zero_wait(state: object) -> float:
    return 0.0


# -- contenders --------------------------------------------------------------------------


def sync_success() -> dict[str, Callable[[], object]]:
    return {
        "bare": sync_target,
        "retry": retry()(sync_target),
        "policy": policy("bench-sync")(sync_target),
        "tenacity": tenacity_retry(FULL_JITTER)(sync_target),
        "stamina": stamina.retry(on=OSError, attempts=3)(sync_target),
    }


async def _under_asyncio_timeout() -> int:
    async with asyncio.timeout(1.0):
        return await async_target()


def async_success() -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "bare": async_target,
        "retry": retry()(async_target),
        "policy": policy("bench-async")(async_target),
        "policy+timeout": policy("bench-async-timeout", timeout=1.0)(async_target),
        "asyncio.timeout": _under_asyncio_timeout,
        "tenacity": tenacity_retry(FULL_JITTER)(async_target),
        "stamina": stamina.retry(on=OSError, attempts=3)(async_target),
    }


def sync_failure() -> dict[str, Callable[[], object]]:
    fast = retry(wait=zero_wait)
    return {
        "retry": fast(alternating()),
        "policy": Policy(breaker=CircuitBreaker("bench-sync-fail", NEVER_TRIPS), retry=fast)(
            alternating()
        ),
        "tenacity": tenacity_retry(tenacity.wait_none(), no_sleep)(alternating()),
        "stamina": zero_wait_stamina()(alternating()),
    }


def async_failure() -> dict[str, Callable[[], Awaitable[object]]]:
    fast = retry(wait=zero_wait)
    return {
        "retry": fast(alternating_async()),
        "policy": Policy(breaker=CircuitBreaker("bench-async-fail", NEVER_TRIPS), retry=fast)(
            alternating_async()
        ),
        "tenacity": tenacity_retry(tenacity.wait_none(), no_sleep_async)(alternating_async()),
        "stamina": zero_wait_stamina()(alternating_async()),
    }


# -- timing ------------------------------------------------------------------------------


def per_call_sync(fn: Callable[[], object], calls: int) -> float:
    with deadline(EDGE_BUDGET):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


def per_call_async(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    async def loop() -> float:
        async with deadline(EDGE_BUDGET):
            start = time.perf_counter()
            for _ in range(calls):
                await fn()
            return (time.perf_counter() - start) / calls

    return asyncio.run(loop())


def measure(
    contenders: dict[str, Callable[[], object]],
    timer: Callable[[Callable[[], object], int], float],
    calls: int,
    repeats: int,
) -> dict[str, float]:
    """Best per-call seconds of each contender, rounds interleaved."""
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            n = calls // 10 if name in SLOW_PEERS else calls
            rounds[name].append(timer(fn, n))
    return {name: min(times) for name, times in rounds.items()}


# -- report ------------------------------------------------------------------------------


def report_success(title: str, per_call: dict[str, float]) -> dict[str, float]:
    bare = per_call["bare"]
    overhead = {n: (t - bare) * 1e6 for n, t in per_call.items() if n != "bare"}
    ref = overhead["tenacity"]
    print(f"\n{title} (overhead over a bare call of {bare * 1e6:.3f} us)")
    for name, us in sorted(overhead.items(), key=lambda kv: kv[1]):
        print(f"  {name:16s} {us:8.3f} us/call  {us / ref:6.3f}x tenacity")
    return overhead


def report_failure(title: str, per_call: dict[str, float]) -> None:
    ref = per_call["tenacity"]
    print(f"\n{title} (per call: one failed attempt + one retry that succeeds)")
    for name, t in sorted(per_call.items(), key=lambda kv: kv[1]):
        print(f"  {name:16s} {t * 1e6:8.3f} us/call  {t / ref:6.3f}x tenacity")


def verdict(label: str, value: float, target: float, unit: str) -> None:
    status = "ok" if value <= target else "MISSED"
    print(f"  {label:44s} {value:7.3f}{unit} (target <= {target:g}{unit}) {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    calls, repeats = args.calls, args.repeats
    stamina.instrumentation.set_on_retry_hooks([])  # no log line per retry: time the retry

    print(f"policy overhead, best of {repeats} rounds ({calls} calls sync, {calls // 2} async)")
    sync_ok = report_success(
        "success path, sync", measure(sync_success(), per_call_sync, calls, repeats)
    )
    async_ok = report_success(
        "success path, async",
        measure(async_success(), per_call_async, calls // 2, repeats),  # type: ignore[arg-type]
    )
    report_failure(
        "failure path, sync", measure(sync_failure(), per_call_sync, calls // 4, repeats)
    )
    report_failure(
        "failure path, async",
        measure(async_failure(), per_call_async, calls // 8, repeats),  # type: ignore[arg-type]
    )

    print("\ntargets")
    verdict("policy / tenacity, sync", sync_ok["policy"] / sync_ok["tenacity"], 1 / 8, "x")
    verdict("policy / tenacity, async", async_ok["policy"] / async_ok["tenacity"], 1 / 8, "x")
    extra = async_ok["policy+timeout"] - async_ok["asyncio.timeout"]
    verdict("policy+timeout - asyncio.timeout, async", extra, 1.5, " us")


if __name__ == "__main__":
    main()
