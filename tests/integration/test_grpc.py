"""The gRPC interceptors against real grpc.aio servers on loopback.

``GrpcUpstream`` (resilient.testing.grpc_upstream) plays the faults: hang,
UNAVAILABLE, slow answers; stopping it mid-call is the connection reset.
A second, small grpc.aio server (generic handlers, bytes in and out, no
generated code) reports what a handler behind ``server_interceptor()``
sees, and forwards onwards: into a second gRPC hop and into
``resilient.http.session`` calls to a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from aiohttp import web

import resilient
from resilient.budget import RetryBudget
from resilient.errors import CircuitOpenError, ConfigError
from resilient.grpc import (
    FAILURE_CODES,
    GrpcCircuitOpenError,
    client_interceptors,
    is_failure,
    server_interceptor,
)
from resilient.http import Retries
from resilient.hub import Hub
from resilient.testing.grpc_upstream import GrpcUpstream

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
GET = "/t.Feed/Get"  # marked idempotent below
POST = "/t.Feed/Post"  # not idempotent
STREAM = "/t.Feed/GetStream"


@pytest.fixture
async def up() -> AsyncIterator[GrpcUpstream]:
    async with GrpcUpstream(rng=random.Random(7)) as server:
        yield server


@pytest.fixture
def hub() -> Hub:
    return Hub(namespace="grpc-test")


def open_channel(target: str, hub: Hub, **options: Any) -> grpc.aio.Channel:
    options.setdefault("idempotent", ("/t.Feed/Get", "/t.Feed/GetStream"))
    return resilient.grpc.channel(target, hub, **options)


async def arrived(up: GrpcUpstream) -> None:
    """Wait until a call is being handled (bounded by the test's timeout)."""
    while up.stats().active == 0:  # noqa: ASYNC110 (a counter of the server's)
        await asyncio.sleep(0.01)


def within(seconds: float) -> float:
    """``seconds`` as a server may see it: gRPC's timeout encoding rounds up (about 1%)."""
    return seconds * 1.015 + 0.005


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


# ---------------------------------------------------------------------- faults


async def test_a_healthy_call_answers_and_counts_a_success(up: GrpcUpstream, hub: Hub) -> None:
    async with open_channel(up.target, hub) as ch:
        assert await ch.unary_unary(GET)(b"hello", timeout=2.0) == b"hello"
    snap = hub.breaker(up.target).snapshot()
    assert (snap.calls, snap.failures) == (1, 0)


async def test_unavailable_is_retried_for_idempotent_methods_only(
    up: GrpcUpstream, hub: Hub
) -> None:
    up.set(error=1.0, status=503)
    async with open_channel(up.target, hub) as ch:
        assert await code_of(ch.unary_unary(GET)(b"x", timeout=2.0)) is grpc.StatusCode.UNAVAILABLE
        assert up.stats().by_path["/t.Feed"] == 3  # attempts=3: the first and two retries
        assert await code_of(ch.unary_unary(POST)(b"x", timeout=2.0)) is grpc.StatusCode.UNAVAILABLE
        assert up.stats().by_path["/t.Feed"] == 4  # not idempotent: one attempt
    assert hub.breaker(up.target).snapshot().failures == 4


async def test_a_retry_refused_by_the_budget_is_not_made(up: GrpcUpstream, hub: Hub) -> None:
    up.set(error=1.0, status=503)
    broke = Retries(budget=lambda: RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0))
    async with open_channel(up.target, hub, retries=broke) as ch:
        for _ in range(3):
            await code_of(ch.unary_unary(GET)(b"x", timeout=2.0))
    # min_per_second * window = 1 retry in the window, and nothing for the requests
    assert up.stats().by_path["/t.Feed"] == 3 + 1


async def test_a_retry_succeeds_when_the_second_attempt_does(up: GrpcUpstream, hub: Hub) -> None:
    up.set(error=0.25, status=503)  # seeded: some first attempts fail, no third one
    async with open_channel(up.target, hub) as ch:
        answers = [await ch.unary_unary(GET)(b"x", timeout=2.0) for _ in range(10)]
    assert answers == [b"x"] * 10
    assert up.stats().by_path["/t.Feed"] > 10


