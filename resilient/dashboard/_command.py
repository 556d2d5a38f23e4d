"""``resilient dashboard``: serve the live page for one namespace of a fleet.

One idea: the command checks what it was given before it serves anything (a
bad URL, name, token or port exits 1 or 2; a Redis that does not answer the
first read exits 3, so a typo in ``--redis`` is caught at once), then serves
until interrupted. A Redis lost later does not stop it: the page says so and
keeps the last states. The token is read from ``--token`` or, better (it
stays out of the process list), ``RESILIENT_DASHBOARD_TOKEN``; it is never
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
from typing import TYPE_CHECKING, Annotated

import typer

from resilient.cli._exit import EXIT_INVALID, EXIT_UNREACHABLE, EXIT_USAGE, fail

if TYPE_CHECKING:
    from aiohttp import web

    from resilient.dashboard._app import Controls
    from resilient.dashboard._monitor import FleetMonitor

__all__ = ["dashboard"]


def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8089,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="RESILIENT_DASHBOARD_TOKEN",
            show_envvar=True,
            show_default=False,
            help="Enable the controls, for requests with Authorization: Bearer <token>.",
        ),
    ] = None,
    redis_url: Annotated[
        str,
        typer.Option(
            "--redis", envvar="RESILIENT_REDIS", show_envvar=True, help="The fleet's Redis URL."
        ),
    ] = "redis://127.0.0.1:6379/0",
    namespace: Annotated[
        str,
        typer.Option(envvar="RESILIENT_NAMESPACE", show_envvar=True, help="The hubs' namespace."),
    ] = "default",
    etcd: Annotated[
        str | None,
        typer.Option(
            envvar="RESILIENT_ETCD",
            show_envvar=True,
            help="Show the config in force from this etcd.",
        ),
    ] = None,
    prefix: Annotated[
        str, typer.Option(envvar="RESILIENT_PREFIX", show_envvar=True, help="The etcd key prefix.")
    ] = "/resilient",
) -> None:
    """Serve the live dashboard of a fleet's breakers (read-only without --token)."""
    try:
        from resilient.dashboard._app import create_app
        from resilient.dashboard._auth import Token
        from resilient.dashboard._config import ConfigView
        from resilient.dashboard._monitor import FleetMonitor
    except ModuleNotFoundError as exc:
        fail(EXIT_INVALID, f"the dashboard needs {exc.name!r}: pip install 'resilient[dashboard]'")
    try:
        secret = None if token is None else Token(token)
    except ValueError as exc:
        fail(EXIT_USAGE, f"--token: {exc}")
    config = None
    if etcd is not None:
        from resilient.config.etcd import EtcdSource

        try:
            config = ConfigView(EtcdSource(etcd, prefix))
        except ValueError as exc:
            fail(EXIT_USAGE, f"--etcd: {exc}")
    try:
        monitor = FleetMonitor(redis_url, namespace, config=config)
    except ValueError as exc:
        fail(EXIT_INVALID, str(exc))
    try:
        controls = None if secret is None else fleet_controls(redis_url, namespace)
    except NotImplementedError as exc:
        fail(EXIT_INVALID, str(exc))
    app = create_app(monitor, token=secret, controls=controls, manage_monitor=False)
    try:
        code = asyncio.run(_serve(app, monitor, host, port, controls=secret is not None))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


async def _serve(
    app: web.Application, monitor: FleetMonitor, host: str, port: int, *, controls: bool
) -> int:
    from aiohttp import web

    await monitor.poll()
    if monitor.redis_up is False:
        await monitor.close()
        fail(EXIT_UNREACHABLE, f"Redis at {monitor.where} unreachable: {monitor.redis_error}")
    await monitor.start()
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            why = "is in use" if busy else f"cannot be listened on: {exc.strerror or exc}"
            typer.echo(f"resilient: error: {host}:{port} {why}", err=True)
            return EXIT_USAGE
        bound = runner.addresses[0] if runner.addresses else (host, port)
        mode = "controls enabled (token required)" if controls else "read-only"
        typer.echo(
            f"resilient dashboard on http://{bound[0]}:{bound[1]}/ "
            f"({mode}; namespace {monitor.namespace!r} at {monitor.where})",
            err=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()
        await monitor.close()
    return 0


def fleet_controls(redis_url: str, namespace: str) -> Controls:
    """What a control request calls: a fleet-wide manual state, audited (issue 19).

    The same call as ``resilient breaker force-open|disable|reset``: one script
    sets the fleet's state (every process applies it within milliseconds) and
    appends who, when, why, before and after to the namespace's audit stream.

    Raises:
        NotImplementedError: this build has no fleet-wide controls.
    """
    try:
        # By name: the module is the other half of issue 19, in the same build or not.
        control = importlib.import_module("resilient.stores._control").control
    except ModuleNotFoundError as exc:
        if exc.name != "resilient.stores._control":
            raise
        raise NotImplementedError(
            "fleet-wide controls are not in this build (no resilient.stores._control); "
            "serve read-only, without --token"
        ) from None

    async def run(name: str, action: str, *, reason: str | None, actor: str) -> object:
        return await control(redis_url, namespace, name, action, reason=reason or "", actor=actor)

    return run
