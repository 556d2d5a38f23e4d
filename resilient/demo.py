"""The chaos demo: what `resilient` does to P99 and the error rate when a dependency fails.

``resilient demo`` (``main()``) starts a steerable upstream in its own
process (``python -m resilient.testing.upstream``; no other server needed),
drives one open-loop load through two clients at once, a bare
``aiohttp.ClientSession`` with a 2 s timeout (what most code does today) and
``resilient.http.session(timeouts=Timeouts(total=2.0))``, while the upstream
goes through a scenario (healthy, then a brownout and/or an outage, then
healed). It shows live progress, prints a side-by-side table (P50, P99, P999,
success rate, requests that reached the sick upstream, time to trip and to
recover) and writes a PNG plot of latency over time with the breaker's state
shaded.

The engine here is shared with bench/chaos.py, which runs the same
scenarios with more contenders, one at a time:

- ``Scenario``: phases, each an upstream ``Behaviour`` held for some seconds.
- ``Contender``: a name and a way to open a client (``fetch(url) -> status``)
  that reports its breaker's state changes.
- ``run()``: an open-loop schedule (request ``i`` is sent at ``i / rate``
  whatever happened to the others), every request timed from send to the end
  of its body or its error, so failures and rejections count at the time
  they took; hits at the upstream counted per contender (its own path)
  across the fault phases.
- ``summarize()`` and ``plot()``.

Optional packages (rich, matplotlib) are imported where used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import aiohttp

    from resilient.hub import Hub

__all__ = [
    "FAULTS",
    "Contender",
    "Phase",
    "Result",
    "Scenario",
    "Summary",
    "UpstreamProcess",
    "baseline",
    "contender",
    "main",
    "plot",
    "run",
    "scenario",
    "summarize",
]

#: Named fault mixes (``Behaviour`` fields): an outage hangs every request; a
#: brownout hangs a third of them and answers a sixth with 503.
FAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "outage": {"hang": 1.0},
    "brownout": {"hang": 1 / 3, "error": 1 / 6},
}
#: Success windows after the heal are this long (seconds) ...
WINDOW: Final = 0.2
#: ... and count as recovered at this success rate.
RECOVERED: Final = 0.95
#: Seconds to let requests still running at the end of the schedule finish.
DRAIN: Final = 2.5

#: The directory holding this package, for the child process's PYTHONPATH.
_SOURCE: Final = str(Path(__file__).resolve().parents[1])

Fetch = Callable[[str], Awaitable[int]]
StateSink = Callable[[str], None]


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of a scenario: the upstream behaves as ``behaviour`` for ``seconds``."""

    name: str
    seconds: float
    behaviour: Mapping[str, Any]
    fault: bool


@dataclass(frozen=True, slots=True)
class Scenario:
    """Phases run back to back under an open-loop load of ``rate`` requests/s."""

    name: str
    rate: float
    phases: tuple[Phase, ...]

    @property
    def duration(self) -> float:
        return sum(p.seconds for p in self.phases)

    def spans(self) -> list[tuple[Phase, float, float]]:
        """Each phase with its start and end, in seconds from the start."""
        out, at = [], 0.0
        for phase in self.phases:
            out.append((phase, at, at + phase.seconds))
            at += phase.seconds
        return out

    def faults(self) -> list[tuple[float, float]]:
        """The fault periods (consecutive fault phases merged)."""
        merged: list[tuple[float, float]] = []
        for phase, start, end in self.spans():
            if not phase.fault:
                continue
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged


def _mix(fault: str) -> dict[str, Any]:
    """A named fault mix, or ``"hang=0.3,error=0.2"`` (shares, ``status=``, ``retry_after=``)."""
    if fault in FAULTS:
        return dict(FAULTS[fault])
    mix: dict[str, Any] = {}
    for part in fault.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(
                f"fault must be one of {', '.join(FAULTS)}, 'mixed', or shares like "
                f"'hang=0.3,error=0.2'; got {fault!r}"
            )
        try:
            mix[key] = int(value) if key in ("status", "chunks") else float(value)
        except ValueError:
            raise ValueError(f"fault {key} must be a number, got {value.strip()!r}") from None
    return mix