async def test_a_hang_ends_at_the_callers_timeout_as_deadline_exceeded(
    up: GrpcUpstream, hub: Hub
) -> None:
    up.set(hang=1.0)
    async with open_channel(up.target, hub) as ch:
        code = await code_of(ch.unary_unary(POST)(b"x", timeout=0.3))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert hub.breaker(up.target).snapshot().failures == 1


async def test_a_slow_answer_past_the_timeout_fails_and_counts(up: GrpcUpstream, hub: Hub) -> None:
    up.set(latency=0.5)
    async with open_channel(up.target, hub) as ch:
        code = await code_of(ch.unary_unary(POST)(b"x", timeout=0.1))
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        up.set(latency=0.05)
        assert await ch.unary_unary(POST)(b"y", timeout=2.0) == b"y"  # slow, within its time
    snap = hub.breaker(up.target).snapshot()
    assert (snap.calls, snap.failures) == (2, 1)


async def test_a_hang_is_cut_at_the_learned_attempt_timeout_and_retried(
    up: GrpcUpstream, hub: Hub
) -> None:
    up.set(latency=0.002)
    async with open_channel(up.target, hub) as ch:
        get = ch.unary_unary(GET)
        for _ in range(40):  # the target's healthy latency is learned
            await get(b"x", timeout=2.0)
        up.set(latency=0.002, hang=1.0)
        before = up.stats().by_path["/t.Feed"]
        # Hang symptoms build up (4 attempts reaching the bound), then attempts are cut
        # at the learned bound and retried; each call ends long before its 2 s timeout.
        codes = [await code_of(get(b"x", timeout=2.0)) for _ in range(4)]
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert up.stats().by_path["/t.Feed"] - before > 4  # retried


async def test_a_server_stopped_mid_call_fails_the_call_as_unavailable(hub: Hub) -> None:
    up = GrpcUpstream()
    await up.start()
    try:
        up.set(hang=1.0)
        async with open_channel(up.target, hub) as ch:
            call = asyncio.ensure_future(ch.unary_unary(POST)(b"x", timeout=5.0))
            await arrived(up)
            await up.close()
            assert await code_of(call) is grpc.StatusCode.UNAVAILABLE
    finally:
        await up.close()
    assert hub.breaker(up.target).snapshot().failures == 1


async def test_an_open_breaker_rejects_without_sending(up: GrpcUpstream, hub: Hub) -> None:
    up.set(error=1.0, status=503)
    async with open_channel(up.target, hub) as ch:
        post = ch.unary_unary(POST)
        for _ in range(20):  # the HTTP defaults: open when the last 20 calls all failed
            await code_of(post(b"x", timeout=2.0))
        assert hub.breaker(up.target).state is resilient.State.OPEN
        sent = up.stats().total
        with pytest.raises(GrpcCircuitOpenError) as caught:
            await post(b"x", timeout=2.0)
        assert up.stats().total == sent
    err = caught.value
    assert isinstance(err, CircuitOpenError)
    assert isinstance(err, grpc.aio.AioRpcError)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert err.name == up.target and err.retry_after > 0
    assert up.target in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.name, copy.code()) == (err.name, grpc.StatusCode.UNAVAILABLE)


async def test_the_callers_cancellation_is_never_counted(up: GrpcUpstream, hub: Hub) -> None:
    up.set(hang=1.0)
    async with open_channel(up.target, hub) as ch:
        task = asyncio.ensure_future(ch.unary_unary(POST)(b"x", timeout=5.0))
        await arrived(up)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    snap = hub.breaker(up.target).snapshot()
    assert (snap.calls, snap.failures) == (0, 0)


