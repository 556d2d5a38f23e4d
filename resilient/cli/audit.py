"""``resilient audit``: who changed which breaker's state for the fleet, when, and why.

One idea: the namespace's audit stream (``resilient:{<namespace>}:audit``,
docs/formats.md), read back oldest first: the last ``--limit`` entries,
``--since`` a time. Read-only. Exit 0 (no entry is not an error), 1 a bad URL
or namespace, 2 a bad ``--since``, 3 Redis unreachable or refusing.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

from resilient.cli._exit import EXIT_USAGE, fail
from resilient.cli._redis import JsonOption, NamespaceOption, RedisOption, redis_client

if TYPE_CHECKING:
    from resilient.stores._control import AuditEntry

__all__ = ["audit"]


def audit(
    redis_url: RedisOption = "redis://127.0.0.1:6379/0",
    namespace: NamespaceOption = "default",
    since: Annotated[
        str | None, typer.Option(help="Only entries since: 15m, 2h, 1d, or an ISO-8601 time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (the latest).")] = 50,
    json_out: JsonOption = False,
) -> None:
    """List the fleet-wide manual changes of a namespace (who, when, why, before, after)."""
    from resilient.cli.reconcile import parse_since
    from resilient.stores import _control

    try:
        since_ts = None if since is None else parse_since(since, time.time())
    except ValueError as exc:
        fail(EXIT_USAGE, str(exc))
    with redis_client(redis_url, namespace) as client:
        entries = _control.read_audit(client, namespace, since=since_ts, limit=limit)
    if json_out:
        doc = {"namespace": namespace, "entries": [e.to_dict() for e in entries]}
        typer.echo(json.dumps(doc))
        return
    if not entries:
        typer.echo(f"no audit entry in namespace {namespace!r}")
        return
    typer.echo(_table(entries))


def _table(entries: list[AuditEntry]) -> str:
    head = ("TIME (UTC)", "ACTOR", "ACTION", "BREAKER", "BEFORE", "AFTER", "REASON")
    lines = [head]
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        before = e.before or "-"
        lines.append((when, e.actor, e.action, e.breaker, before, e.after, e.reason or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