def scenario(
    fault: str = "outage",
    *,
    rate: float = 150.0,
    healthy: float = 4.0,
    faulty: float = 6.0,
    healed: float = 6.0,
    latency: float = 0.002,
) -> Scenario:
    """A scenario: ``healthy`` s, then ``faulty`` s of ``fault``, then ``healed`` s.

    Args:
        fault: ``"outage"``, ``"brownout"``, ``"mixed"`` (a brownout, then an
            outage, half the fault time each) or a custom mix of
            ``Behaviour`` fields such as ``"hang=0.3,error=0.2"``.
        rate: requests per second, open loop.
        latency: the upstream's healthy latency, seconds.

    Raises:
        ValueError: an argument is out of range or the mix is malformed
            (the upstream validates the mix itself when it is installed).
    """
    if not (math.isfinite(rate) and 0 < rate <= 5000):
        raise ValueError(f"rate must be in (0, 5000] requests/s, got {rate!r}")
    for name, value in (("healthy", healthy), ("faulty", faulty), ("healed", healed)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    calm = {"latency": latency}
    middle: tuple[Phase, ...]
    if fault == "mixed":
        middle = (
            Phase("brownout", faulty / 2, {**calm, **FAULTS["brownout"]}, True),
            Phase("outage", faulty / 2, {**calm, **FAULTS["outage"]}, True),
        )
    else:
        name = fault if fault in FAULTS else "fault"
        middle = (Phase(name, faulty, {**calm, **_mix(fault)}, True),)
    phases = (Phase("healthy", healthy, calm, False), *middle, Phase("healed", healed, calm, False))
    return Scenario(f"{fault} @ {rate:g} req/s", rate, phases)


# --------------------------------------------------------------------------- the upstream


class UpstreamProcess:
    """``python -m resilient.testing.upstream`` in a child process, steered over HTTP.

    Needs only the standard library and aiohttp (no mirakuru): the child
    picks a free port and prints its URL. Use as ``async with``.
    """

    def __init__(self, *, seed: int = 1, start_timeout: float = 15.0) -> None:
        self._seed = seed
        self._start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._control: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> UpstreamProcess:
        import aiohttp

        source = _SOURCE
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "resilient.testing.upstream",
            "--port",
            "0",
            "--seed",
            str(self._seed),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert self._proc.stdout is not None
            line = await asyncio.wait_for(self._proc.stdout.readline(), self._start_timeout)
            found = re.search(rb"http://[0-9.]+:[0-9]+", line)
            if found is None:
                raise RuntimeError(f"the upstream did not start: {line!r}")
            self.url = found.group().decode()
            self._control = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._control is not None:
            await self._control.close()
            self._control = None
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def apply(self, behaviour: Mapping[str, Any]) -> None:
        """Install a behaviour (a JSON object of ``Behaviour`` fields)."""
        assert self._control is not None
        async with self._control.post(f"{self.url}/_control", json=dict(behaviour)) as resp:
            if resp.status != 200:
                raise ValueError(f"the upstream refused the behaviour: {await resp.text()}")

    async def hits(self) -> dict[str, int]:
        """Requests received so far, per path."""
        assert self._control is not None
        async with self._control.get(f"{self.url}/_stats") as resp:
            data = await resp.json()
        return {str(k): int(v) for k, v in data["by_path"].items()}


# --------------------------------------------------------------------------- contenders


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


def contender(total: float = 2.0, *, hub: Hub | None = None, name: str = "resilient") -> Contender:
    """``resilient.http.session(timeouts=Timeouts(total=2.0))``, every other setting default.

    With ``hub=None`` a fresh in-memory hub per run, so runs do not share a
    breaker; pass one (with a Redis store or an etcd source) to use it.
    """

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        from resilient.events import StateChanged
        from resilient.http import Timeouts, session
        from resilient.hub import Hub

        own = hub if hub is not None else Hub(namespace="demo")

        def listen(event: object) -> None:
            if isinstance(event, StateChanged):
                state(event.new.value)

        own.add_listener(listen)
        async with session(hub=own, timeouts=Timeouts(total=total)) as s:
            yield lambda url: _read(s, url)

    return Contender(name, open_)


# --------------------------------------------------------------------------- running


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
) -> list[Result]:
    """Run ``scenario`` against a fresh upstream process, all ``contenders`` at once.

    Each contender sends to its own path, so hits are counted per contender.
    Requests still running ``DRAIN`` seconds after the last one was sent are
    cancelled and recorded as ``"unfinished"`` at the time they had taken.
    """
    results = [Result(c.name, scenario) for c in contenders]
    async with UpstreamProcess(seed=seed) as upstream, contextlib.AsyncExitStack() as stack:
        loop = asyncio.get_running_loop()
        origin = 0.0  # set once the clients are open

        def sink(result: Result) -> StateSink:
            return lambda new: result.states.append((loop.time() - origin, new))

        fetches = [
            await stack.enter_async_context(c.open(sink(r)))
            for c, r in zip(contenders, results, strict=True)
        ]
        urls = [f"{upstream.url}/{_slug(c.name)}" for c in contenders]
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
    upstream: UpstreamProcess,
    scenario: Scenario,
    origin: float,
    results: Sequence[Result],
    urls: Sequence[str],
) -> None:
    """Switch the upstream's behaviour at each phase boundary; count hits in each fault phase."""
    loop = asyncio.get_running_loop()
    paths = [url[len(upstream.url) :] for url in urls]
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


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one ``Result`` (latencies in seconds, rates in [0, 1]).

    Attributes:
        trip: seconds from the start of the fault phase in which the breaker
            first opened to that opening (None: it never opened).
        recover: seconds from the heal until every later ``WINDOW`` had at
            least ``RECOVERED`` success (None: it never did).
        after_heal: the worst window's success rate from 1 s after the heal on.
        outside: the share of requests sent outside the fault.
        opened: whether the breaker opened at all.
    """

    name: str
    requests: int
    p50: float
    p99: float
    p999: float
    success: float
    hits: int
    hits_by_phase: Mapping[str, int]
    trip: float | None
    recover: float | None
    after_heal: float
    outside: float
    opened: bool


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _windows(result: Result, start: float, end: float) -> list[float]:
    """Success rate of each ``WINDOW``-long window of send times in ``[start, end)``."""
    count = max(0, int((end - start) / WINDOW + 1e-9))
    sent = [0] * count
    good = [0] * count
    for at, ok in zip(result.sent, result.ok, strict=True):
        if start <= at < start + count * WINDOW:
            i = int((at - start) / WINDOW)
            sent[i] += 1
            good[i] += ok
    return [g / n if n else 1.0 for g, n in zip(good, sent, strict=True)]


def summarize(result: Result) -> Summary:
    """The table's figures for one run of one contender."""
    scenario = result.scenario
    ordered = sorted(result.latency)
    n = len(ordered)
    faults = scenario.faults()
    first, heal = (faults[0][0], faults[-1][1]) if faults else (0.0, 0.0)
    inside = sum(1 for at in result.sent if any(s <= at < e for s, e in faults))
    opened_at = [at for at, state in result.states if state == "open" and at >= first]
    trip = None
    if opened_at:  # from the start of the fault phase it opened in
        starts = [start for phase, start, _ in scenario.spans() if phase.fault]
        trip = opened_at[0] - max(start for start in starts if start <= opened_at[0])
    recover = None
    if faults:
        grid = _windows(result, heal, scenario.duration)
        for k in range(len(grid)):
            if all(rate >= RECOVERED for rate in grid[k:]):
                recover = k * WINDOW
                break
    later = _windows(result, heal + 1.0, scenario.duration) if faults else []
    return Summary(
        name=result.name,
        requests=n,
        p50=_percentile(ordered, 0.50),
        p99=_percentile(ordered, 0.99),
        p999=_percentile(ordered, 0.999),
        success=sum(result.ok) / n if n else math.nan,
        hits=sum(result.hits.values()),
        hits_by_phase=dict(result.hits),
        trip=trip,
        recover=recover,
        after_heal=min(later, default=1.0),
        outside=1.0 - inside / n if n else math.nan,
        opened=any(state == "open" for _, state in result.states),
    )


