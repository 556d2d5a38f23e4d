"""resilient.asgi: GrayMiddleware and DeadlineMiddleware driven directly over ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resilient.asgi import DEADLINE_SCOPE_KEY, DeadlineMiddleware, GrayMiddleware
from resilient.deadline import deadline, remaining
from resilient.errors import ConfigError, DeadlineExceeded
from resilient.gray import CookieRule, GrayTag, HeaderRule, current, inject

Message = MutableMapping[str, Any]
TP = "00-12345678901234567890123456789012-1234567890123456-01"


def http_scope(*headers: tuple[str, str], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Recorder:
    """A tiny ASGI app that records what it saw and answers 200."""

    def __init__(self, work: Callable[[], Any] | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.work = work

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outbound: dict[str, str] = {}
        inject(outbound)
        self.seen.append(
            {
                "scope": scope,
                "receive": receive,
                "send": send,
                "tag": current(),
                "remaining": remaining(),
                "outbound": outbound,
                "baggage": baggage.get_baggage("gray"),
            }
        )
        if self.work is not None:
            await self.work()
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, scope: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class FrozenClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


# -- pass-through of other scopes ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["lifespan", "custom"])
async def test_other_scopes_go_straight_through(kind: str) -> None:
    inner = Recorder()
    app = GrayMiddleware(DeadlineMiddleware(inner))
    scope = {"type": kind, "headers": [(b"x-gray", b"canary"), (b"x-request-timeout-ms", b"5")]}

    async def send(message: Message) -> None:
        raise AssertionError("nothing to send")

    await app(scope, receive, send)
    (seen,) = inner.seen
    assert seen["scope"] is scope and seen["receive"] is receive and seen["send"] is send
    assert seen["tag"] is None and seen["remaining"] is None


async def test_a_plain_request_reaches_the_app_untouched() -> None:
    inner = Recorder()
    scope = http_scope(("accept", "*/*"))
    sent = await call(GrayMiddleware(inner), scope)
    (seen,) = inner.seen
    assert seen["scope"] is scope and seen["tag"] is None and seen["outbound"] == {}
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


# -- recognition ---------------------------------------------------------------------------


async def test_header_tag_is_current_for_the_request_only() -> None:
    inner = Recorder()
    await call(GrayMiddleware(inner), http_scope(("X-Gray", "canary")))
    assert inner.seen[0]["tag"] == GrayTag("canary", "header")
    assert inner.seen[0]["outbound"] == {"x-gray": "canary"}
    assert current() is None


async def test_tracestate_tag_and_pass_through_context() -> None:
    inner = Recorder()
    scope = http_scope(
        ("traceparent", TP), ("tracestate", "foo=1,gray=canary"), ("tracestate", "bar=2")
    )
    await call(GrayMiddleware(inner), scope)
    (seen,) = inner.seen
    assert seen["tag"] == GrayTag("canary", "tracestate")
    assert seen["outbound"] == {
        "traceparent": TP,
        "tracestate": "foo=1,gray=canary,bar=2",
        "x-gray": "canary",
    }


async def test_websocket_scopes_are_recognised_but_get_no_deadline() -> None:
    inner = Recorder()
    scope = http_scope(("x-gray", "canary"), ("x-request-timeout-ms", "50"), kind="websocket")
    await call(GrayMiddleware(inner), scope)
    (seen,) = inner.seen
    assert seen["tag"] == GrayTag("canary", "header") and seen["remaining"] is None
    assert seen["scope"] is scope


async def test_configured_rules_and_lists() -> None:
    inner = Recorder()
    app = GrayMiddleware(inner, rules=[CookieRule("lane"), HeaderRule()], deny=["admin"])
    await call(app, http_scope(("cookie", "lane=admin"), ("x-gray", "canary")))
    await call(app, http_scope(("cookie", "a=1; lane=blue")))
    await call(app, http_scope(("cookie", "lane=admin")))
    assert [s["tag"] for s in inner.seen] == [
        GrayTag("canary", "header"),
        GrayTag("blue", "cookie"),
        None,
    ]


async def test_concurrent_requests_never_see_each_other() -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    inner = Recorder(work)
    app = GrayMiddleware(inner)
    scopes = [http_scope(("x-gray", f"lane{i}")) if i % 2 else http_scope() for i in range(50)]
    await asyncio.gather(*(call(app, s) for s in scopes))
    for seen in inner.seen:
        headers = dict(seen["scope"]["headers"])
        expected = headers.get(b"x-gray")
        assert (seen["tag"].value.encode() if seen["tag"] else None) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", "garbage"), ("tracestate", "gray=canary")],
        [("traceparent", TP), ("tracestate", "gray=canary,@x=1")],
        [("traceparent", TP), ("traceparent", TP)],
        [("traceparent", TP), ("tracestate", "," * 100 + "=" * 100)],
        [("x-gray", "a\x00b")],
        [("x-gray", "canary"), ("x-gray", "blue")],
        [("x-gray", "x" * 10_000)],
        [("cookie", ';=;=;""')],
        [("x-request-timeout-ms", "-5")],
        [("x-request-timeout-ms", "1e9")],
        [("x-request-timeout-ms", "5"), ("x-request-timeout-ms", "6")],
        [("x-request-timeout-ms", "\xff\xfe")],
        [("x-gray", "\xe9t\xe9")],
    ],
)
async def test_malformed_headers_never_break_the_request(headers: list[tuple[str, str]]) -> None:
    inner = Recorder()
    sent = await call(GrayMiddleware(inner), http_scope(*headers))
    assert sent[0]["status"] == 200
    (seen,) = inner.seen
    assert seen["tag"] is None and seen["remaining"] is None
    assert "tracestate" not in seen["outbound"] and "x-gray" not in seen["outbound"]


async def test_raw_non_ascii_header_bytes_do_not_break_the_request() -> None:
    inner = Recorder()
    scope = http_scope()
    scope["headers"] = [(b"x-gray", b"\xff\xfe\x00"), (b"cookie", b"\x80=\x81")]
    sent = await call(GrayMiddleware(inner, rules=[HeaderRule(), CookieRule("lane")]), scope)
    assert sent[0]["status"] == 200 and inner.seen[0]["tag"] is None


# -- spans and baggage ---------------------------------------------------------------------


def local_tracer() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_gray_requests_tag_the_recording_span() -> None:
    tracer, exporter = local_tracer()
    app = GrayMiddleware(Recorder())
    with tracer.start_as_current_span("gray"):
        await call(app, http_scope(("x-gray", "canary")))
    with tracer.start_as_current_span("stable"):
        await call(app, http_scope())
    with tracer.start_as_current_span("quiet"):
        await call(GrayMiddleware(Recorder(), span_attributes=False), http_scope(("x-gray", "c")))
    spans = {s.name: dict(s.attributes or {}) for s in exporter.get_finished_spans()}
    assert spans == {
        "gray": {"gray.tag": "canary", "gray.strategy": "header"},
        "stable": {},
        "quiet": {},
    }


async def test_baggage_is_optional_and_scoped_to_the_request() -> None:
    inner = Recorder()
    await call(GrayMiddleware(inner), http_scope(("x-gray", "canary")))
    await call(GrayMiddleware(inner, baggage=True), http_scope(("x-gray", "canary")))
    assert [s["baggage"] for s in inner.seen] == [None, "canary"]
    assert baggage.get_baggage("gray") is None


# -- the deadline header -------------------------------------------------------------------


@pytest.mark.parametrize("factory", [GrayMiddleware, DeadlineMiddleware])
async def test_deadline_header_becomes_the_handlers_deadline(factory: Any) -> None:
    inner = Recorder()
    clock = FrozenClock()
    scope = http_scope(("x-request-timeout-ms", "250"))
    await call(factory(inner, clock=clock), scope)
    (seen,) = inner.seen
    assert seen["remaining"] == pytest.approx(0.25)
    assert seen["outbound"] == {}
    assert seen["scope"][DEADLINE_SCOPE_KEY] is True
    assert DEADLINE_SCOPE_KEY not in scope  # the caller's scope is never changed
    assert remaining() is None


async def test_a_custom_deadline_header_and_turning_it_off() -> None:
    inner = Recorder()
    headers = (("x-budget-ms", "100"), ("x-request-timeout-ms", "5000"))
    await call(GrayMiddleware(inner, deadline_header="X-Budget-Ms"), http_scope(*headers))
    await call(DeadlineMiddleware(inner, header="x-budget-ms"), http_scope(*headers))
    await call(GrayMiddleware(inner, deadline_header=None), http_scope(*headers))
    got = [s["remaining"] for s in inner.seen]
    assert got[0] is not None and 0 < got[0] <= 0.1
    assert got[1] is not None and 0 < got[1] <= 0.1
    assert got[2] is None


class Probe:
    """An ASGI layer that records the scope it passes on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.scopes: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await self.app(scope, receive, send)


