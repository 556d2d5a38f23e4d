"""Fleet latency percentiles: four processes' calls, one histogram in Redis, quantiles within 2%.

Each worker process makes calls through a breaker of a hub with a
``RedisStore``; its clock is injected, and each call moves it on by a
duration drawn from a known distribution (seeded per process), so the
durations the breaker measures are exactly the drawn ones. The test draws the
same numbers, and ``resilient status``'s reader must find the fleet's
P50/P99/P999 within 2% of the true nearest-rank quantiles of all the calls.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from resilient.cli.status import read_states
from resilient.testing.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
CALLS = 3000
WORKERS = 4

DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda r: r.lognormvariate(math.log(0.02), 0.8),
    "long tail": lambda r: 0.060 if r.random() < 0.02 else r.uniform(0.0029, 0.0031),
}


def draws(name: str, seed: int) -> list[float]:
    rng = random.Random(f"{name}/{seed}")
    return [DISTRIBUTIONS[name](rng) for _ in range(CALLS)]


async def work(url: str, namespace: str, name: str, seed: int) -> None:
    """One worker process (run as ``python <this file> URL NAMESPACE NAME SEED``)."""
    from resilient import Hub
    from resilient.stores.redis import RedisStore

    now = [1000.0]
    durations = iter(draws(name, seed))

    async def call() -> None:
        now[0] += next(durations)

    hub = Hub(
        namespace,
        store=RedisStore(url, sync_interval=0.05),
        clock=lambda: now[0],
        defaults={"slow_call_duration": 3600.0},
    )
    async with hub:
        guarded = hub.breaker("api")(call)
        for i in range(CALLS):
            await guarded()
            if i % 100 == 0:
                await asyncio.sleep(0.001)  # let the store flush meanwhile
        await asyncio.sleep(1.5)  # a latency send is paced to one a second
    # (closing the hub ran the store's last flush, which sends the rest)


def true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_fleet_percentiles_of_four_processes_are_within_two_percent(
    redis_server: RedisServer, name: str
) -> None:
    namespace = f"latency-{name.replace(' ', '-')}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, redis_server.url, namespace, name, str(seed)], env=env
        )
        for seed in range(WORKERS)
    ]
    try:
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0] * WORKERS
    with redis_server.client(decode_responses=True) as client:
        (row,) = read_states(client, namespace)
    every = [d for seed in range(WORKERS) for d in draws(name, seed)]
    assert row["latency_calls"] == len(every)
    for key, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        truth = true_quantile(every, q)
        assert row[key] == pytest.approx(truth, rel=0.02), key


if __name__ == "__main__":
    url, namespace, name, seed = sys.argv[1:]
    asyncio.run(work(url, namespace, name, int(seed)))


async def test_while_redis_is_away_the_durations_wait_as_a_bounded_sketch(
    redis_server: RedisServer,
) -> None:
    from resilient import Hub
    from resilient.stores.redis import RedisStore

    store = RedisStore(redis_server.url, sync_interval=0.05)
    async with Hub("latency-away", store=store) as hub:
        call = hub.breaker("api")(_nothing)
        breaker: Any = hub.breaker("api")
        await call()
        redis_server.stop()
        for _ in range(600):  # until the store knows Redis is away (30 s at most)
            if breaker.snapshot().degraded:
                break
            await asyncio.sleep(0.05)
        assert breaker.snapshot().degraded
        for _ in range(2000):
            await call()
        for _ in range(600):  # the store's loop runs while it retries (30 s at most)
            if not breaker._durations:
                break
            await asyncio.sleep(0.05)
        assert breaker._durations == []  # taken: no list growing for the outage
        sketch: Any = store._latency["api"]
        assert sketch.count >= 2000  # kept, bounded
        assert len(sketch.counts) < 50  # a few buckets, whatever the number of calls
        redis_server.start()


async def _nothing() -> None:
    return None
