"""Running a scenario: contenders under one open-loop load, each request timed.

- ``Contender``: a name and a way to open a client (``fetch(url) -> status``)
  that reports its breaker's state changes; ``baseline()`` and
  ``contender()`` are the two the demo compares.
- ``run()``: an open-loop schedule (request ``i`` is sent at ``i / rate``
  whatever happened to the others), every request timed from send to the end
  of its body or its error, so failures and rejections count at the time
  they took; hits at the upstream counted per contender (its own path)
  across the fault phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from resilient.demo._scenario import Scenario
from resilient.demo._upstream import AsyncUpstreamProcess

if TYPE_CHECKING:
    import aiohttp

    from resilient.hub import Hub

__all__ = [
    "Contender",
    "Fetch",
    "Result",
    "StateSink",
    "baseline",
    "contender",
    "listened",
    "run",
]

#: Seconds to let requests still running at the end of the schedule finish.
DRAIN: Final = 2.5

Fetch = Callable[[str], Awaitable[int]]
StateSink = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Contender:
    """A client under test.

    ``open(state)`` is an async context manager yielding ``fetch(url) ->
    status`` (raising on failure); it calls ``state(new)`` whenever its
    breaker (if any) changes state (``"open"``, ``"half_open"``, ``"closed"``).
    """

    name: str
    open: Callable[[StateSink], contextlib.AbstractAsyncContextManager[Fetch]]


async def _read(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status


def baseline(total: float = 2.0) -> Contender:
    """What most code does today: ``aiohttp.ClientSession(timeout=ClientTimeout(total=2))``."""

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=total)) as s:
            yield lambda url: _read(s, url)

    return Contender("aiohttp", open_)


def contender(
    total: float = 2.0, *, hub: Hub | None = None, name: str = "resilient", **options: Any
) -> Contender:
    """``resilient.http.session(timeouts=Timeouts(total=2.0))``, every other setting default.

    With ``hub=None`` a fresh in-memory hub per run, so runs do not share a
    breaker; pass one (with a Redis store or an etcd source) to use it.
    ``options`` are more ``session()`` arguments (``hedge=``, ``limit=``).
    """

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        from resilient.http import Timeouts, session

        async with session(
            hub=listened(hub, state), timeouts=Timeouts(total=total), **options
        ) as s:
            yield lambda url: _read(s, url)

    return Contender(name, open_)


def listened(hub: Hub | None, state: StateSink) -> Hub:
    """``hub`` (a fresh in-memory one if None) telling ``state`` of its breakers' changes."""
    from resilient.events import StateChanged
    from resilient.hub import Hub

    own = hub if hub is not None else Hub(namespace="demo")

    def listen(event: object) -> None:
        if isinstance(event, StateChanged):
            state(event.new.value)

    own.add_listener(listen)
    return own


@dataclass(slots=True)
class Result:
    """What one contender saw in one run (times in seconds from the run's start)."""

    name: str
    scenario: Scenario
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)  # by fault phase
    running: int = 0

    def record(self, sent: float, latency: float, outcome: str) -> None:
        self.sent.append(sent)
        self.latency.append(latency)
        self.ok.append(outcome == "200")
        self.kind.append(outcome)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "client"


async def run(
    scenario: Scenario,
    contenders: Sequence[Contender],
    *,
    seed: int = 1,
    on_tick: Callable[[float, str, Sequence[Result]], None] | None = None,
    grpc: bool = False,
) -> list[Result]:
    """Run ``scenario`` against a fresh upstream process, all ``contenders`` at once.

    Each contender sends to its own path, so hits are counted per contender.
    With ``grpc=True`` the upstream is the gRPC twin and each contender's
    ``fetch`` is given ``grpc://HOST:PORT/<name>`` (its own service name).
    Requests still running ``DRAIN`` seconds after the last one was sent are
    cancelled and recorded as ``"unfinished"`` at the time they had taken.
    """
    results = [Result(c.name, scenario) for c in contenders]
    async with (
        AsyncUpstreamProcess(seed=seed, grpc=grpc) as upstream,
        contextlib.AsyncExitStack() as stack,
    ):
        loop = asyncio.get_running_loop()
        origin = 0.0  # set once the clients are open

        def sink(result: Result) -> StateSink:
            return lambda new: result.states.append((loop.time() - origin, new))

        fetches = [
            await stack.enter_async_context(c.open(sink(r)))
            for c, r in zip(contenders, results, strict=True)
        ]
        urls = [f"{upstream.base}/{_slug(c.name)}" for c in contenders]
        await upstream.apply(scenario.phases[0].behaviour)
        origin = loop.time() + 0.05
        steering = asyncio.create_task(_steer(upstream, scenario, origin, results, urls))
        tasks: set[asyncio.Task[None]] = set()
        ticker = asyncio.create_task(_tick(scenario, origin, results, on_tick))
        try:
            await _load(scenario, origin, fetches, urls, results, tasks)
            await steering
            if tasks:
                await asyncio.wait(tasks, timeout=DRAIN)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        finally:
            ticker.cancel()
            steering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            with contextlib.suppress(asyncio.CancelledError):
                await steering
    return results


async def _load(
    scenario: Scenario,
    origin: float,
    fetches: Sequence[Fetch],
    urls: Sequence[str],
    results: Sequence[Result],
    tasks: set[asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    count = int(scenario.duration * scenario.rate)
    for i in range(count):
        at = origin + i / scenario.rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for fetch, url, result in zip(fetches, urls, results, strict=True):
            task = asyncio.create_task(_one(fetch, url, result, at - origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _one(fetch: Fetch, url: str, result: Result, sent: float) -> None:
    started = time.perf_counter()
    result.running += 1
    outcome = "unfinished"
    try:
        outcome = str(await fetch(url))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome = type(exc).__name__
    finally:
        result.running -= 1
        result.record(sent, time.perf_counter() - started, outcome)


async def _steer(
    upstream: AsyncUpstreamProcess,
    scenario: Scenario,
    origin: float,
    results: Sequence[Result],
    urls: Sequence[str],
) -> None:
    """Switch the upstream's behaviour at each phase boundary; count hits in each fault phase."""
    loop = asyncio.get_running_loop()
    paths = [url[len(upstream.base) :] for url in urls]
    before: dict[str, int] | None = None
    current = scenario.phases[0]
    for phase, start, _ in scenario.spans()[1:]:
        await asyncio.sleep(max(0.0, origin + start - loop.time()))
        if before is not None:  # the fault phase ending now: count its hits
            after = await upstream.hits()
            for result, path in zip(results, paths, strict=True):
                gained = after.get(path, 0) - before.get(path, 0)
                result.hits[current.name] = result.hits.get(current.name, 0) + gained
            before = None
        await upstream.apply(phase.behaviour)
        if phase.fault:
            before = await upstream.hits()
        current = phase


async def _tick(
    scenario: Scenario,
    origin: float,
    results: Sequence[Result],
    on_tick: Callable[[float, str, Sequence[Result]], None] | None,
) -> None:
    if on_tick is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        elapsed = loop.time() - origin
        phase = next(
            (p.name for p, start, end in scenario.spans() if start <= elapsed < end), "draining"
        )
        on_tick(elapsed, phase, results)
        await asyncio.sleep(0.25)