@pytest.mark.parametrize("outer_is_gray", [True, False])
async def test_stacked_middlewares_arm_the_deadline_once(outer_is_gray: bool) -> None:
    inner = Recorder()
    clock = FrozenClock()
    if outer_is_gray:
        probe = Probe(DeadlineMiddleware(inner, clock=clock))
        app: Any = GrayMiddleware(probe, clock=clock)
    else:
        probe = Probe(GrayMiddleware(inner, clock=clock))
        app = DeadlineMiddleware(probe, clock=clock)
    await call(app, http_scope(("x-request-timeout-ms", "250"), ("x-gray", "canary")))
    (between,) = probe.scopes
    assert between[DEADLINE_SCOPE_KEY] is True
    # arming copies the scope; the inner middleware saw the mark and passed it on as is
    assert inner.seen[0]["scope"] is between
    assert inner.seen[0]["tag"] == GrayTag("canary", "header")
    assert inner.seen[0]["remaining"] == pytest.approx(0.25)


async def test_an_expired_inbound_budget_answers_504() -> None:
    async def slow() -> None:
        await asyncio.sleep(30)

    sent = await call(GrayMiddleware(Recorder(slow)), http_scope(("x-request-timeout-ms", "20")))
    assert sent[0]["status"] == 504
    assert sent[1]["body"] == b"deadline exceeded\n"


