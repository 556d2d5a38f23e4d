"""``resilient status``: the fleet's breaker states, read from Redis.

One idea: what every process sharing a namespace through ``RedisStore`` will
do next, for an operator. It reads (never writes) the keys documented in
docs/formats.md, through the same read-only script the store uses, so the
window totals are the live buckets as of Redis ``TIME``, and the processes'
presence entries (``_presence.py``): how many share each breaker, which of
them decide on local state. Exit 0 with the states (none found is not an
error), 1 for a bad URL or name, 2 for a bad option, 3 when Redis is
unreachable or refuses the credentials (with ``--watch``: at the start only;
later it is shown in the table). The URL's password never appears in output
or errors. The live table is in ``cli/_watch.py``.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resilient.cli._redis import JsonOption, NamespaceOption, RedisOption, redis_client
from resilient.cli._watch import fleet_line, ms, procs_cell, why
from resilient.cli._watch import watch as watch_live

if TYPE_CHECKING:
    import redis

    from resilient.sketch import LatencySketch
    from resilient.stores._presence import NamesCache

__all__ = ["read_fleet", "read_states", "status"]

# The state hash's fields a row shows beside the view (docs/formats.md).
_FIELDS = ("reason", "changed_at", "manual_reason", "manual_by", "manual_at", "manual_generation")


def status(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Breakers to show (default: every breaker of the namespace)."),
    ] = None,
    redis_url: RedisOption = "redis://127.0.0.1:6379/0",
    namespace: NamespaceOption = "default",
    json_out: JsonOption = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="A live table, refreshed until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds between refreshes (--watch).")
    ] = 1.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many refreshes (--watch).")
    ] = None,
) -> None:
    """Show breaker states shared through Redis (state, window, trips, processes, why)."""
    from resilient.cli._exit import EXIT_USAGE, fail
    from resilient.stores.redis import redact_url

    if watch and json_out:
        fail(EXIT_USAGE, "--watch shows a table: it does not go with --json")
    if not watch and (count is not None or interval != 1.0):
        fail(EXIT_USAGE, "--interval and --count go with --watch")
    if watch:
        from resilient.stores._presence import NamesCache

        read = functools.partial(read_fleet, names_cache=NamesCache())
        watch_live(redis_url, namespace, names, interval, count, read=read)
        return
    with redis_client(redis_url, namespace, names or []) as client:
        rows, processes = read_fleet(client, namespace, names)
    where = redact_url(redis_url)
    if json_out:
        doc = {"namespace": namespace, "breakers": rows, "processes": processes}
        typer.echo(json.dumps(doc))
        return
    if not rows:
        typer.echo(f"no breaker state in namespace {namespace!r} at {where}")
        return
    typer.echo(_table(rows))
    typer.echo(fleet_line(processes))


def read_states(
    client: redis.Redis,
    namespace: str,
    names: list[str] | None = None,
    *,
    names_cache: NamesCache | None = None,
) -> list[dict[str, Any]]:
    """The state of each breaker (all of ``namespace`` if ``names`` is None), by name."""
    return read_fleet(client, namespace, names, names_cache=names_cache)[0]


def read_fleet(
    client: redis.Redis,
    namespace: str,
    names: list[str] | None = None,
    *,
    names_cache: NamesCache | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The breakers' states (as ``read_states``) and the live processes, by id.

    A row's ``processes`` is the number of live processes that have the
    breaker (None when no process of the namespace has a presence entry),
    ``processes_degraded`` those of them on local state for it (they said
    so, or they are silent). ``names_cache``: for a reader that reads again
    and again, so that a process's names record is read once.
    """
    from resilient.stores import _lua, _presence

    if names is None:
        pattern = _lua.state_pattern(namespace)
        found = {
            _lua.name_from_key(namespace, str(key), "state")
            for key in client.scan_iter(match=pattern, count=1000)
        }
        names = sorted(n for n in found if n is not None)
    seconds, micros = client.time()  # the clock the latency and presence fields were written by
    now = seconds + micros / 1e6
    present = client.hgetall(_presence.presence_key(namespace))
    processes = _presence.with_names(client, namespace, _presence.parse(present, now), names_cache)
    if not names:
        return [], [p.to_dict() for p in processes]
    sha = client.script_load(_lua.READ)
    pipe = client.pipeline(transaction=False)
    for name in names:
        keys = _lua.keys_for(namespace, name)
        pipe.evalsha(sha, 2, keys.state, keys.window, "")
        pipe.hmget(keys.state, *_FIELDS)
        pipe.hgetall(keys.latency)
    replies = pipe.execute()
    rows = []
    for i, name in enumerate(names):
        view = _lua.parse_reply(replies[3 * i])
        if view is None:
            continue
        reason, changed_at, manual_reason, manual_by, manual_at, manual_gen = replies[3 * i + 1]
        sketch = _lua.fleet_latency(replies[3 * i + 2], now)
        sharing, degraded = _presence.counts(processes, name) if present else (None, None)
        if manual_gen != str(view.generation):  # an operator's record of an earlier state
            manual_reason = manual_by = manual_at = None
        calls = view.calls
        rows.append(
            {
                "name": name,
                "state": view.state,
                "open_until": view.open_until,
                "retry_after": (
                    max(0.0, view.open_until - view.now) if view.open_until is not None else None
                ),
                "trips": view.trips,
                "generation": view.generation,
                "calls": calls,
                "failures": view.failures,
                "slow_calls": view.slow,
                "failure_rate": view.failures / calls if calls else 0.0,
                "slow_call_rate": view.slow / calls if calls else 0.0,
                "reason": reason,
                "changed_at": float(changed_at) if changed_at else None,
                "manual_reason": manual_reason,
                "manual_by": manual_by,
                "manual_at": float(manual_at) if manual_at else None,
                **_percentiles(sketch),
                "processes": sharing,
                "processes_degraded": degraded,
            }
        )
    return rows, [p.to_dict() for p in processes]


def _percentiles(sketch: LatencySketch) -> dict[str, float | None]:
    """The fleet's P50/P99/P999 (seconds) over the latency span, and the calls they cover."""
    if not sketch.count:
        return {"latency_calls": 0, "p50": None, "p99": None, "p999": None}
    return {
        "latency_calls": sketch.count,
        "p50": sketch.quantile(0.5),
        "p99": sketch.quantile(0.99),
        "p999": sketch.quantile(0.999),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "NAME", "STATE", "CALLS", "FAIL%", "SLOW%", "P50", "P99", "P999", "TRIPS",
        "RETRY-AFTER", "PROCS", "REASON",
    )  # fmt: skip
    lines = [head]
    for r in rows:
        retry = "-" if r["retry_after"] is None else f"{r['retry_after']:.1f}s"
        lines.append(
            (
                r["name"],
                r["state"],
                str(r["calls"]),
                f"{r['failure_rate']:.0%}",
                f"{r['slow_call_rate']:.0%}",
                *(ms(r.get(q)) for q in ("p50", "p99", "p999")),
                str(r["trips"]),
                retry,
                procs_cell(r),
                why(r),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