async def test_unary_stream_streams_and_retries_before_the_first_message(
    up: GrpcUpstream, hub: Hub
) -> None:
    up.set(chunks=3)
    async with open_channel(up.target, hub) as ch:
        stream = ch.unary_stream(STREAM)
        assert [m async for m in stream(b"s", timeout=2.0)] == [b"s"] * 3
        up.set(error=1.0, status=503)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [m async for m in stream(b"s", timeout=2.0)]
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert up.stats().by_path["/t.Feed"] == 1 + 3  # retried: idempotent, nothing received
    snap = hub.breaker(up.target).snapshot()
    assert (snap.calls, snap.failures) == (4, 3)


# ---------------------------------------------------------------------- classification

#: The documented table (docs/guides/grpc.md): True = counts against the target.
TABLE = {
    "OK": False,
    "CANCELLED": False,
    "UNKNOWN": True,
    "INVALID_ARGUMENT": False,
    "DEADLINE_EXCEEDED": True,
    "NOT_FOUND": False,
    "ALREADY_EXISTS": False,
    "PERMISSION_DENIED": False,
    "RESOURCE_EXHAUSTED": True,
    "FAILED_PRECONDITION": False,
    "ABORTED": False,
    "OUT_OF_RANGE": False,
    "UNIMPLEMENTED": False,
    "INTERNAL": True,
    "UNAVAILABLE": True,
    "DATA_LOSS": True,
    "UNAUTHENTICATED": False,
}


def test_the_classification_table_covers_every_status() -> None:
    assert set(TABLE) == {code.name for code in grpc.StatusCode}
    for code in grpc.StatusCode:
        assert is_failure(code) is TABLE[code.name], code
    assert {c.name for c in FAILURE_CODES} == {name for name, bad in TABLE.items() if bad}