async def test_a_zero_budget_answers_504_at_the_first_await() -> None:
    async def one_await() -> None:
        await asyncio.sleep(0)

    sent = await call(
        DeadlineMiddleware(Recorder(one_await)), http_scope(("x-request-timeout-ms", "0"))
    )
    assert sent[0]["status"] == 504


async def test_an_expiry_after_the_response_started_propagates() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(30)

    with pytest.raises(DeadlineExceeded):
        await call(DeadlineMiddleware(app), http_scope(("x-request-timeout-ms", "20")))


async def test_the_handlers_own_tighter_deadline_is_not_turned_into_504() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with deadline(0.01):
            await asyncio.sleep(30)

    with pytest.raises(DeadlineExceeded):
        await call(GrayMiddleware(app), http_scope(("x-request-timeout-ms", "60000")))


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"deadline_header": "a b"}, "deadline_header"),
        ({"span_attributes": "yes"}, "span_attributes"),
        ({"baggage": 1}, "baggage"),
        ({"clock": 3.0}, "clock"),
        ({"rules": HeaderRule()}, "rules"),
        ({"allow": "canary"}, "allow"),
        ({"deny": ["no way"]}, "deny"),
    ],
)
def test_gray_middleware_options_are_validated_by_name(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        GrayMiddleware(Recorder(), **options)


def test_deadline_middleware_options_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^header "):
        DeadlineMiddleware(Recorder(), header="bad header")
    with pytest.raises(ValueError, match=r"^clock "):
        DeadlineMiddleware(Recorder(), clock="now")  # type: ignore[arg-type]


def test_middlewares_hold_no_per_request_state() -> None:
    for cls in (GrayMiddleware, DeadlineMiddleware):
        assert not hasattr(cls(Recorder()), "__dict__")  # slots: nothing can be added


# -- a real Starlette app --------------------------------------------------------------------


async def test_inside_a_starlette_app() -> None:
    async def handler(request: Request) -> JSONResponse:
        tag = current()
        return JSONResponse({"tag": tag and tag.value, "remaining": remaining()})

    app = Starlette(routes=[Route("/", handler)], middleware=[Middleware(GrayMiddleware)])
    sent = await call(app, http_scope(("x-gray", "canary"), ("x-request-timeout-ms", "5000")))
    assert sent[0]["status"] == 200
    body = sent[1]["body"]
    assert b'"tag":"canary"' in body and b'"remaining":4.' in body
