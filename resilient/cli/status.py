"""``resilient status``: the fleet's breaker states, read from Redis.

One idea: what every process sharing a namespace through ``RedisStore`` will
do next, for an operator. It reads (never writes) the keys documented in
docs/formats.md, through the same read-only script the store uses, so the
window totals are the live buckets as of Redis ``TIME``. Exit 0 with the
states (none found is not an error), 1 for a bad URL or name, 3 when Redis is
unreachable or refuses the credentials. The URL's password never appears in
output or errors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resilient.cli._exit import EXIT_INVALID, EXIT_UNREACHABLE, fail

if TYPE_CHECKING:
    import redis

__all__ = ["read_states", "status"]

TIMEOUT = 2.0  # seconds: a CLI may wait longer than a breaker's store


def status(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Breakers to show (default: every breaker of the namespace)."),
    ] = None,
    redis_url: Annotated[
        str,
        typer.Option(
            "--redis",
            envvar="RESILIENT_REDIS",
            show_envvar=True,
            help="Redis URL (rediss:// for TLS).",
        ),
    ] = "redis://127.0.0.1:6379/0",
    namespace: Annotated[
        str,
        typer.Option(envvar="RESILIENT_NAMESPACE", show_envvar=True, help="The hubs' namespace."),
    ] = "default",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Show breaker states shared through Redis (state, window, trips, why)."""
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from resilient.stores import _lua
    from resilient.stores.redis import redact_url, scrub, url_secrets

    where, secrets = redact_url(redis_url), url_secrets(redis_url)
    try:
        for name in [namespace, *(names or [])]:
            _lua.keys_for(namespace, name)
        client = redis_py.Redis.from_url(
            redis_url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    except ValueError as exc:
        fail(EXIT_INVALID, scrub(str(exc), secrets))
    try:
        with client:
            rows = read_states(client, namespace, names)
    except (redis_py.RedisError, OSError) as exc:
        message = scrub(f"{type(exc).__name__}: {exc}", secrets)
        fail(EXIT_UNREACHABLE, f"Redis at {where} unreachable or refusing: {message}")
    if json_out:
        typer.echo(json.dumps({"namespace": namespace, "breakers": rows}))
        return
    if not rows:
        typer.echo(f"no breaker state in namespace {namespace!r} at {where}")
        return
    typer.echo(_table(rows))


def read_states(
    client: redis.Redis, namespace: str, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """The state of each breaker (all of ``namespace`` if ``names`` is None), by name."""
    from resilient.stores import _lua

    if names is None:
        pattern = _lua.state_pattern(namespace)
        found = {
            _lua.name_from_key(namespace, str(key), "state")
            for key in client.scan_iter(match=pattern, count=1000)
        }
        names = sorted(n for n in found if n is not None)
    if not names:
        return []
    sha = client.script_load(_lua.READ)
    pipe = client.pipeline(transaction=False)
    for name in names:
        keys = _lua.keys_for(namespace, name)
        pipe.evalsha(sha, 2, keys.state, keys.window, "")
        pipe.hmget(keys.state, "reason", "changed_at")
    replies = pipe.execute()
    rows = []
    for i, name in enumerate(names):
        view = _lua.parse_reply(replies[2 * i])
        if view is None:
            continue
        reason, changed_at = replies[2 * i + 1]
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
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("NAME", "STATE", "CALLS", "FAIL%", "SLOW%", "TRIPS", "RETRY-AFTER", "REASON")
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
                str(r["trips"]),
                retry,
                r["reason"] or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