def rows(summaries: Sequence[Summary]) -> list[list[str]]:
    """The table's cells: a header row, then one row per contender.

    Hits at the sick upstream get a column per fault phase when there are
    several (``mixed``: the brownout's and the outage's).
    """
    phases = list(dict.fromkeys(p for s in summaries for p in s.hits_by_phase))
    hits = [f"hits: {p}" for p in phases] if len(phases) > 1 else ["hits at sick upstream"]
    head = ["client", "P50", "P99", "P999", "success", *hits, "trip", "recover"]

    def counts(s: Summary) -> list[str]:
        if len(phases) > 1:
            return [str(s.hits_by_phase.get(p, 0)) for p in phases]
        return [str(s.hits)]

    return [
        head,
        *(
            [
                s.name,
                _ms(s.p50),
                _ms(s.p99),
                _ms(s.p999),
                f"{s.success:.1%}",
                *counts(s),
                "-" if s.trip is None else f"{s.trip:.2f} s",
                "-" if s.recover is None else f"{s.recover:.1f} s",
            ]
            for s in summaries
        ),
    ]


def _hits(summary: Summary) -> str:
    if len(summary.hits_by_phase) <= 1:
        return str(summary.hits)
    return ", ".join(f"{n} ({phase})" for phase, n in summary.hits_by_phase.items())


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


