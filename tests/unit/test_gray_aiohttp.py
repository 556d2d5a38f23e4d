"""aiohttp: the server middlewares and the client middlewares, over real loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from resilient.aiohttp import DEADLINE_KEY, deadline_middleware, gray_middleware
from resilient.deadline import deadline, remaining
from resilient.errors import ConfigError
from resilient.gray import CookieRule, GrayTag, HeaderRule, current, use
from resilient.gray._context import Inbound, enter, leave
from resilient.http._propagation import deadline_propagation, gray_propagation, propagation

TP = "00-12345678901234567890123456789012-1234567890123456-01"


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def report(request: web.Request) -> web.Response:
    """What the handler sees: the tag, the budget, and the inbound headers."""
    tag = current()
    if "sleep" in request.query:
        await asyncio.sleep(float(request.query["sleep"]))
    return web.json_response(
        {
            "tag": None if tag is None else [tag.value, tag.rule],
            "remaining": remaining(),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "armed": request.get(DEADLINE_KEY, False),
        }
    )


def app_with(*middlewares: Any) -> web.Application:
    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/", report)
    return app


async def get(url: str, headers: dict[str, str] | None = None, **session: Any) -> Any:
    async with (
        aiohttp.ClientSession(**session) as client,
        client.get(url, headers=headers) as resp,
    ):
        if resp.status != 200:
            return resp.status
        return await resp.json()


# -- server middlewares --------------------------------------------------------------------


async def test_gray_middleware_recognises_and_scopes_the_tag() -> None:
    async with serve(app_with(gray_middleware())) as url:
        gray = await get(url, {"x-gray": "canary"})
        traced = await get(url, {"traceparent": TP, "tracestate": "foo=1,gray=blue"})
        stable = await get(url)
    assert gray["tag"] == ["canary", "header"]
    assert traced["tag"] == ["blue", "tracestate"]
    assert stable["tag"] is None and stable["remaining"] is None


async def test_gray_middleware_rules_and_deny_list() -> None:
    middleware = gray_middleware(rules=[CookieRule("lane"), HeaderRule()], deny=["admin"])
    async with serve(app_with(middleware)) as url:
        a = await get(url, {"cookie": "lane=admin", "x-gray": "canary"})
        b = await get(url, {"cookie": "lane=admin"})
    assert a["tag"] == ["canary", "header"] and b["tag"] is None


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "garbage", "tracestate": "gray=canary"},
        {"traceparent": TP, "tracestate": "gray=canary,gray=x"},
        {"x-gray": "can ary"},
        {"x-gray": "a,b"},
        {"cookie": ";;=;"},
        {"x-request-timeout-ms": "-1"},
        {"x-request-timeout-ms": "1.5"},
    ],
)
async def test_malformed_headers_are_answered_normally(headers: dict[str, str]) -> None:
    async with serve(app_with(gray_middleware(rules=[HeaderRule(), CookieRule("l")]))) as url:
        body = await get(url, headers)
    assert body["tag"] is None and body["remaining"] is None


@pytest.mark.parametrize("factory", [gray_middleware, deadline_middleware])
async def test_deadline_header_becomes_the_handlers_deadline(factory: Any) -> None:
    async with serve(app_with(factory())) as url:
        body = await get(url, {"x-request-timeout-ms": "5000"})
    assert 4.0 < body["remaining"] <= 5.0 and body["armed"] is True


@pytest.mark.parametrize("gray_first", [True, False])
async def test_stacked_middlewares_arm_the_deadline_once(gray_first: bool) -> None:
    calls = {"gray": 0, "deadline": 0}

    def counting(name: str) -> Any:
        def clock() -> float:
            calls[name] += 1
            return 1000.0

        return clock

    pair = [
        gray_middleware(clock=counting("gray")),
        deadline_middleware(clock=counting("deadline")),
    ]
    if not gray_first:
        pair.reverse()
    async with serve(app_with(*pair)) as url:
        body = await get(url, {"x-request-timeout-ms": "5000"})
    assert body["remaining"] == pytest.approx(5.0)
    outer, inner = ("gray", "deadline") if gray_first else ("deadline", "gray")
    assert calls[outer] >= 1 and calls[inner] == 0


async def test_an_expired_inbound_budget_answers_504() -> None:
    async with serve(app_with(gray_middleware())) as url:
        status = await get(url + "/?sleep=30", {"x-request-timeout-ms": "20"})
    assert status == 504


def test_server_middleware_options_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^deadline_header "):
        gray_middleware(deadline_header="a b")
    with pytest.raises(ValueError, match=r"^baggage "):
        gray_middleware(baggage="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^rules "):
        gray_middleware(rules=HeaderRule())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^header "):
        deadline_middleware(header="")


# -- client middlewares --------------------------------------------------------------------


async def echo_headers(url: str, middlewares: Any) -> dict[str, str]:
    body = await get(url, middlewares=middlewares)
    headers: dict[str, str] = body["headers"]
    return headers


async def test_client_writes_the_header_only_without_trace_context() -> None:
    async with serve(app_with()) as url:
        with use(GrayTag("canary", "cookie")):
            headers = await echo_headers(url, [gray_propagation()])
        stable = await echo_headers(url, [gray_propagation()])
    assert headers["x-gray"] == "canary"
    assert "traceparent" not in headers and "tracestate" not in headers
    assert "x-gray" not in stable


async def test_client_passes_the_inbound_trace_context_through_byte_for_byte() -> None:
    inbound = Inbound(GrayTag("canary", "header"), TP, "1234567890123456", "foo=1 ,bar= 2")
    token = enter(inbound)
    try:
        async with serve(app_with()) as url:
            headers = await echo_headers(url, [propagation()])
    finally:
        leave(token)
    assert headers["traceparent"] == TP
    assert headers["tracestate"] == "foo=1 ,bar= 2"
    assert headers["x-gray"] == "canary"


async def test_client_with_a_local_span_puts_the_member_first() -> None:
    tracer = TracerProvider().get_tracer("test")
    async with serve(app_with()) as url:
        with use(GrayTag("canary", "header")), tracer.start_as_current_span("work") as span:
            headers = await echo_headers(url, [gray_propagation(header="x-lane", key="lane")])
    ctx = span.get_span_context()
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    assert headers["tracestate"] == "lane=canary"
    assert headers["x-lane"] == "canary"


async def test_client_writes_the_floor_of_the_tightest_budget() -> None:
    class Clock:
        now = 50.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    async with serve(app_with()) as url:
        no_budget = await echo_headers(url, [deadline_propagation()])
        async with deadline(0.2509, clock=clock):
            plain = await echo_headers(url, [deadline_propagation()])
            bounded = await echo_headers(url, [deadline_propagation(bound=lambda req: 0.1)])
            loose = await echo_headers(url, [propagation(bound=lambda req: 9.0)])
            none = await echo_headers(url, [deadline_propagation(bound=lambda req: None)])
            async with aiohttp.ClientSession(middlewares=[deadline_propagation()]) as client:
                async with client.get(url, headers={"x-request-timeout-ms": "40"}) as resp:
                    preset_tighter = (await resp.json())["headers"]
                async with client.get(url, headers={"x-request-timeout-ms": "900"}) as resp:
                    preset_looser = (await resp.json())["headers"]
        only_bound = await echo_headers(url, [deadline_propagation(bound=lambda req: 0.0304)])
        custom = await echo_headers(
            url, [deadline_propagation(header="x-budget", bound=lambda req: 1.0)]
        )
    assert "x-request-timeout-ms" not in no_budget
    assert plain["x-request-timeout-ms"] == "250"
    assert bounded["x-request-timeout-ms"] == "100"
    assert loose["x-request-timeout-ms"] == "250"
    assert none["x-request-timeout-ms"] == "250"
    assert preset_tighter["x-request-timeout-ms"] == "40"
    assert preset_looser["x-request-timeout-ms"] == "250"
    assert only_bound["x-request-timeout-ms"] == "30"
    assert custom["x-budget"] == "1000"


async def test_client_skips_an_infinite_deadline() -> None:
    async with serve(app_with()) as url, deadline(float("inf")):
        headers = await echo_headers(url, [deadline_propagation()])
    assert "x-request-timeout-ms" not in headers


def test_client_middleware_options_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^header "):
        gray_propagation(header="x y")
    with pytest.raises(ConfigError, match=r"^key "):
        gray_propagation(key="UPPER")
    with pytest.raises(ConfigError, match=r"^gray_header "):
        propagation(gray_header="x\r\ny")
    with pytest.raises(ConfigError, match=r"^deadline_header "):
        propagation(deadline_header="")
    with pytest.raises(ValueError, match=r"^bound "):
        deadline_propagation(bound=0.5)  # type: ignore[arg-type]


async def test_a_websocket_upgrade_gets_the_tag_but_no_deadline() -> None:
    seen: dict[str, Any] = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        seen["tag"], seen["remaining"] = current(), remaining()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application(middlewares=[gray_middleware(), deadline_middleware()])
    app.router.add_get("/ws", ws_handler)
    headers = {"x-gray": "canary", "x-request-timeout-ms": "5000"}
    async with (
        serve(app) as url,
        aiohttp.ClientSession() as client,
        client.ws_connect(url + "/ws", headers=headers) as ws,
    ):
        await ws.receive()
    assert seen == {"tag": GrayTag("canary", "header"), "remaining": None}
