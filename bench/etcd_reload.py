"""Time from an etcd put to the new threshold in force, in several processes at once.

    python -m bench.etcd_reload [--processes 4] [--puts 200] [--endpoint URL]

A real etcd on loopback (``resilient.testing.servers.EtcdServer``, unless
``--endpoint`` names one) and N worker processes. Each put writes a new
``failure_rate_threshold`` for one breaker; the latency of a worker is the
wall time from just before the put is sent to the moment its breaker reports
``ConfigChanged`` (the new config is then in force: ``update_config`` has
returned). The next put waits until every worker has seen this one, so puts
never overlap.

The peer, measured in the same run: N more processes, each running a bare
aetcd prefix watch that decodes the JSON value (what any watcher pays, with
no hub, no validation and no breaker). The two sets watch their own prefixes
and their puts alternate, so machine noise falls on both alike. Target: p99
<= 50 ms for ``resilient``; the ratio to the peer shows what the hub adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

PREFIX = "/bench/reload"  # contender n watches <PREFIX>/<n>
WARMUP = 5
TIMEOUT = 10.0  # seconds a worker may take to see one put before the run fails


# -- workers (each in its own process) ---------------------------------------------------------


def resilient_worker(prefix: str, endpoint: str, events: Any, stop: Any) -> None:
    asyncio.run(_resilient_worker(prefix, endpoint, events, stop))


async def _resilient_worker(prefix: str, endpoint: str, events: Any, stop: Any) -> None:
    from resilient.config import EtcdSource
    from resilient.events import ConfigChanged, Event
    from resilient.hub import Hub

    def on_event(event: Event) -> None:
        if isinstance(event, ConfigChanged) and event.breaker == "bench":
            events.put((event.new.failure_rate_threshold, time.time()))

    async with Hub("bench", config=EtcdSource(endpoint, prefix=prefix)) as hub:
        hub.add_listener(on_event)
        hub.breaker("bench")
        events.put(("ready", time.time()))
        await asyncio.to_thread(stop.wait)


def aetcd_worker(prefix: str, endpoint: str, events: Any, stop: Any) -> None:
    asyncio.run(_aetcd_worker(prefix, endpoint, events, stop))


async def _aetcd_worker(prefix: str, endpoint: str, events: Any, stop: Any) -> None:
    import aetcd

    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port)) as client:
        watch = await client.watch_prefix(prefix.encode() + b"/")

        async def follow() -> None:
            async for event in watch:
                value = json.loads(event.kv.value)["failure_rate_threshold"]
                events.put((value, time.time()))

        task = asyncio.create_task(follow())
        events.put(("ready", time.time()))
        await asyncio.to_thread(stop.wait)
        await watch.cancel()
        task.cancel()


# -- the driver ---------------------------------------------------------------------------------

CONTENDERS = {"aetcd watch": aetcd_worker, "resilient": resilient_worker}


def run(endpoint: str, processes: int, puts: int) -> dict[str, list[float]]:
    """Every contender's latencies (seconds); their puts alternate, one at a time."""
    import aetcd

    ctx = mp.get_context("spawn")  # no forked gRPC or event-loop state
    stop = ctx.Event()
    queues: dict[str, list[Any]] = {}
    workers = []
    for n, (name, target) in enumerate(CONTENDERS.items()):
        prefix = f"{PREFIX}/{n}"
        queues[name] = [ctx.Queue() for _ in range(processes)]
        workers += [
            ctx.Process(target=target, args=(prefix, endpoint, q, stop), daemon=True)
            for q in queues[name]
        ]
    for w in workers:
        w.start()
    try:
        for q in (q for qs in queues.values() for q in qs):
            assert q.get(timeout=60)[0] == "ready"
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)

        async def drive() -> dict[str, list[float]]:
            latencies: dict[str, list[float]] = {name: [] for name in CONTENDERS}
            async with aetcd.Client(host=host, port=int(port)) as client:
                for i in range(WARMUP + puts):
                    value = round(0.2 + (i % 700) / 1000, 3)  # a new value every put
                    body = json.dumps({"failure_rate_threshold": value}).encode()
                    for n, name in enumerate(CONTENDERS):
                        started = time.time()
                        await client.put(f"{PREFIX}/{n}/breakers/bench".encode(), body)
                        for q in queues[name]:
                            _, seen_at = await asyncio.to_thread(_next_value, q, value)
                            if i >= WARMUP:
                                latencies[name].append(seen_at - started)
            return latencies

        return asyncio.run(drive())
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()


def _next_value(q: Any, value: float) -> tuple[float, float]:
    """The next report of ``value`` from one worker (skipping stale ones)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        try:
            seen = q.get(timeout=max(left, 0.001))
        except queue.Empty:
            raise SystemExit(f"a worker did not see {value} within {TIMEOUT} s") from None
        if seen[0] == value:
            return seen  # type: ignore[no-any-return]


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--endpoint", help="an etcd to use (default: start one on loopback)")
    args = parser.parse_args(argv)

    server = None
    endpoint = args.endpoint
    if endpoint is None:
        from resilient.testing.servers import EtcdServer

        server = EtcdServer().start()
        endpoint = server.endpoint
    try:
        print(f"etcd {endpoint}, {args.processes} processes, {args.puts} puts (+{WARMUP} warm-up)")
        results = run(endpoint, args.processes, args.puts)
    finally:
        if server is not None:
            server.close()

    print(f"{'put -> in force':<16}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
    for name, lat in results.items():
        ms = [x * 1000 for x in lat]
        print(
            f"{name:<16}{len(ms):>6}{pct(ms, 50):>9.2f}{pct(ms, 99):>9.2f}{max(ms):>9.2f}"
            f"{statistics.fmean(ms):>9.2f}"
        )
    ours, peer = results["resilient"], results["aetcd watch"]
    p99 = pct(ours, 99) * 1000
    print(f"resilient / aetcd watch: p50 {pct(ours, 50) / pct(peer, 50):.2f}x, "
          f"p99 {pct(ours, 99) / pct(peer, 99):.2f}x")  # fmt: skip
    ok = p99 <= 50.0
    print(f"target p99 <= 50 ms: {'met' if ok else 'MISSED'} ({p99:.2f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
