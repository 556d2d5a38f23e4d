"""A three-hop chain on loopback: the gray tag, the trace context and the deadline survive it.

    test client -> hop 1: Starlette under uvicorn, GrayMiddleware
                -> hop 2: aiohttp server, gray_middleware      (via the client middlewares)
                -> echo:  aiohttp server that reports the headers it got

Every server is real and in-process on a free loopback port, started and
stopped by the test. With the OpenTelemetry SDK, each hop has a server span
made from the inbound context by a local ``TracerProvider`` (the global one
can be set only once per process), as an OpenTelemetry instrumentation would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilient.aiohttp import gray_middleware
from resilient.asgi import GrayMiddleware
from resilient.deadline import remaining
from resilient.gray import current
from resilient.http._propagation import propagation

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def extract(headers: Any) -> Any:
    return TraceContextTextMapPropagator().extract(headers)


class OtelAsgi:
    """A server span from the inbound context, as OpenTelemetry's ASGI instrumentation makes."""

    def __init__(self, app: Any, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            carrier.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        with self.tracer.start_as_current_span(
            "hop1", context=extract(carrier), kind=SpanKind.SERVER
        ):
            await self.app(scope, receive, send)


def otel_aiohttp(tracer: Tracer) -> Any:
    @web.middleware
    async def otel(request: web.Request, handler: Any) -> web.StreamResponse:
        carrier = {k.lower(): request.headers.getall(k) for k in request.headers}
        with tracer.start_as_current_span("hop2", context=extract(carrier), kind=SpanKind.SERVER):
            response: web.StreamResponse = await handler(request)
            return response

    return otel


async def seen(headers: Any, call: Awaitable[Any]) -> dict[str, Any]:
    """What a hop saw on the way in (before it calls on), and what its downstream saw."""
    tag = current()
    left = remaining()
    return {
        "tag": None if tag is None else [tag.value, tag.rule],
        "remaining": left,
        "headers": {k.lower(): v for k, v in headers.items()},
        "downstream": await call,
    }


async def fetch(client: aiohttp.ClientSession, url: str) -> Any:
    async with client.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="none", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Chain:
    url: str
    exporter: InMemorySpanExporter | None


@asynccontextmanager
async def chain(sdk: bool) -> AsyncIterator[Chain]:
    exporter = InMemorySpanExporter() if sdk else None
    tracer = None
    if exporter is not None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("chain")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"headers": {k.lower(): v for k, v in request.headers.items()}})

    echo_app = web.Application()
    echo_app.router.add_get("/", echo)

    async with (
        aiohttp_server(echo_app) as echo_url,
        aiohttp.ClientSession(middlewares=[propagation()]) as to_echo,
        aiohttp.ClientSession(middlewares=[propagation()]) as to_hop2,
    ):

        async def hop2_handler(request: web.Request) -> web.Response:
            return web.json_response(await seen(request.headers, fetch(to_echo, echo_url)))

        middlewares = [gray_middleware()]
        if tracer is not None:
            middlewares.insert(0, otel_aiohttp(tracer))
        hop2_app = web.Application(middlewares=middlewares)
        hop2_app.router.add_get("/", hop2_handler)

        async with aiohttp_server(hop2_app) as hop2_url:

            async def hop1_handler(request: Request) -> JSONResponse:
                return JSONResponse(await seen(request.headers, fetch(to_hop2, hop2_url)))

            stack = [Middleware(GrayMiddleware)]
            if tracer is not None:
                stack.insert(0, Middleware(OtelAsgi, tracer=tracer))
            hop1_app = Starlette(routes=[Route("/", hop1_handler)], middleware=stack)
            async with uvicorn_server(hop1_app) as hop1_url:
                yield Chain(hop1_url, exporter)


async def send(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], ...]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        hop1 = await resp.json()
    hop2 = hop1["downstream"]
    echo = hop2["downstream"]
    return hop1, hop2, echo


def assert_deadline_shrinks(hop1: Any, hop2: Any, echo: Any) -> None:
    sent_to_hop2 = int(hop2["headers"]["x-request-timeout-ms"])
    sent_to_echo = int(echo["headers"]["x-request-timeout-ms"])
    assert 0 < hop1["remaining"] <= 5.0
    assert 0 < sent_to_hop2 <= 5000 and sent_to_hop2 <= hop1["remaining"] * 1000 + 1
    assert 0 < hop2["remaining"] <= sent_to_hop2 / 1000
    assert 0 < sent_to_echo <= sent_to_hop2