# --------------------------------------------------------------------------- the plot


def plot(results: Sequence[Result], path: str | Path, *, title: str | None = None) -> Path:
    """Latency over time, one panel per contender, faults and breaker states shaded.

    Needs matplotlib (the ``demo`` extra); uses the Agg backend (no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    target = Path(path)
    fig, axes = pyplot.subplots(
        len(results), 1, figsize=(11, 2.6 * len(results) + 0.8), sharex=True, squeeze=False
    )
    for ax, result in zip(axes[:, 0], results, strict=True):
        scenario = result.scenario
        for phase, start, end in scenario.spans():
            if phase.fault:
                ax.axvspan(start, end, color="0.85", zorder=0)
                ax.text(
                    start + 0.05,
                    1.0,
                    phase.name,
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                    color="0.3",
                )
        for state, start, end in _state_spans(result):
            if state in ("open", "forced_open"):
                ax.axvspan(start, end, color="tab:red", alpha=0.18, zorder=1, lw=0)
            elif state == "half_open":
                ax.axvspan(start, end, color="tab:orange", alpha=0.3, zorder=1, lw=0)
        ms = [max(lat * 1000, 0.05) for lat in result.latency]
        good = [(t, m) for t, m, ok in zip(result.sent, ms, result.ok, strict=True) if ok]
        bad = [(t, m) for t, m, ok in zip(result.sent, ms, result.ok, strict=True) if not ok]
        if good:
            ax.scatter(*zip(*good, strict=True), s=3, color="tab:green", label="success", zorder=2)
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=3, color="tab:red", label="failure", zorder=2)
        summary = summarize(result)
        ax.set_yscale("log")
        ax.set_ylim(0.05, 10_000)
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"{result.name}: P99 {_ms(summary.p99)}, success {summary.success:.1%}, "
            f"hits at the sick upstream: {_hits(summary)}",
            fontsize=10,
            loc="left",
        )
        ax.legend(loc="upper right", fontsize=8, markerscale=3)
    axes[-1, 0].set_xlabel("seconds (grey: upstream faulty; red: breaker open; orange: half-open)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    pyplot.close(fig)
    return target


def _state_spans(result: Result) -> list[tuple[str, float, float]]:
    spans: list[tuple[str, float, float]] = []
    end = result.scenario.duration
    for i, (at, state) in enumerate(result.states):
        until = result.states[i + 1][0] if i + 1 < len(result.states) else end
        spans.append((state, at, until))
    return spans


# --------------------------------------------------------------------------- the command


def main(
    duration: float = 30.0,
    rate: float = 100.0,
    fault: str = "mixed",
    redis: str | None = None,
    etcd: str | None = None,
    plot: str | Path | None = "resilient-demo.png",
    *,
    seed: int = 1,
) -> int:
    """Run the chaos demo; what ``resilient demo`` (and ``make demo``) runs.

    Args:
        duration: seconds of load: 20% healthy, 40% faulty, 40% healed.
        rate: requests per second sent to *each* client, open loop.
        fault: ``"mixed"`` (a brownout, then an outage), ``"outage"``,
            ``"brownout"``, or shares such as ``"hang=0.3,error=0.2"``.
        redis: a Redis URL: the breakers share their state there.
        etcd: an etcd URL: the breakers read their config from
            ``/resilient/demo`` there (push one with ``resilient config push``).
        plot: where to write the PNG (``None``: no plot).
        seed: seeds the upstream's fault draws.

    Returns:
        0 on success, 1 on invalid input.
    """
    from rich.console import Console

    console = Console(width=max(100, Console().width))
    try:
        chosen = scenario(
            fault, rate=rate, healthy=0.2 * duration, faulty=0.4 * duration, healed=0.4 * duration
        )
    except ValueError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1
    try:
        return asyncio.run(_demo(console, chosen, redis, etcd, plot, seed))
    except ValueError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1


async def _demo(
    console: Any,
    chosen: Scenario,
    redis: str | None,
    etcd: str | None,
    plot_path: str | Path | None,
    seed: int,
) -> int:
    from rich.live import Live
    from rich.table import Table

    from resilient.hub import Hub

    store: Any = None
    source: Any = None
    if redis is not None:
        from resilient.stores import RedisStore

        store = RedisStore(redis)
    if etcd is not None:
        from resilient.config import EtcdSource

        source = EtcdSource(etcd, prefix="/resilient/demo")
    hub = Hub(namespace="demo", store=store, config=source)
    await hub.start()
    console.print(
        f"[bold]resilient demo[/bold]: {chosen.name}, "
        + ", ".join(f"{p.name} {p.seconds:g}s" for p in chosen.phases)
    )

    def live_table(elapsed: float, phase: str, results: Sequence[Result]) -> Table:
        table = Table(title=f"{elapsed:5.1f} s / {chosen.duration:g} s  upstream: {phase}")
        for column in ("client", "sent", "in flight", "success (last 1 s)", "breaker"):
            table.add_column(column)
        for r in results:
            recent = [ok for at, ok in zip(r.sent, r.ok, strict=True) if at >= elapsed - 1.5]
            rate = f"{sum(recent) / len(recent):.0%}" if recent else "-"
            state = r.states[-1][1] if r.states else ("closed" if r.name == "resilient" else "-")
            table.add_row(r.name, str(len(r.sent)), str(r.running), rate, state)
        return table

    try:
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            results = await run(
                chosen,
                [baseline(), contender(hub=hub)],
                seed=seed,
                on_tick=lambda e, p, rs: live.update(live_table(e, p, rs)),
            )
    finally:
        await hub.close()
    summaries = [summarize(r) for r in results]
    table = Table(title=f"chaos demo: {chosen.name}")
    cells = rows(summaries)
    for column in cells[0]:
        left = column == "client"
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for row in cells[1:]:
        table.add_row(*row)
    console.print(table)
    base, ours = summaries
    if base.p99 > 0:
        console.print(
            f"P99 {1 - ours.p99 / base.p99:.0%} lower with resilient; success "
            f"{ours.success:.1%} vs {base.success:.1%}; "
            f"requests that reached the sick upstream: {_hits(ours)} vs {_hits(base)}."
        )
    if base.success > ours.success:
        console.print(
            "(aiohttp's success counts requests held through the outage and answered "
            "when the upstream healed, up to 2 s late; resilient had failed them fast.)"
        )
    if plot_path is not None:
        written = plot(results, plot_path, title=f"resilient demo: {chosen.name}")
        console.print(f"plot written to {written}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
