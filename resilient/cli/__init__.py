"""The ``resilient`` command line (also ``python -m resilient``).

One idea: a thin shell that scripts can rely on. Commands never prompt, print
data on stdout and diagnostics on stderr, and end with one of these codes:

====  ==========================================================
0     done
1     invalid input (a config file, a value in etcd, a missing demo)
2     usage (unknown option, bad option value)
3     a server (etcd, Redis) unreachable, or refusing the connection
4     a push refused because etcd changed under it (nothing written)
5     a gate failed (``reconcile --fail-above``: a rate above the limit)
====  ==========================================================

Connection settings come from options or the environment: ``RESILIENT_ETCD``,
``RESILIENT_PREFIX`` (and ``RESILIENT_REDIS``, ``RESILIENT_NAMESPACE`` for the
commands that read Redis). Startup stays light: a command imports what it
needs (etcd client, YAML, JSON Schema, the demo) when it runs, so ``resilient
--help`` loads typer and nothing else.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from resilient.cli._exit import (
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    fail,
)

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "app",
    "fail",
    "main",
]

app = typer.Typer(
    name="resilient",
    help="Resilience middleware toolkit: breakers, deadlines, live config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # a plain traceback, never local variables (secrets)
)


def _version(value: bool) -> None:
    if value:
        from resilient import __version__

        typer.echo(f"resilient {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Resilience middleware toolkit: breakers, deadlines, live config."""


class DemoClient(enum.StrEnum):
    """``resilient demo --client``: the client library (resilient.demo.CLIENTS)."""

    aiohttp = "aiohttp"
    httpx = "httpx"
    grpc = "grpc"


@app.command()
def demo(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of load.")] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="Requests per second per client.")] = 100.0,
    fault: Annotated[
        str, typer.Option(help="mixed, outage, brownout, or shares like hang=0.3,error=0.2.")
    ] = "mixed",
    redis: Annotated[
        str | None,
        typer.Option(envvar="RESILIENT_REDIS", help="Share breaker state through this Redis URL."),
    ] = None,
    etcd: Annotated[
        str | None,
        typer.Option(envvar="RESILIENT_ETCD", help="Read breaker config from this etcd."),
    ] = None,
    plot: Annotated[Path, typer.Option(help="Where to write the PNG plot.")] = Path(
        "resilient-demo.png"
    ),
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write no plot.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the upstream's fault draws.")] = 1,
    client: Annotated[
        DemoClient, typer.Option(help="The client library both sides of the demo use.")
    ] = DemoClient.aiohttp,
) -> None:
    """Run the local chaos demo: what the toolkit does to P99 and error rate."""
    try:
        from resilient import demo as demo_module
    except ModuleNotFoundError as exc:
        if exc.name == "resilient.demo":
            fail(EXIT_INVALID, "the demo is not part of this build yet (no resilient.demo)")
        fail(EXIT_INVALID, f"the demo needs {exc.name!r}: pip install 'resilient[demo]'")
    code = demo_module.main(
        duration,
        rate,
        fault,
        redis,
        etcd,
        None if no_plot else plot,
        seed=seed,
        client=client.value,
    )
    raise typer.Exit(int(code or 0))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (the ``resilient`` console script); returns the exit code."""
    try:
        app(args=None if argv is None else list(argv), prog_name="resilient")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# The command groups use fail() and the codes above, so they are added last.
from resilient.cli.config import config_app  # noqa: E402

app.add_typer(config_app, name="config")

from resilient.cli.status import status  # noqa: E402

app.command()(status)

from resilient.dashboard._command import dashboard  # noqa: E402

app.command()(dashboard)

from resilient.cli.reconcile import reconcile  # noqa: E402

app.command()(reconcile)

from resilient.cli.breaker import breaker_app  # noqa: E402

app.add_typer(breaker_app, name="breaker")

from resilient.cli.audit import audit  # noqa: E402

app.command()(audit)
