"""Fleet-wide manual control: from the write to the state in force in every process.

    python -m bench.fleet_control [--processes 4] [--changes 50] [--url URL | --cluster]

A real redis-server on loopback (``resilient.testing.servers.RedisServer``,
unless ``--url`` names one; ``--cluster``: a Redis Cluster of 3 masters and
3 replicas, ``resilient.testing.clusters.RedisCluster``, where a change is
the script on the breaker's slot, then its audit entry on the stream's).
``--processes`` processes each run a sync ``Hub`` with a ``RedisStore``
(default sync interval) sharing breaker ``dep``, and report through a queue
the wall time at which each breaker's ``StateChanged`` arrived. The bench
makes ``--changes`` changes through the API the CLI and the dashboard call
(``_control.apply_change``: one script, audited), cycling force-open,
disable, reset, and times each from just before the call to the last
process having it in force. Target: p99 <= 100 ms. Bounded: every step
has a timeout, and the run stops itself.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import statistics
import time
from collections.abc import Iterator
from typing import Any

from bench.redis_store import quantile, redis_url

STEP_TIMEOUT = 10.0  # seconds any step may take before the run fails
CYCLE = (("force-open", "forced_open"), ("disable", "disabled"), ("reset", "closed"))


def worker(url: str, ready: Any, seen: Any, stop: Any) -> None:
    from resilient import Hub
    from resilient.events import StateChanged
    from resilient.stores.redis import RedisStore

    with Hub("bench-control", store=RedisStore(url)) as hub:
        br = hub.breaker("dep")
        br(lambda: 1)()

        def listener(event: object) -> None:
            if isinstance(event, StateChanged):
                seen.put((event.new.value, time.time()))

        br.add_listener(listener)
        ready.put(True)
        stop.wait(600)  # bounded even if the parent dies


@contextlib.contextmanager
def _server(url: str | None, cluster: bool) -> Iterator[str]:
    if not cluster:
        with redis_url(url) as (found, _):
            yield found
        return
    from resilient.testing.clusters import RedisCluster

    with RedisCluster() as started:
        yield started.url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--changes", type=int, default=50)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help="a Redis of yours (default: start one)")
    where.add_argument("--cluster", action="store_true", help="start a Redis Cluster instead")
    args = parser.parse_args(argv)
    from resilient.stores import _control

    ctx = mp.get_context("spawn")
    with _server(args.url, args.cluster) as url:
        ready, stop = ctx.Queue(), ctx.Event()
        seen = [ctx.Queue() for _ in range(args.processes)]
        procs = [ctx.Process(target=worker, args=(url, ready, q, stop)) for q in seen]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                ready.get(timeout=STEP_TIMEOUT * 3)
            lags = []
            with _control.connect(url) as client:
                time.sleep(0.3)  # the first flushes: the fleet has a state of `dep`
                for i in range(args.changes):
                    action, state = CYCLE[i % len(CYCLE)]
                    start = time.time()
                    _control.apply_change(client, "bench-control", "dep", action,
                                          reason=f"bench {i}", actor="bench@loopback")  # fmt: skip
                    last = 0.0
                    for q in seen:
                        while True:
                            new, at = q.get(timeout=STEP_TIMEOUT)
                            if new == state:
                                last = max(last, at)
                                break
                    lags.append(last - start)
                    time.sleep(0.05)
        except queue.Empty:
            raise SystemExit("a process did not apply a change within 10 s") from None
        finally:
            stop.set()
            for p in procs:
                p.join(STEP_TIMEOUT)
                if p.is_alive():
                    p.kill()
    ms = [lag * 1000 for lag in lags]
    p99 = quantile(ms, 0.99)
    print(
        f"manual change in force in all {args.processes} processes ({len(ms)} changes"
        f"{', Redis Cluster' if args.cluster else ''}): "
        f"p50 {statistics.median(ms):.1f} ms  p99 {p99:.1f} ms  max {max(ms):.1f} ms"
    )
    print(f"  target p99 <= 100 ms: {'met' if p99 <= 100 else 'MISSED'}")


if __name__ == "__main__":
    main()
