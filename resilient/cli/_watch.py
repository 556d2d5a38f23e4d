"""``resilient status --watch``: the fleet's breakers as a live table.

One idea: ``resilient status``'s rows (``read_fleet``) and their cells, redrawn every
``interval`` seconds with rich. In a terminal the table is redrawn in place
(``rich.live.Live``); anywhere else (a pipe, a log, a test) each refresh is
printed after the last, so the output reads as a log of refreshes.

Redis away after the first read is shown, not fatal: the last rows stay,
dimmed, under a title naming the error (its password scrubbed) and since
when; reads go on every ``interval`` and the table is live again once Redis
answers. Redis away at the start exits 3 like ``status``. Ctrl-C ends the
watch with exit 0; ``count`` ends it after that many refreshes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from resilient.cli._redis import redis_client

if TYPE_CHECKING:
    import redis
    from rich.console import RenderableType

__all__ = ["fleet_line", "ms", "procs_cell", "render", "watch", "why"]

Rows = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (breakers, processes)
Reader = Callable[["redis.Redis", str, "list[str] | None"], Rows]

COLOURS: Final = {
    "closed": "green",
    "open": "bold red",
    "half_open": "yellow",
    "forced_open": "bold magenta",
    "disabled": "cyan",
}
PROCESSES_SHOWN: Final = 10  # processes in trouble listed under the table at most
RECOVERED: Final = 300.0  # seconds a process that came back from an outage stays listed
WIDTH: Final = 200  # columns when the output is not a terminal (nothing to measure)


def watch(
    redis_url: str,
    namespace: str,
    names: list[str] | None,
    interval: float,
    count: int | None,
    *,
    read: Reader,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Refresh the table every ``interval`` seconds, ``count`` times (None: until Ctrl-C).

    ``read``: ``resilient.cli.status.read_fleet`` (passed in: status imports this module).
    """
    import redis as redis_py
    from rich.console import Console
    from rich.live import Live

    from resilient.stores.redis import redact_url, scrub, url_secrets

    where, secrets = redact_url(redis_url), url_secrets(redis_url)
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDTH)
    with redis_client(redis_url, namespace, names or []) as client:
        rows, processes = read(client, namespace, names)  # unreachable now: exit 3
        error: str | None = None
        down_since: float | None = None
        done = 0
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        try:
            if live is not None:
                live.start()
            while True:
                view = render(rows, processes, namespace, where, error, down_since)
                if live is not None:
                    live.update(view, refresh=True)
                else:
                    console.print(view)
                done += 1
                if count is not None and done >= count:
                    return
                sleep(interval)
                try:
                    rows, processes = read(client, namespace, names)
                    error = down_since = None
                except (redis_py.RedisError, OSError) as exc:
                    error = scrub(f"{type(exc).__name__}: {exc}", secrets)
                    down_since = down_since or time.time()
        except KeyboardInterrupt:
            return
        finally:
            if live is not None:
                live.stop()


def render(
    rows: list[dict[str, Any]],
    processes: list[dict[str, Any]],
    namespace: str,
    where: str,
    error: str | None = None,
    down_since: float | None = None,
) -> RenderableType:
    """One refresh: the breakers, then the processes in trouble."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S")
    if error is None:
        title = f"namespace {namespace!r} at {where}, {stamp}"
    else:
        since = time.strftime("%H:%M:%S", time.localtime(down_since))
        title = f"[bold red]Redis at {where} unreachable since {since}[/]: {error} (rows as then)"
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for head in ("NAME", "STATE", "CALLS", "FAIL%", "SLOW%", "P50", "P99", "P999", "TRIPS"):
        table.add_column(head, justify="left" if head in ("NAME", "STATE") else "right")
    table.add_column("RETRY-AFTER", justify="right")
    table.add_column("PROCS", justify="right")
    table.add_column("REASON", overflow="fold")
    for r in rows:
        retry = "-" if r["retry_after"] is None else f"{r['retry_after']:.1f}s"
        procs = Text(procs_cell(r), style="yellow" if r.get("processes_degraded") else "")
        table.add_row(
            r["name"],
            Text(r["state"], style=COLOURS.get(r["state"], "")),
            str(r["calls"]),
            f"{r['failure_rate']:.0%}",
            f"{r['slow_call_rate']:.0%}",
            *(ms(r.get(q)) for q in ("p50", "p99", "p999")),
            str(r["trips"]),
            retry,
            procs,
            why(r),
            style="dim" if error is not None else None,
        )
    if not rows:
        table.caption = f"no breaker state in namespace {namespace!r}"
    parts: list[RenderableType] = [table, Text(fleet_line(processes))]
    trouble = [p for p in processes if p["status"] != "ok" or _recovered(p)]
    parts.extend(Text(f"  {_process_line(p)}", style="yellow") for p in trouble[:PROCESSES_SHOWN])
    if len(trouble) > PROCESSES_SHOWN:
        parts.append(Text(f"  ... and {len(trouble) - PROCESSES_SHOWN} more"))
    return Group(*parts)


def _recovered(p: dict[str, Any]) -> bool:
    """Back from an outage of its own within ``RECOVERED`` seconds (Redis time)."""
    ended = p.get("outage_ended_at")
    return ended is not None and p["seen"] + p["age"] - ended < RECOVERED


def _process_line(p: dict[str, Any]) -> str:
    """What an operator needs of one process in trouble."""
    if p["status"] == "silent":
        what = f"silent for {p['age']:.0f}s (cannot reach Redis, or stopped)"
    elif p["status"] == "ok":
        what = "in sync"
    else:
        shown = ", ".join(p["degraded"][:5])
        more = p["degraded_count"] - min(5, len(p["degraded"]))
        what = f"{p['degraded_count']} breaker(s) on local state: {shown}" + (
            f" and {more} more" if more > 0 else ""
        )
    if p.get("outage_seconds") is not None:
        ago = p["seen"] + p["age"] - p["outage_ended_at"]
        what += f"; back from a {p['outage_seconds']:.1f}s outage {ago:.0f}s ago"
    return f"{p['id']}: {what}"


def fleet_line(processes: list[dict[str, Any]]) -> str:
    """One line on the processes: how many, and how many degraded or silent."""
    if not processes:
        return "processes: none announced (none running, or all older than presence)"
    by: dict[str, int] = {}
    for p in processes:
        by[p["status"]] = by.get(p["status"], 0) + 1
    trouble = [f"{by[s]} {s}" for s in ("degraded", "silent") if by.get(s)]
    return f"processes: {len(processes)}" + (f" ({', '.join(trouble)})" if trouble else "")


def procs_cell(row: dict[str, Any]) -> str:
    """The PROCS cell: processes sharing the breaker, and how many on local state."""
    if row.get("processes") is None:
        return "-"
    degraded = row.get("processes_degraded") or 0
    return f"{row['processes']}" + (f" ({degraded} degraded)" if degraded else "")


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}ms" if seconds < 1.0 else f"{seconds:.3g}s"


def why(row: dict[str, Any]) -> str:
    """The REASON cell: an operator's reason and who, when the state is theirs."""
    reason = row["reason"] or "-"
    if row.get("manual_by"):
        return f"{reason}: {row['manual_reason'] or '(no reason given)'} ({row['manual_by']})"
    return reason
