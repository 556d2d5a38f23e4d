"""The dashboard's web side: the page, its JSON, its live stream and the controls.

One idea: a thin aiohttp shell over a ``FleetMonitor``. Routes:

- ``GET /``: the page (static HTML, JS and CSS shipped in the package; no build step).
- ``GET /api/breakers``: everything the page shows, as JSON; ``GET
  /api/breakers/NAME``: one breaker (404 for a name the fleet does not have).
- ``GET /api/events``: server-sent events. The first event is the whole
  view; each next one carries only what changed since (``id:`` is the
  monitor's run and version, so a browser that reconnects with ``Last-Event-ID``
  gets just what it missed). A comment every ``HEARTBEAT`` seconds keeps
  proxies from closing an idle stream; a viewer that stops reading is
  dropped after ``WRITE_TIMEOUT`` seconds, and at most ``MAX_VIEWERS``
  stream at once.
- ``POST /api/breakers/NAME/{force-open,disable,reset}``: only when started
  with a token, and only with ``Authorization: Bearer <token>`` (401 without
  it, 403 for a dashboard with no token: read-only). Body (optional): JSON
  ``{"reason": "..."}``. The change goes through ``controls`` (fleet-wide,
  audited) and the answer is the breaker's row after a fresh poll, with
  ``audited`` (false, and a ``warning``, when a Redis Cluster took the
  change but not its audit entry).

Bad input gets a JSON ``{"error": "..."}`` with a status saying what kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from resilient.dashboard._auth import Token
from resilient.dashboard._monitor import FleetMonitor
from resilient.stores import _lua
from resilient.stores._control import UnauditedChangeError

__all__ = ["ACTIONS", "Controls", "create_app"]

log = logging.getLogger("resilient.dashboard")

STATIC: Final = Path(__file__).parent / "static"
ACTIONS: Final = ("force-open", "disable", "reset")
HEARTBEAT: Final = 10.0  # seconds between keep-alive comments on an idle stream
CHECK: Final = 1.0  # seconds between looks at whether a quiet stream's viewer left
WRITE_TIMEOUT: Final = 10.0  # seconds a viewer may take to accept an event
MAX_VIEWERS: Final = 64
REASON_MAX: Final = 200  # characters, as Redis keeps them
BODY_MAX: Final = 4096  # bytes of a control request's body

#: ``controls(name, action, reason=..., actor=...)`` sets a fleet-wide manual state.
Controls = Callable[..., Awaitable[object]]

_MONITOR: Final = web.AppKey("monitor", FleetMonitor)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(
    monitor: FleetMonitor,
    *,
    token: Token | None = None,
    controls: Controls | None = None,
    manage_monitor: bool = True,
    max_viewers: int = MAX_VIEWERS,
) -> web.Application:
    """The dashboard as an aiohttp application.

    Args:
        monitor: what to show.
        token: enables the control endpoints (read-only without one).
        controls: what a control request calls (required with ``token``).
        manage_monitor: start and close ``monitor`` with the application.
        max_viewers: live streams served at once (more get a 503).
    """
    if token is not None and controls is None:
        raise ValueError("a token enables controls: pass controls= as well")
    app = web.Application(client_max_size=BODY_MAX, middlewares=[_headers])
    app[_MONITOR] = monitor
    viewers = asyncio.Semaphore(max_viewers)
    hostname = socket.gethostname()

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def breakers(request: web.Request) -> web.Response:
        doc = monitor.view()
        doc["controls"] = token is not None
        return web.json_response(doc)

    async def one_breaker(request: web.Request) -> web.Response:
        name = _known_name(monitor, request)
        return web.json_response(monitor.row(name))

    async def events(request: web.Request) -> web.StreamResponse:
        if viewers.locked():
            raise _error(web.HTTPServiceUnavailable, f"at most {max_viewers} live viewers")
        async with viewers:
            return await _stream(request, monitor, controls=token is not None)

    async def control(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise _error(
                web.HTTPNotFound, f"unknown action {action!r}; one of {', '.join(ACTIONS)}"
            )
        if token is None or controls is None:
            raise _error(web.HTTPForbidden, "this dashboard is read-only (started without --token)")
        if not token.allows(request.headers.get("Authorization")):
            log.warning(
                "resilient: dashboard: refused %s from %s: bad token", action, request.remote
            )
            raise _error(
                web.HTTPUnauthorized,
                "this needs Authorization: Bearer <the dashboard's token>",
                headers={"WWW-Authenticate": 'Bearer realm="resilient"'},
            )
        name = _known_name(monitor, request)
        reason = await _reason(request)
        if monitor.redis_up is False:
            raise _error(web.HTTPServiceUnavailable, f"Redis at {monitor.where} is unreachable")
        actor = f"dashboard@{hostname} ({request.remote or 'unknown'})"
        unaudited = None
        try:
            await controls(name, action, reason=reason, actor=actor)
        except ValueError as exc:
            raise _error(web.HTTPBadRequest, str(exc)) from None
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise _error(
                web.HTTPServiceUnavailable, f"Redis at {monitor.where} refused the change"
            ) from exc
        except UnauditedChangeError as exc:  # a Redis Cluster's: made, not audited
            unaudited = str(exc)
            log.error("resilient: dashboard: %s %s by %s: %s", action, name, actor, unaudited)
        else:
            log.warning("resilient: dashboard: %s %s by %s: %s", action, name, actor, reason or "-")
        await monitor.poll()
        doc: dict[str, object] = {"ok": True, "action": action, "breaker": monitor.row(name)}
        doc["audited"] = unaudited is None
        if unaudited is not None:
            doc["warning"] = unaudited
        return web.json_response(doc)

    app.router.add_get("/", page)
    app.router.add_get("/api/breakers", breakers)
    app.router.add_get("/api/breakers/{name}", one_breaker)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/breakers/{name}/{action}", control)
    app.router.add_static("/static/", STATIC)
    if manage_monitor:
        app.cleanup_ctx.append(_run_monitor)
    return app


async def _run_monitor(app: web.Application) -> AsyncIterator[None]:
    monitor = app[_MONITOR]
    await monitor.start()
    yield
    await monitor.close()


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(_SECURITY_HEADERS)
    return response


def _error(kind: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json", **kwargs)


def _known_name(monitor: FleetMonitor, request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        _lua.keys_for(monitor.namespace, name)
    except ValueError as exc:
        raise _error(web.HTTPBadRequest, str(exc)) from None
    if monitor.row(name) is None:
        raise _error(web.HTTPNotFound, f"no breaker {name!r} in namespace {monitor.namespace!r}")
    return name


async def _reason(request: web.Request) -> str | None:
    if not request.can_read_body:
        return None
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _error(web.HTTPBadRequest, 'the body must be JSON: {"reason": "..."}') from None
    if not isinstance(body, dict) or not set(body) <= {"reason"}:
        raise _error(web.HTTPBadRequest, 'the body must be a JSON object: {"reason": "..."}')
    reason = body.get("reason")
    if reason is None or reason == "":
        return None
    if not isinstance(reason, str) or len(reason) > REASON_MAX or not reason.isprintable():
        raise _error(
            web.HTTPBadRequest, f"reason must be printable text of at most {REASON_MAX} characters"
        )
    return reason


async def _stream(
    request: web.Request, monitor: FleetMonitor, *, controls: bool
) -> web.StreamResponse:
    since = _last_event_id(request, monitor)
    response = web.StreamResponse(
        headers={
            **_SECURITY_HEADERS,
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    await response.prepare(request)
    try:
        await _send(response, b"retry: 1000\n\n")
        quiet = 0.0  # seconds since the last thing sent
        while True:
            if monitor.version > since or since == 0:
                doc = monitor.view(since)
                doc["controls"] = controls
                since = doc["version"]
                data = json.dumps(doc, separators=(",", ":"))
                event = f"id: {monitor.run}.{since}\nevent: update\ndata: {data}\n\n"
                await _send(response, event.encode())
                quiet = 0.0
            elif not await _wait(monitor, since):
                # Quiet: is the viewer still there? (A hang-up frees its slot within
                # a second, not at the next heartbeat.)
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                quiet += CHECK
                if quiet >= HEARTBEAT:
                    await _send(response, b": keep-alive\n\n")
                    quiet = 0.0
    except (ConnectionError, TimeoutError):
        pass  # the viewer went away, or stopped reading: nothing to tell anyone
    return response


async def _wait(monitor: FleetMonitor, since: int) -> bool:
    """Wait for a new version (True) or ``CHECK`` seconds of quiet (False)."""
    try:
        async with asyncio.timeout(CHECK):
            await monitor.changed(since)
    except TimeoutError:
        return False
    return True


async def _send(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT):
        await response.write(data)


def _last_event_id(request: web.Request, monitor: FleetMonitor) -> int:
    """The version a reconnecting viewer saw; 0 (everything) if absent, odd, or of another run."""
    run, _, raw = request.headers.get("Last-Event-ID", "").partition(".")
    with contextlib.suppress(ValueError):
        seen = int(raw) if run == monitor.run else 0
        if 0 < seen <= monitor.version:
            return seen
    return 0
