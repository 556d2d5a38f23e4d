"""``resilient breaker force-open|disable|reset NAME``: an operator's state, fleet-wide.

One idea: the incident switch. The command puts a breaker's state in force
in every process sharing the namespace through ``RedisStore`` (they apply it
within milliseconds, and hold it: it survives a Redis restarted empty), and
appends who, when, why, before and after to the namespace's audit stream, in
one script (``resilient.stores._control``; on a Redis Cluster the state
first, then the entry). ``reset`` clears it.

NAME must be a breaker the fleet has a state of, so a typo is caught (exit 1,
with the names it looks like); ``--create`` sets one no process has reported
yet. Exit 0 done, 1 a bad URL, name or an unknown breaker, 2 a bad
``--reason`` or ``--actor``, 3 Redis unreachable or refusing (nothing set),
or, on a Redis Cluster, the change in force but its audit entry not written
(the change is printed on stdout as on success, the error on stderr).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated

import typer

from resilient.cli._exit import EXIT_INVALID, EXIT_UNREACHABLE, EXIT_USAGE, fail
from resilient.cli._redis import JsonOption, NamespaceOption, RedisOption, redis_client

__all__ = ["breaker_app"]

breaker_app = typer.Typer(
    help="Set a breaker's state for the whole fleet, audited (force-open, disable, reset).",
    no_args_is_help=True,
)

_HELP = {
    "force-open": "Reject every call to NAME in every process, until reset.",
    "disable": "Admit every call to NAME in every process and count nothing, until reset.",
    "reset": "Clear an operator's state of NAME: closed, empty window, no backoff, fleet-wide.",
}


def _command(action: str) -> Callable[..., None]:
    def command(
        name: Annotated[str, typer.Argument(help="The breaker, as the fleet names it.")],
        reason: Annotated[
            str, typer.Option(help="Why (printable, at most 200 characters); audited.")
        ] = "",
        actor: Annotated[
            str | None,
            typer.Option(show_default="user@host", help="Who, for the audit stream."),
        ] = None,
        create: Annotated[
            bool, typer.Option("--create", help="Set it even if no process has reported NAME.")
        ] = False,
        redis_url: RedisOption = "redis://127.0.0.1:6379/0",
        namespace: NamespaceOption = "default",
        json_out: JsonOption = False,
    ) -> None:
        from resilient.stores import _control
        from resilient.stores.redis import scrub, url_secrets

        try:
            _control.check_text("--reason", reason)
            if actor is not None:
                _control.check_text("--actor", actor, empty=False)
        except ValueError as exc:
            fail(EXIT_USAGE, str(exc))
        unaudited = None
        with redis_client(redis_url, namespace, [name]) as client:
            try:
                change = _control.apply_change(
                    client, namespace, name, action, reason=reason, actor=actor, create=create
                )
            except ValueError as exc:  # an unknown breaker
                fail(EXIT_INVALID, str(exc))
            except _control.UnauditedChangeError as exc:  # a cluster: in force, not audited
                change, unaudited = exc.change, str(exc)
        if json_out:
            typer.echo(json.dumps({"namespace": namespace, **asdict(change)}))
        else:
            typer.echo(
                f"{name}: {change.before or '(no state)'} -> {change.after} in namespace "
                f"{namespace!r}, fleet-wide (audit entry {change.audit_id or 'NOT written'})"
            )
        if unaudited is not None:
            fail(EXIT_UNREACHABLE, scrub(unaudited, url_secrets(redis_url)))

    command.__doc__ = _HELP[action]
    return command


for _action in _HELP:
    breaker_app.command(_action)(_command(_action))
