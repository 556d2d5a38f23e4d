"""RedisStore: the CPU one flush costs a process, by part.

    python -m bench.flush_cost [--breakers 200] [--active 80] [--rounds 300]
                               [--engines single|cluster]

One ``Hub`` with a ``RedisStore`` (a real redis-server on loopback, or a
Redis Cluster of 3 masters + 3 replicas with ``--engines cluster``) and
``--breakers`` breakers, as one worker of ``bench.soak``. Each round makes one
successful call on each of ``--active`` breakers (round robin), then runs one
flush by hand (the store's own loop is held off by a long ``sync_interval``).
CPU time (``time.process_time``, so a busy machine slows it less than it
slows wall time) per flush, split into the store's parts: collecting the
outboxes (``sync_out`` of every breaker), the round trip through redis-py
(arguments packed, replies parsed; the script's own time is Redis's), and
taking the replies (``sync_in``). The parts are timed by wrapping the store's
private methods on the instance: a bench, not an API.

No target of its own: it tells where a soak worker's CPU goes (issue 20).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

CONFIG = {"minimum_calls": 10, "window_size": 10, "open_duration": 60.0}


async def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    from resilient import Hub
    from resilient.stores.redis import RedisStore

    store = RedisStore(url, sync_interval=1000.0)
    hub = Hub("flushcost", store=store, defaults=CONFIG)
    spent: defaultdict[str, float] = defaultdict(float)

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*a)
            finally:
                spent[part] += time.process_time() - t

        return run

    def timed_async(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(*a: Any) -> Any:
            t = time.process_time()
            try:
                return await fn(*a)
            finally:
                spent[part] += time.process_time() - t

        return run

    async def ok() -> None:
        return None

    async with hub:
        calls = [hub.breaker(f"b{i:04d}")(ok) for i in range(args.breakers)]
        await asyncio.sleep(0.5)
        await store._flush()  # the first: every breaker's READ
        store._collect = timed("collect (sync_out)", store._collect)  # type: ignore[method-assign]
        store._execute = timed_async("redis-py round trip", store._execute)  # type: ignore[method-assign]
        store._take = timed("take (sync_in)", store._take)  # type: ignore[method-assign]
        k = 0
        flushing = calling = 0.0
        for _ in range(args.rounds):
            t = time.process_time()
            for _ in range(args.active):
                await calls[k]()
                k = (k + 1) % len(calls)
            calling += time.process_time() - t
            t = time.process_time()
            await store._flush()
            flushing += time.process_time() - t
            await asyncio.sleep(0.005)
    result = {"flush": flushing / args.rounds, "call": calling / args.rounds / args.active}
    result.update({part: v / args.rounds for part, v in spent.items()})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flush_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--breakers", type=int, default=200)
    parser.add_argument("--active", type=int, default=80, help="breakers with news per flush")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--engines", choices=["single", "cluster"], default="single")
    args = parser.parse_args(argv)
    if args.engines == "cluster":
        from resilient.testing.clusters import RedisCluster

        with RedisCluster() as cluster:
            got = asyncio.run(measure(cluster.url, args))
    else:
        from resilient.testing.servers import RedisServer

        with RedisServer() as server:
            got = asyncio.run(measure(server.url, args))
    from redis.utils import HIREDIS_AVAILABLE

    parser_name = "hiredis" if HIREDIS_AVAILABLE else "redis-py's Python packer and parser"
    print(
        f"flush of {args.active} breakers with news (of {args.breakers}), {args.engines}, "
        f"{parser_name}: {got.pop('flush') * 1e6:.0f} us CPU; a call {got.pop('call') * 1e6:.1f} us"
    )
    for part, value in got.items():
        print(f"  {part}: {value * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