async def abort_with(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    code = grpc.StatusCode[request.decode()]
    if code is not grpc.StatusCode.OK:
        await context.abort(code, "as asked")
    return b"ok"


@pytest.fixture
async def echo() -> AsyncIterator[Callable[..., Any]]:
    """Start generic-handler servers on free loopback ports: ``await echo(handlers, ...)``."""
    servers: list[grpc.aio.Server] = []

    async def start(
        handlers: dict[str, grpc.RpcMethodHandler], interceptors: tuple[Any, ...] = ()
    ) -> str:
        server = grpc.aio.server(interceptors=interceptors)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


async def test_each_status_is_counted_as_the_table_says(echo: Any, hub: Hub) -> None:
    target = await echo({"Abort": grpc.unary_unary_rpc_method_handler(abort_with)})
    async with open_channel(target, hub, idempotent=()) as ch:
        abort = ch.unary_unary("/t.Echo/Abort")
        for code in grpc.StatusCode:
            br = hub.breaker(target)
            before = br.snapshot().failures
            if code is grpc.StatusCode.OK:
                await abort(b"OK", timeout=2.0)
            else:
                assert await code_of(abort(code.name.encode(), timeout=2.0)) is code
            assert (br.snapshot().failures - before == 1) is TABLE[code.name], code
            br.reset()


# ---------------------------------------------------------------------- propagation


async def seen(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """What a handler behind the server interceptor sees."""
    tag = resilient.gray.current()
    metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    return json.dumps(
        {
            "tag": None if tag is None else [tag.value, tag.rule],
            "remaining": resilient.remaining(),
            "metadata": metadata,
        }
    ).encode()


async def test_deadline_becomes_the_grpc_deadline_clipped_by_the_callers_timeout(
    echo: Any, hub: Hub
) -> None:
    handlers = {"Seen": grpc.unary_unary_rpc_method_handler(seen)}
    target = await echo(handlers, (server_interceptor(),))
    async with open_channel(target, hub) as ch:
        call = ch.unary_unary("/t.Echo/Seen")
        async with resilient.deadline(0.8):
            wide = json.loads(await call(b"", timeout=30.0))
        narrow = None
        async with resilient.deadline(30.0):
            narrow = json.loads(await call(b"", timeout=0.5))
        free = json.loads(await call(b""))
    # (gRPC's wire format rounds a timeout up, by at most about 1%: ``within``)
    assert 0.3 < wide["remaining"] <= within(0.8)  # the ambient deadline, not the 30 s timeout
    assert 0.2 < narrow["remaining"] <= within(0.5)  # the caller's own timeout is tighter
    assert 5.0 < free["remaining"] <= within(resilient.grpc.DEFAULT_TIMEOUT)  # the default


async def test_a_calls_own_timeout_replaces_the_interceptors_default(echo: Any, hub: Hub) -> None:
    handlers = {"Seen": grpc.unary_unary_rpc_method_handler(seen)}
    target = await echo(handlers, (server_interceptor(),))
    async with open_channel(target, hub, timeout=1.0) as ch:
        call = ch.unary_unary("/t.Echo/Seen")
        own = json.loads(await call(b"", timeout=3.0))
        default = json.loads(await call(b""))
    assert 1.0 < own["remaining"] <= within(3.0)
    assert 0.5 < default["remaining"] <= within(1.0)


async def test_a_deadline_too_short_to_be_fair_is_not_counted(up: GrpcUpstream, hub: Hub) -> None:
    up.set(hang=1.0)
    async with open_channel(up.target, hub) as ch:
        with pytest.raises(resilient.DeadlineExceeded):
            async with resilient.deadline(0.05):  # under the breaker's slow limit
                await ch.unary_unary(POST)(b"x", timeout=5.0)
    snap = hub.breaker(up.target).snapshot()
    assert (snap.calls, snap.failures) == (0, 0)


async def test_gray_tag_and_trace_context_go_out_in_metadata(echo: Any, hub: Hub) -> None:
    target = await echo({"Seen": grpc.unary_unary_rpc_method_handler(seen)})
    async with open_channel(target, hub) as ch:
        call = ch.unary_unary("/t.Echo/Seen")
        with resilient.gray.use(resilient.gray.GrayTag("canary", "header")):
            tagged = json.loads(await call(b"", timeout=2.0, metadata=(("x-app", "1"),)))
        stable = json.loads(await call(b"", timeout=2.0))
    assert tagged["metadata"]["x-gray"] == "canary"
    assert tagged["metadata"]["x-app"] == "1"
    assert "x-gray" not in stable["metadata"]
    assert tagged["tag"] is None  # no server interceptor on this one


async def test_a_span_of_this_process_puts_the_gray_member_first(echo: Any, hub: Hub) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")  # a local provider: the global is set once
    target = await echo({"Seen": grpc.unary_unary_rpc_method_handler(seen)})
    async with open_channel(target, hub) as ch:
        call = ch.unary_unary("/t.Echo/Seen")
        with (
            resilient.gray.use(resilient.gray.GrayTag("canary", "header")),
            tracer.start_as_current_span("call") as span,
        ):
            got = json.loads(await call(b"", timeout=2.0))["metadata"]
    ctx = span.get_span_context()
    assert got["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert got["tracestate"] == "gray=canary"
    assert got["x-gray"] == "canary"


async def test_the_server_interceptor_makes_the_tag_ambient_and_forwards_it(
    echo: Any, hub: Hub
) -> None:
    # The last hops: a gRPC server and an aiohttp server that report what they got.
    last_grpc = await echo({"Seen": grpc.unary_unary_rpc_method_handler(seen)})

    async def http_seen(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app = web.Application()
    app.router.add_get("/seen", http_seen)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_url = f"http://127.0.0.1:{runner.addresses[0][1]}/seen"
    onward = open_channel(last_grpc, hub)

    async def middle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        tag = resilient.gray.current()
        grpc_hop = json.loads(await onward.unary_unary("/t.Echo/Seen")(b"", timeout=5.0))
        async with resilient.http.session(hub=hub) as s, s.get(http_url) as resp:
            http_hop = await resp.json()
        return json.dumps(
            {
                "tag": None if tag is None else [tag.value, tag.rule],
                "remaining": resilient.remaining(),
                "grpc": grpc_hop,
                "http": http_hop,
            }
        ).encode()

    first = await echo(
        {"Middle": grpc.unary_unary_rpc_method_handler(middle)}, (server_interceptor(),)
    )
    try:
        async with open_channel(first, hub) as ch:
            call = ch.unary_unary("/t.Echo/Middle")
            by_header = json.loads(await call(b"", timeout=3.0, metadata=(("x-gray", "blue"),)))
            traced = json.loads(
                await call(
                    b"",
                    timeout=3.0,
                    metadata=(("traceparent", TP), ("tracestate", "gray=green,other=1")),
                )
            )
            plain = json.loads(await call(b"", timeout=3.0))
    finally:
        await onward.close()
        await runner.cleanup()
    assert by_header["tag"] == ["blue", "header"]
    assert by_header["remaining"] <= within(3.0)
    assert by_header["grpc"]["metadata"]["x-gray"] == "blue"
    assert by_header["grpc"]["remaining"] is None  # no server interceptor on the last hop
    assert by_header["http"]["x-gray"] == "blue"
    assert 0 < int(by_header["http"]["x-request-timeout-ms"]) <= within(3.0) * 1000  # onwards
    assert traced["tag"] == ["green", "tracestate"]
    # No span here: the trace context passes through byte for byte, the tag in the header.
    assert traced["grpc"]["metadata"]["traceparent"] == TP
    assert traced["grpc"]["metadata"]["tracestate"] == "gray=green,other=1"
    assert traced["grpc"]["metadata"]["x-gray"] == "green"
    assert traced["http"]["traceparent"] == TP
    assert traced["http"]["x-gray"] == "green"
    assert plain["tag"] is None
    assert "x-gray" not in plain["grpc"]["metadata"] and "x-gray" not in plain["http"]


async def test_an_inbound_deadline_that_runs_out_ends_the_call_as_deadline_exceeded(
    echo: Any, hub: Hub
) -> None:
    async def sleepy(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    target = await echo(
        {"Sleepy": grpc.unary_unary_rpc_method_handler(sleepy)}, (server_interceptor(),)
    )
    async with open_channel(target, hub) as ch:
        code = await code_of(ch.unary_unary("/t.Echo/Sleepy")(b"", timeout=0.2))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"target": ""}, "target"),
        ({"target": "h:1", "timeout": 0}, "timeout"),
        ({"target": "h:1", "timeout": float("inf")}, "timeout"),
        ({"target": "h:1", "idempotent": "/t.S/Get"}, "idempotent"),
        ({"target": "h:1", "idempotent": ("t.S/Get",)}, "idempotent"),
        ({"target": "h:1", "gray_header": "x gray"}, "gray_header"),
        ({"target": "h:1", "hub": "nope"}, "hub"),
    ],
)
def test_bad_options_get_a_clear_error(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        client_interceptors(**options)
    assert caught.value.field == field


# ---------------------------------------------------------------------- the chaos engine


async def test_the_chaos_engine_runs_both_grpc_contenders_against_its_process() -> None:
    from resilient.demo import run, scenario
    from resilient.demo._grpc import grpc_baseline, grpc_contender

    short = scenario("outage", rate=20.0, healthy=0.5, faulty=0.5, healed=0.5)
    base, ours = await run(short, [grpc_baseline(0.3), grpc_contender(0.3)], grpc=True)
    for result in (base, ours):
        assert len(result.sent) == 30
        assert result.ok.count(True) >= 15  # the healthy and healed phases
        assert "outage" in result.hits  # counted per contender, by its service name
    # Every request sent in the outage reached the hung upstream (a boundary one may
    # land in the phase beside it) and failed at its 0.3 s timeout.
    assert base.hits["outage"] >= 8
    assert "AioRpcError" in base.kind


def test_idempotent_takes_methods_services_and_callables() -> None:
    from resilient.grpc._client import _idempotent_check

    check = _idempotent_check(("/a.S/Get", "/b.T/"))
    assert check("/a.S/Get") and check("/b.T/Any") and check("/b.T/Other")
    assert not check("/a.S/Post") and not check("/b.TX/Get")
    assert not _idempotent_check(())("/a.S/Get")
    assert _idempotent_check(lambda m: m.endswith("Get"))("/c.U/Get")