INBOUND = {
    "tracestate": {"traceparent": TP, "tracestate": "foo=1,gray=canary,bar=2"},
    "header": {"traceparent": TP, "tracestate": "foo=1,bar=2", "x-gray": "canary"},
}


@pytest.mark.parametrize("rule", ["tracestate", "header"])
async def test_without_an_sdk_the_trace_context_passes_through_byte_for_byte(rule: str) -> None:
    headers = {**INBOUND[rule], "x-request-timeout-ms": "5000"}
    async with chain(sdk=False) as c:
        hop1, hop2, echo = await send(c.url, headers)
    assert hop1["tag"] == ["canary", rule] and hop2["tag"] == ["canary", rule]
    for hop in (hop2, echo):
        assert hop["headers"]["traceparent"] == TP
        assert hop["headers"]["tracestate"] == INBOUND[rule]["tracestate"]
        assert hop["headers"]["x-gray"] == "canary"
    assert_deadline_shrinks(hop1, hop2, echo)


@pytest.mark.parametrize("rule", ["tracestate", "header"])
async def test_with_an_sdk_each_hop_takes_part_and_puts_the_member_first(rule: str) -> None:
    headers = {**INBOUND[rule], "x-request-timeout-ms": "5000"}
    async with chain(sdk=True) as c:
        hop1, hop2, echo = await send(c.url, headers)
        assert c.exporter is not None
        spans = {s.name: s for s in c.exporter.get_finished_spans()}
    assert hop1["tag"] == ["canary", rule]
    # hop 2 recognises the tracestate member that hop 1 wrote, whatever hop 1 read
    assert hop2["tag"] == ["canary", "tracestate"]
    hop1_span = spans["hop1"].context
    hop2_span = spans["hop2"].context
    assert hop2["headers"]["traceparent"].split("-")[1:3] == [TRACE_ID, f"{hop1_span.span_id:016x}"]
    assert echo["headers"]["traceparent"].split("-")[1:3] == [TRACE_ID, f"{hop2_span.span_id:016x}"]
    for hop in (hop2, echo):
        assert hop["headers"]["tracestate"] == "gray=canary,foo=1,bar=2"
        assert hop["headers"]["x-gray"] == "canary"
    assert dict(spans["hop1"].attributes or {}) == {"gray.tag": "canary", "gray.strategy": rule}
    assert dict(spans["hop2"].attributes or {}) == {
        "gray.tag": "canary",
        "gray.strategy": "tracestate",
    }
    assert_deadline_shrinks(hop1, hop2, echo)


@pytest.mark.parametrize("sdk", [False, True])
async def test_with_no_trace_context_only_the_header_travels(sdk: bool) -> None:
    async with chain(sdk=sdk) as c:
        hop1, hop2, echo = await send(c.url, {"x-gray": "canary", "x-request-timeout-ms": "5000"})
    assert hop1["tag"] == ["canary", "header"]
    # with an SDK, hop 2 finds the member hop 1 wrote first (tracestate is the first rule)
    assert hop2["tag"] == ["canary", "tracestate" if sdk else "header"]
    assert echo["headers"]["x-gray"] == "canary"
    if not sdk:  # nobody invents a trace
        for hop in (hop1, hop2, echo):
            assert "traceparent" not in hop["headers"] and "tracestate" not in hop["headers"]
    else:  # the instrumentation at hop 1 started one; hop 2 carries the member on
        assert hop2["headers"]["tracestate"] == "gray=canary"
        assert echo["headers"]["tracestate"] == "gray=canary"
    assert_deadline_shrinks(hop1, hop2, echo)


@pytest.mark.parametrize("sdk", [False, True])
async def test_stable_traffic_and_malformed_input_travel_untagged(sdk: bool) -> None:
    bad = {
        "traceparent": TP,
        "tracestate": "foo=1,gray=canary,@gray=again",  # a key starting with @: dropped whole
        "x-gray": "can ary",
        "x-request-timeout-ms": "soon",
    }
    async with chain(sdk=sdk) as c:
        hop1, hop2, echo = await send(c.url, bad)
    assert hop1["tag"] is None and hop2["tag"] is None and hop1["remaining"] is None
    for hop in (hop2, echo):
        assert "x-gray" not in hop["headers"] and "x-request-timeout-ms" not in hop["headers"]
        assert "tracestate" not in hop["headers"]
        assert hop["headers"]["traceparent"].split("-")[1] == TRACE_ID
    if not sdk:
        assert hop2["headers"]["traceparent"] == TP
