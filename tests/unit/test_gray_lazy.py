"""Gray recognition is lazy: the rules run when the tag is first read, once per request.

A counting user rule tells how often recognition ran; the middlewares are
driven directly (ASGI) and over a real loopback server (aiohttp).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_gray_aiohttp import serve

from resilient.aiohttp import gray_middleware
from resilient.asgi import DeadlineMiddleware, GrayMiddleware
from resilient.deadline import remaining
from resilient.gray import GrayTag, HeaderRule, current, inject
from resilient.gray._context import published
from resilient.gray._rules import Found

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CountingRule(HeaderRule):
    """``HeaderRule("x-gray")`` that counts its proposals."""

    proposals: list[str | None] = field(default_factory=list, compare=False)

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        value = HeaderRule.propose(self, found, members)
        self.proposals.append(value)
        return value


def scope(*headers: tuple[bytes, bytes], kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "method": "GET", "path": "/", "headers": list(headers)}


async def drive(app: Any, request: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(request, receive, send)
    return sent


class App:
    """Answers 200 after ``work``; records what it read."""

    def __init__(self, reads: int = 0, *, in_tasks: int = 0) -> None:
        self.reads = reads
        self.in_tasks = in_tasks
        self.tags: list[GrayTag | None] = []
        self.scopes: list[Any] = []
        self.published: list[object] = []
        self.remaining: list[float | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        self.published.append(published())
        self.remaining.append(remaining())
        self.tags.extend(current() for _ in range(self.reads))
        tasks = [asyncio.ensure_future(self._read()) for _ in range(self.in_tasks)]
        await asyncio.gather(*tasks)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    async def _read(self) -> None:
        await asyncio.sleep(0)
        self.tags.append(current())


CANARY = (b"x-gray", b"canary")


async def test_a_tag_nobody_reads_is_never_recognised() -> None:
    rule = CountingRule()
    app = App()
    sent = await drive(GrayMiddleware(app, rules=[rule]), scope(CANARY))
    assert rule.proposals == []
    assert sent[0]["status"] == 200
    assert current() is None  # nothing left behind either


async def test_reading_twice_recognises_once() -> None:
    rule = CountingRule()
    app = App(reads=2)
    await drive(GrayMiddleware(app, rules=[rule]), scope(CANARY))
    assert rule.proposals == ["canary"]
    assert app.tags == [GrayTag("canary", "header")] * 2


async def test_tasks_of_the_request_share_one_recognition() -> None:
    rule = CountingRule()
    app = App(in_tasks=3)
    await drive(GrayMiddleware(app, rules=[rule]), scope(CANARY))
    assert rule.proposals == ["canary"]
    assert app.tags == [GrayTag("canary", "header")] * 3


async def test_concurrent_requests_each_recognise_their_own() -> None:
    rule = CountingRule()
    app = App(reads=1)
    middleware = GrayMiddleware(app, rules=[rule])
    await asyncio.gather(
        drive(middleware, scope((b"x-gray", b"a"))),
        drive(middleware, scope((b"x-gray", b"b"))),
        drive(middleware, scope()),
    )
    assert sorted(p for p in rule.proposals if p) == ["a", "b"]
    assert sorted(t.value for t in app.tags if t is not None) == ["a", "b"]
    assert app.tags.count(None) == 1


async def test_outbound_propagation_reads_the_tag() -> None:
    rule = CountingRule()
    written: list[dict[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers: dict[str, str] = {}
        inject(headers)
        written.append(headers)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await drive(GrayMiddleware(app, rules=[rule]), scope(CANARY))
    assert rule.proposals == ["canary"]
    assert written == [{"x-gray": "canary"}]


async def test_a_recording_span_wants_the_tag_at_once() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rule = CountingRule()
    with provider.get_tracer("test").start_as_current_span("inbound"):
        await drive(GrayMiddleware(App(), rules=[rule]), scope(CANARY))
    assert rule.proposals == ["canary"]
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"gray.tag": "canary", "gray.strategy": "header"}


async def test_baggage_wants_the_tag_at_once() -> None:
    rule = CountingRule()
    await drive(GrayMiddleware(App(), rules=[rule], baggage=True), scope(CANARY))
    assert rule.proposals == ["canary"]


async def test_a_deadline_header_alone_publishes_nothing() -> None:
    rule = CountingRule()
    app = App(reads=1)
    await drive(GrayMiddleware(app, rules=[rule]), scope((b"x-request-timeout-ms", b"5000")))
    assert app.published == [None] and app.tags == [None]
    assert app.remaining[0] is not None and 0.0 < app.remaining[0] <= 5.0
    assert rule.proposals == []


async def test_a_websocket_passes_deadline_middleware_untouched() -> None:
    app = App()
    request = scope((b"x-request-timeout-ms", b"5000"), kind="websocket")
    await drive(DeadlineMiddleware(app), request)
    assert app.scopes == [request] and app.remaining == [None] and app.published == [None]


@pytest.mark.parametrize("read", [False, True])
async def test_aiohttp_recognises_only_when_read(read: bool) -> None:
    rule = CountingRule()

    async def handle(request: web.Request) -> web.Response:
        tag = current() if read else None
        return web.Response(text="-" if tag is None else tag.value)

    app = web.Application(middlewares=[gray_middleware(rules=[rule])])
    app.router.add_get("/", handle)
    async with (
        serve(app) as url,
        aiohttp.ClientSession() as client,
        client.get(url, headers={"x-gray": "canary"}) as response,
    ):
        text = await response.text()
    assert text == ("canary" if read else "-")
    assert rule.proposals == (["canary"] if read else [])
