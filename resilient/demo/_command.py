"""``resilient demo``: the scenario through bare aiohttp and resilient, side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resilient.demo._plot import plot as draw
from resilient.demo._run import Contender, Result, baseline, contender, run
from resilient.demo._scenario import Scenario, scenario
from resilient.demo._summary import hits_text, rows, summarize

if TYPE_CHECKING:
    from resilient.hub import Hub

__all__ = ["CLIENTS", "main"]

#: The client libraries the demo can compare through (``--client``).
CLIENTS = ("aiohttp", "httpx", "grpc")


def _contenders(client: str, hub: Hub) -> list[Contender]:
    """The bare client and resilient's, both of the chosen library."""
    if client == "httpx":
        from resilient.demo._httpx import httpx_baseline, httpx_contender

        return [httpx_baseline(), httpx_contender(hub=hub)]
    if client == "grpc":
        from resilient.demo._grpc import grpc_baseline, grpc_contender

        return [grpc_baseline(), grpc_contender(hub=hub)]
    return [baseline(), contender(hub=hub)]


def main(
    duration: float = 30.0,
    rate: float = 100.0,
    fault: str = "mixed",
    redis: str | None = None,
    etcd: str | None = None,
    plot: str | Path | None = "resilient-demo.png",
    *,
    seed: int = 1,
    client: str = "aiohttp",
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
        client: the client library both sides use: ``"aiohttp"`` (a bare
            ``ClientSession`` against ``resilient.http.session``), ``"httpx"``
            (``httpx.AsyncClient`` against ``resilient.httpx.AsyncClient``) or
            ``"grpc"`` (a bare channel against ``resilient.grpc``'s interceptors).

    Returns:
        0 on success, 1 on invalid input.
    """
    from rich.console import Console

    console = Console(width=max(100, Console().width))
    if client not in CLIENTS:
        choices = ", ".join(CLIENTS)
        console.print(f"[red]demo: client must be one of {choices}, got {client!r}[/red]")
        return 1
    try:
        chosen = scenario(
            fault, rate=rate, healthy=0.2 * duration, faulty=0.4 * duration, healed=0.4 * duration
        )
    except ValueError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1
    try:
        return asyncio.run(_demo(console, chosen, redis, etcd, plot, seed, client))
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
    client: str = "aiohttp",
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
            ours = r.name.startswith("resilient")
            state = r.states[-1][1] if r.states else ("closed" if ours else "-")
            table.add_row(r.name, str(len(r.sent)), str(r.running), rate, state)
        return table

    try:
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            results = await run(
                chosen,
                _contenders(client, hub),
                seed=seed,
                grpc=client == "grpc",
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
            f"requests that reached the sick upstream: {hits_text(ours)} vs {hits_text(base)}."
        )
    if base.success > ours.success:
        console.print(
            f"({base.name}'s success counts requests held through the outage and answered "
            "when the upstream healed, up to 2 s late; resilient had failed them fast.)"
        )
    if plot_path is not None:
        written = draw(results, plot_path, title=f"resilient demo: {chosen.name}")
        console.print(f"plot written to {written}")
    return 0
