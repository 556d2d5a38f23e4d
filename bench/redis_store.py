"""RedisStore: success-path cost, Redis commands per second, and cross-process trip latency.

    python -m bench.redis_store [--calls 200000] [--repeats 7] [--trials 100] [--url URL]
                                [--rates 0 100]

A real redis-server on loopback (``resilient.testing.servers.RedisServer``,
unless ``--url`` names one; it must be yours: the bench resets its stats).
Four measurements, peers in the same run:

1. Success-path overhead of a breaker in a sync ``Hub`` whose store is a
   ``RedisStore`` (its flushes running on the hub's thread meanwhile), beside
   the same breaker in a ``MemoryStore`` hub and pybreaker with its
   ``CircuitRedisStorage``; time per call minus a bare call's, best of
   ``--repeats`` round-robin rounds; then the same in async code, the store
   on the calling loop. Target: RedisStore <= 1.3x MemoryStore.
2. Redis commands per second per process, from ``INFO commandstats`` (the
   commands a client sends: those the scripts run inside Redis left out), with
   5 active breakers at full speed and at 50 calls/s each. Target: at most
   one command per active breaker per sync interval (10/s at 100 ms),
   whatever the call rate. pybreaker's commands per call beside it.
3. Trip latency across processes: 3 observer processes and a tripper share
   one breaker; the observers put 9 failures in the fleet window (under
   ``minimum_calls``), the tripper (which has read the fleet's window) adds
   the 10th. Latency is the wall time from the end of that call to each
   observer's ``StateChanged`` to OPEN. One fresh breaker per trial.
   Target: p99 <= 50 ms. (A process that has not heard the fleet's totals
   for a sync interval sees a crossing only at its next flush; the script
   then opens the fleet: at most ``sync_interval`` later.)
4. Every process failing from the same instant (the DESIGN case "4 processes
   whose calls start failing together"), one fresh breaker per trial, for each
   of ``--rates``: 0 means each process fails ``minimum_calls`` calls at once
   (each one's own window crosses with the fleet's, the case where a local
   trip used to wait for the next flush); a rate means each fails that many
   calls a second after a few healthy ones (the fleet's window crosses before
   any one's own). Measured from the first failure anywhere: the fleet's OPEN
   PUBLISHed (a subscriber in the bench), and OPEN in the last process; and
   the same from the fleet's crossing (the failure, by the processes' own
   timestamps, that made the fleet's window cross: the first moment anyone
   could know). Target: p99 <= 50 ms, aim 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.breaker_overhead import sync_target as target
from bench.breaker_overhead import time_sync as per_call

CONFIG = {"minimum_calls": 10, "open_duration": 60.0, "window_size": 10, "buckets": 10}
OBSERVERS = 3
WARM = 2  # healthy calls per process before a paced "together" trial
TIMEOUT = 10.0  # seconds any step of a trial may take before the run fails


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[tuple[str, Any]]:
    """(url, server or None): the given Redis, or a throwaway one of ours."""
    if url is not None:
        yield url, None
        return
    from resilient.testing.servers import RedisServer

    with RedisServer() as server:
        yield server.url, server


# What the fleet scripts call inside Redis: INFO commandstats counts these too, but
# they never cross the network. A client's commands are everything else.
IN_SCRIPTS = {"time", "hmget", "hset", "hdel", "hgetall", "hincrby", "del", "pexpire",
              "persist", "publish", "hget", "hkeys", "xadd", "zadd", "zrangebyscore",
              "zrem", "hexists"}  # fmt: skip
OURS = {"config|resetstat", "info"}  # the bench's own


def command_stats(url: str) -> dict[str, float]:
    import redis

    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): float(v["calls"]) for k, v in info.items()}


def client_commands(stats: dict[str, float], scripts: bool) -> float:
    """Commands sent by clients (leaving out those our scripts run, if ``scripts``)."""
    skip = OURS | (IN_SCRIPTS if scripts else set())
    return sum(n for name, n in stats.items() if name not in skip)


def reset_stats(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.config_resetstat()


# -- 1 and 2: cost on the success path, commands per second ----------------------------------


def overhead(url: str, calls: int, repeats: int) -> dict[str, float]:
    import pybreaker
    import redis

    from resilient import Hub
    from resilient.stores import MemoryStore
    from resilient.stores.redis import RedisStore

    pyredis = redis.Redis.from_url(url)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, pyredis, namespace="bench")
    contenders: dict[str, Callable[[], object]] = {"bare": target}
    with (
        Hub("bench-memory", store=MemoryStore(), defaults=CONFIG) as memory,
        Hub("bench-redis", store=RedisStore(url), defaults=CONFIG) as shared,
    ):
        contenders["MemoryStore"] = memory.breaker("overhead")(target)
        contenders["RedisStore"] = shared.breaker("overhead")(target)
        contenders["pybreaker+Redis"] = pybreaker.CircuitBreaker(state_storage=storage)(target)
        rounds: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                n = calls if "pybreaker" not in name else max(1000, calls // 100)
                rounds[name].append(per_call(fn, n))
        # commands per call: the same loops, counted by Redis
        counts = {}
        for name in ("RedisStore", "pybreaker+Redis"):
            n = 20_000 if name == "RedisStore" else 2_000
            time.sleep(0.3)  # let the last flush of the timing rounds pass
            reset_stats(url)
            start = time.monotonic()
            per_call(contenders[name], n)
            time.sleep(max(0.0, 0.25 - (time.monotonic() - start)))  # one more flush
            stats = command_stats(url)
            counts[name] = client_commands(stats, scripts=name == "RedisStore") / n
    pyredis.close()
    best = {name: min(times) for name, times in rounds.items()}
    bare = best.pop("bare")
    cost = {name: (t - bare) * 1e6 for name, t in best.items()}
    print(f"success path, sync, best of {repeats} rounds of {calls} calls (bare call subtracted)")
    for name, us in cost.items():
        ratio = us / cost["MemoryStore"] if cost["MemoryStore"] > 0 else float("nan")
        extra = f"  {counts[name]:.5f} Redis commands/call" if name in counts else ""
        print(f"  {name:16} {us:9.3f} us/call  {ratio:7.2f}x MemoryStore{extra}")
    target_ok = cost["RedisStore"] <= 1.3 * cost["MemoryStore"]
    print(f"  target RedisStore <= 1.3x MemoryStore: {'met' if target_ok else 'MISSED'}")
    return cost


def overhead_async(url: str, calls: int, repeats: int) -> dict[str, float]:
    """The same, async: both hubs on the loop that makes the calls, which yields
    every 1,000 calls (as a server's loop does between requests), so the
    RedisStore's flushes run in the timed loop."""
    import asyncio

    from resilient import Hub
    from resilient.stores import MemoryStore
    from resilient.stores.redis import RedisStore

    async def atarget() -> int:
        return 1

    async def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        for _ in range(calls // 1000):
            for _ in range(1000):
                await fn()
            await asyncio.sleep(0)
        return (time.perf_counter() - start) / (calls // 1000 * 1000)

    async def run() -> dict[str, float]:
        async with (
            Hub("bench-memory", store=MemoryStore(), defaults=CONFIG) as memory,
            Hub("bench-redis", store=RedisStore(url), defaults=CONFIG) as shared,
        ):
            contenders = {
                "bare": atarget,
                "MemoryStore": memory.breaker("overhead-async")(atarget),
                "RedisStore": shared.breaker("overhead-async")(atarget),
            }
            rounds: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(repeats):
                for name, fn in contenders.items():
                    rounds[name].append(await timed(fn))
        best = {name: min(times) for name, times in rounds.items()}
        bare = best.pop("bare")
        return {name: (t - bare) * 1e6 for name, t in best.items()}

    cost = asyncio.run(run())
    print(f"success path, async, best of {repeats} rounds of {calls} calls (bare call subtracted)")
    for name, us in cost.items():
        print(f"  {name:16} {us:9.3f} us/call  {us / cost['MemoryStore']:7.2f}x MemoryStore")
    return cost


def commands_per_second(url: str, seconds: float) -> None:
    from resilient import Hub
    from resilient.stores.redis import RedisStore

    breakers = 5
    with Hub("bench-rate", store=RedisStore(url), defaults=CONFIG) as hub:
        fns = [hub.breaker(f"rate{i}")(target) for i in range(breakers)]
        for label, gap in (("full speed", 0.0), ("50 calls/s each", 0.02)):
            time.sleep(0.3)
            reset_stats(url)
            calls = 0
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                for fn in fns:
                    fn()
                calls += breakers
                if gap:
                    time.sleep(gap)
            elapsed = time.monotonic() - start
            stats = command_stats(url)
            total = client_commands(stats, scripts=True)
            print(
                f"  {label:16} {calls / elapsed:10.0f} calls/s  {total / elapsed:6.1f} commands/s "
                f"({stats.get('evalsha', 0) / elapsed / breakers:.1f} EVALSHA/s per breaker; "
                f"bound {1 / 0.1:.0f})"
            )


# -- 3 and 4: trip latency across processes --------------------------------------------------


def worker(url: str, commands: Any, events: Any) -> None:
    from resilient import CircuitOpenError, Hub
    from resilient.events import Event, StateChanged
    from resilient.state import State
    from resilient.stores.redis import RedisStore

    def on_event(event: Event) -> None:
        if isinstance(event, StateChanged) and event.new is State.OPEN:
            events.put(("open", event.breaker, time.time()))

    def fail() -> None:
        raise OSError("down")

    def succeed() -> None:
        pass

    with Hub("bench-trip", store=RedisStore(url), defaults=CONFIG) as hub:
        hub.add_listener(on_event)
        events.put(("ready", "", time.time()))
        while True:
            cmd, name, count, *rest = commands.get()
            if cmd == "quit":
                return
            breaker = hub.breaker(name)
            if cmd == "succeed":
                for _ in range(count):
                    breaker(succeed)()
                events.put(("succeeded", name, time.time()))
                continue
            call = breaker(fail)
            if cmd == "fail":
                for _ in range(count):
                    with contextlib.suppress(OSError, CircuitOpenError):
                        call()
                events.put(("failed", name, time.time()))
                continue
            # "together": from the instant ``start`` (wall time), fail ``count``
            # calls at ``rate`` a second (0: as fast as possible), stopping early
            # once rejected; report the time of each failure.
            start, rate = rest
            while time.time() < start:
                time.sleep(0.0005)
            times: list[float] = []
            for i in range(count):
                if rate:
                    with contextlib.suppress(ValueError):
                        time.sleep(start + i / rate - time.time())
                try:
                    call()
                except OSError:
                    times.append(time.time())
                except CircuitOpenError:
                    break
            events.put(("failures", name, times))


class Workers:
    """``OBSERVERS + 1`` worker processes sharing one Redis, and their event queue."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.events: Any = ctx.Queue()
        self.inboxes: list[Any] = [ctx.Queue() for _ in range(OBSERVERS + 1)]
        self.procs = [ctx.Process(target=worker, args=(url, b, self.events)) for b in self.inboxes]

    def __enter__(self) -> Workers:
        for p in self.procs:
            p.start()
        for _ in self.procs:
            expect(self.events, "ready")
        return self

    def __exit__(self, *exc: object) -> None:
        for box in self.inboxes:
            box.put(("quit", "", 0))
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def trip_latency(url: str, trials: int) -> list[float]:
    lags: list[float] = []
    with Workers(url) as w:
        events = w.events
        *observers, tripper = w.inboxes
        for trial in range(trials):
            name = f"trip{trial}"
            for box in observers:  # 3 x 3 failures: under minimum_calls, everywhere
                box.put(("fail", name, 3))
            for _ in observers:
                expect(events, "failed")
            time.sleep(0.25)  # two sync intervals: the fleet holds 9
            tripper.put(("fail", name, 0))  # the tripper reads the fleet's window ...
            expect(events, "failed")
            time.sleep(0.15)
            tripper.put(("fail", name, 1))  # ... so its failure is the fleet's 10th, seen at once
            ends: dict[str, float] = {}
            opens: list[float] = []
            while "failed" not in ends or len(opens) < OBSERVERS + 1:
                kind, _, at = events.get(timeout=TIMEOUT)
                if kind == "failed":
                    ends[kind] = at
                elif kind == "open":
                    opens.append(at)
            opens.sort()
            # the first OPEN is the tripper's own (at once); the rest are the observers'
            lags.extend(at - ends["failed"] for at in opens[1:])
    return lags


class Published:
    """The first fleet OPEN published for each breaker of the bench's namespace, with its time."""

    def __init__(self, url: str) -> None:
        import redis

        from resilient.stores import _lua

        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(_lua.channel_pattern("bench-trip"))
        self._name = lambda channel: _lua.name_from_key("bench-trip", channel, "events")
        self.opened: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        import json

        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is None:
                continue
            at = time.time()
            channel = message["channel"].decode()
            name = self._name(channel)
            if name and json.loads(message["data"])["state"] == "open":
                self.opened.setdefault(name, at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()


def fleet_crossing(healthy: int) -> int:
    """The failure, counted fleet-wide, whose end makes the fleet's window cross
    (after ``healthy`` successes): the first moment the fleet could know."""
    failures = 1
    while not (
        healthy + failures >= CONFIG["minimum_calls"] and failures / (healthy + failures) >= 0.5
    ):
        failures += 1
    return failures


def together_latency(url: str, trials: int, rate: float) -> dict[str, list[float]]:
    """Every process failing from the same instant (4): seconds from the first failure
    to the fleet's OPEN published, and to OPEN in the last process to open.

    ``rate`` 0: each process fails ``minimum_calls`` calls at once (its own window
    crosses with the fleet's); else each fails at ``rate`` calls a second after
    ``WARM`` healthy calls, the fleet's window crossing before any one's own.
    """
    published = Published(url)
    phase = random.Random(trials)
    kinds = ("published", "all open")
    lags: dict[str, list[float]] = {
        k: [] for k in (*kinds, *(f"{k}, from the crossing" for k in kinds))
    }
    count = CONFIG["minimum_calls"] * (1 if rate == 0 else 4)
    crossing = fleet_crossing(0 if rate == 0 else WARM * (OBSERVERS + 1))
    try:
        with Workers(url) as w:
            for trial in range(trials):
                name = f"together{rate:g}-{trial}"
                for box in w.inboxes:  # the breaker exists everywhere; the fleet has heard
                    box.put(("succeed", name, 0 if rate == 0 else WARM))
                for _ in w.inboxes:
                    expect(w.events, "succeeded")
                time.sleep(0.25)  # two sync intervals: every process holds the fleet's view
                # At a random phase of the sync interval: the breakers were made
                # together, so their flushes keep step with the trial's own clock.
                start = time.time() + 0.05 + phase.uniform(0.0, 0.1)
                for box in w.inboxes:
                    box.put(("together", name, count, start, rate))
                failures: list[float] = []
                opens: list[float] = []
                reports = 0
                while reports < len(w.inboxes) or len(opens) < len(w.inboxes):
                    kind, _, payload = w.events.get(timeout=TIMEOUT)
                    if kind == "failures":
                        reports += 1
                        failures.extend(payload)
                    elif kind == "open":
                        opens.append(payload)
                failures.sort()
                first, crossed = failures[0], failures[min(crossing, len(failures)) - 1]
                deadline = time.time() + TIMEOUT
                while name not in published.opened and time.time() < deadline:
                    time.sleep(0.01)
                if name not in published.opened:
                    raise SystemExit(f"{name}: the fleet never opened")
                lags["published"].append(published.opened[name] - first)
                lags["all open"].append(max(opens) - first)
                lags["published, from the crossing"].append(published.opened[name] - crossed)
                lags["all open, from the crossing"].append(max(opens) - crossed)
    finally:
        published.close()
    return lags


def expect(events: Any, kind: str) -> None:
    try:
        got, _, _ = events.get(timeout=TIMEOUT)
    except queue.Empty:
        raise SystemExit(f"a worker did not report {kind!r} within {TIMEOUT} s") from None
    if got != kind:
        raise SystemExit(f"expected {kind!r} from a worker, got {got!r}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="per commands/s phase")
    parser.add_argument("--url", default=None, help="a Redis of yours (default: start one)")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[0.0, 100.0],
        help="per-process failure rates of the 'together' case (0: all at once)",
    )
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {threading.active_count()} thread(s) at start")
    with redis_url(args.url) as (url, _):
        overhead(url, args.calls, args.repeats)
        overhead_async(url, args.calls, args.repeats)
        print("Redis commands per second, one process, 5 active breakers, sync_interval 0.1 s")
        commands_per_second(url, args.seconds)
        lags = trip_latency(url, args.trials)
        together = {rate: together_latency(url, args.trials, rate) for rate in args.rates}
    ms = [lag * 1000 for lag in lags]
    print(
        f"trip seen by other processes ({len(ms)} samples, {args.trials} trips, "
        f"{OBSERVERS} observers): p50 {statistics.median(ms):.1f} ms  "
        f"p99 {quantile(ms, 0.99):.1f} ms  max {max(ms):.1f} ms"
    )
    print(f"  target p99 <= 50 ms: {'met' if quantile(ms, 0.99) <= 50 else 'MISSED'}")
    for rate, found in together.items():
        shape = "at once" if rate == 0 else f"{rate:g} calls/s each after {WARM} healthy"
        print(f"{OBSERVERS + 1} processes failing together ({shape}), {args.trials} trials, "
              "from the first failure:")  # fmt: skip
        for what, values in found.items():
            v = [x * 1000 for x in values]
            print(f"  {what:29} p50 {statistics.median(v):6.1f} ms  "
                  f"p99 {quantile(v, 0.99):6.1f} ms  max {max(v):6.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
