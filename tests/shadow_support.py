"""What the shadow tests share: aiohttp services on 127.0.0.1, trace contexts, the reconcile CLI.

A ``Service`` is a real aiohttp server on a free loopback port whose handler
the test writes; it remembers every request it was sent and sets ``gone``
when a client goes away in the middle of one (``handler_cancellation``), so
tests assert on what the servers saw, not on how long something took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from typer.testing import CliRunner

from resilient.cli import app
from resilient.shadow import JsonlSink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Seen(NamedTuple):
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


class Service:
    """An aiohttp server on 127.0.0.1 answering every path with ``handler``."""

    def __init__(self, handler: Handler, middlewares: tuple[Any, ...] = ()) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.held = asyncio.Event()  # a request is being held (``hold``)
        self.gone = asyncio.Event()  # a held request's client went away
        self._middlewares = middlewares
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        return await self.handler(request)

    async def hold(self) -> web.StreamResponse:
        """Hold the request until its client goes away (then ``gone`` is set)."""
        self.held.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.gone.set()
            raise
        raise AssertionError("unreachable")

    def paths(self) -> list[str]:
        return [s.path_qs for s in self.seen]

    async def start(self) -> str:
        app = web.Application(middlewares=self._middlewares)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextmanager
def traced(trace_id: int) -> Iterator[str]:
    """Run the block in a trace of ``trace_id`` (no SDK needed); yields its hex form."""
    context = SpanContext(
        trace_id=trace_id, span_id=1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    with trace.use_span(NonRecordingSpan(context)):
        yield f"{trace_id:032x}"


class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def reconcile(*args: str) -> Run:
    """``resilient reconcile ARGS`` in this process."""
    result = CliRunner().invoke(app, ["reconcile", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def only_operation(report: dict[str, Any]) -> dict[str, Any]:
    (op,) = report["operations"]
    assert isinstance(op, dict)
    return op


@contextmanager
def jsonl_sink(folder: Path) -> Iterator[JsonlSink]:
    """A ``JsonlSink`` in ``folder``, closed afterwards (an open file would warn)."""
    sink = JsonlSink(folder / "shadow.jsonl")
    try:
        yield sink
    finally:
        sink.close()


def read_records(sink: JsonlSink) -> list[dict[str, Any]]:
    """Every record ``sink`` wrote, in order (none if it never wrote)."""
    if not sink.path.exists():
        return []
    return [json.loads(line) for line in sink.path.read_text().splitlines()]
