"""Shadow traffic against real servers: aiohttp stable and candidate on 127.0.0.1, real Redis.

The stable service is the primary, the candidate the gray release; the
records go to a ``JsonlSink`` or a ``RedisStreamSink`` and are read back by
``resilient reconcile``. What the caller gets is checked against what the
primary sent; what the candidate did is checked on what its server saw
(held, gone, never asked), not on how long something took. The one latency
bound is generous: below the candidate's own timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from shadow_support import Service, jsonl_sink, only_operation, read_records, reconcile, traced

from resilient.aiohttp import gray_middleware
from resilient.gray import GrayTag, use
from resilient.http import session
from resilient.shadow import HttpShadow, JsonlSink, RedisStreamSink, flush_writes, record_write
from resilient.shadow._record import call_record
from resilient.testing.servers import RedisServer

Start = Callable[[Service], Awaitable[Service]]


@pytest.fixture
async def services() -> AsyncIterator[Start]:
    started: list[Service] = []

    async def start(service: Service) -> Service:
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[JsonlSink]:
    with jsonl_sink(tmp_path) as jsonl:
        yield jsonl


def answer(payload: object) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(payload)

    return handle


async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (a crashed or misbehaving server)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


# ---------------------------------------------------------------------- the report


async def test_the_report_finds_the_regression_and_not_the_noise(
    services: Start, sink: JsonlSink
) -> None:
    # Both services stamp their answers (the primary differs from itself there);
    # the candidate scores user 7's second item differently: the one regression.
    stamps = itertools.count()

    def feed(request: web.Request, score: float, who: str) -> web.Response:
        user = int(request.path.rsplit("/", 1)[1])
        items = [{"id": 1, "score": 0.5}, {"id": 2, "score": score}]
        return web.json_response(
            {"user": user, "items": items, "generated_at": f"{who}-{next(stamps)}"}
        )

    async def stable(request: web.Request) -> web.StreamResponse:
        return feed(request, 0.7, "stable")

    async def candidate(request: web.Request) -> web.StreamResponse:
        user = int(request.path.rsplit("/", 1)[1])
        return feed(request, 0.9 if user == 7 else 0.7, "candidate")

    primary = await services(Service(stable))
    gray = await services(Service(candidate))
    traces = {}
    async with HttpShadow(gray.url, sample=1.0, noise=1.0, sink=sink, timeout=10.0) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            for user in range(1, 11):
                with traced(0x1000 + user) as trace_id:
                    traces[user] = trace_id
                    async with http.get(f"{primary.url}/feed/{user}") as resp:
                        body = await resp.json()
                assert body["items"][1]["score"] == 0.7  # always the primary's answer
                assert body["generated_at"].startswith("stable-")
        assert await shadow.aflush()
    assert len(gray.seen) == 10
    assert len(primary.seen) == 20  # every mirror asked the primary again (noise=1.0)

    run = reconcile(str(sink.path), "--json")
    assert run.code == 0, run.stderr
    op = only_operation(run.json())
    assert op["operation"] == shadow.shadow.operation
    assert (op["mirrored"], op["mismatches"], op["noise_only"], op["matches"], op["errors"]) == (
        10,
        1,
        9,
        0,
        0,
    )
    assert op["mismatch_rate"] == pytest.approx(0.1)
    assert op["top_paths"] == [
        {"path": "$.body.items[*].score", "count": 1, "example_trace_id": traces[7]}
    ]
    assert [(p["path"], p["count"]) for p in op["noise_paths"]] == [("$.body.generated_at", 10)]
    text = reconcile(str(sink.path)).stdout
    assert "$.body.items[*].score" in text and traces[7] in text


async def test_dual_writes_missing_or_differing_are_found_after_the_grace(
    services: Start, sink: JsonlSink
) -> None:
    # Each service writes the order it is sent; the candidate loses order 3 and
    # writes order 4 with another quantity. Both learn the trace from traceparent.
    async def stable(request: web.Request) -> web.StreamResponse:
        order = await request.json()
        record_write(f"order:{order['id']}", order, side="stable", sink=sink)
        return web.json_response({"ok": True})

    async def candidate(request: web.Request) -> web.StreamResponse:
        order = await request.json()
        if order["id"] == 4:
            order = {**order, "qty": order["qty"] + 1}
        if order["id"] != 3:
            record_write(f"order:{order['id']}", order, side="gray", sink=sink)
        return web.json_response({"ok": True})

    primary = await services(Service(stable, (gray_middleware(),)))
    gray = await services(Service(candidate, (gray_middleware(),)))
    traces = {}
    async with HttpShadow(
        gray.url, sample=1.0, noise=0.0, sink=sink, methods={"POST"}, timeout=10.0
    ) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            with use(GrayTag("canary", "header")):
                for order in range(1, 5):
                    with traced(0x2000 + order) as trace_id:
                        traces[order] = trace_id
                        payload = {"id": order, "qty": 2}
                        async with http.post(f"{primary.url}/orders", json=payload) as resp:
                            assert resp.status == 200
        assert await shadow.aflush()
    assert flush_writes()
    assert len(gray.seen) == 4

    (young,) = reconcile(str(sink.path), "--json", "--grace", "3600").json()["writes"]
    assert (young["judged"], young["matched"], young["differs"], young["missing"]) == (3, 2, 1, 0)
    assert young["pending"] == 1  # order 3 may still be written within the grace

    (late,) = reconcile(str(sink.path), "--json", "--grace", "0").json()["writes"]
    assert (late["operation"], late["gray"]) == ("order", "canary")
    assert (late["judged"], late["matched"], late["differs"], late["missing"]) == (4, 2, 1, 1)
    assert (late["pending"], late["rate"]) == (0, 0.5)
    assert sorted(late["examples"], key=lambda e: e["key"]) == [
        {"key": "order:3", "trace_id": traces[3], "problem": "missing", "sides": ["stable"]},
        {
            "key": "order:4",
            "trace_id": traces[4],
            "problem": "differs",
            "sides": ["gray", "stable"],
        },
    ]
    gated = reconcile(str(sink.path), "--grace", "0", "--fail-above", "0.25")
    assert gated.code == 5
    assert "missing-write rate 0.5000 > 0.25" in gated.stderr


# ---------------------------------------------------------------------- the caller is never hurt


async def test_a_hanging_candidate_is_cut_at_its_timeout_and_the_caller_never_waits(
    services: Start, sink: JsonlSink
) -> None:
    primary = await services(Service(answer({"n": 1})))
    gray: Service = await services(Service(lambda request: gray.hold()))
    shadow = HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=2.0)
    async with shadow, session(shadow=shadow, retries=False) as http:
        started = time.monotonic()
        async with http.get(f"{primary.url}/item") as resp:
            assert await resp.json() == {"n": 1}
        elapsed = time.monotonic() - started
        assert not gray.gone.is_set()  # the candidate was still running
        assert elapsed < 2.0  # the caller did not wait for the candidate's timeout
        assert await shadow.aflush()
    assert gray.gone.is_set()  # its timeout cut the candidate's request
    (rec,) = read_records(sink)
    assert rec["outcome"] == "error" and rec["match"] is None
    assert rec["candidate"]["error"] == "TimeoutError"
    assert rec["candidate"]["latency_ms"] >= 2000.0 > rec["primary"]["latency_ms"]
    assert rec["primary"]["error"] is None


async def test_a_failing_candidate_changes_nothing_for_the_caller(
    services: Start, sink: JsonlSink
) -> None:
    primary = await services(Service(answer({"n": 2})))
    gray = await services(Service(drop_connection))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            for _ in range(3):
                async with http.get(f"{primary.url}/item") as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"n": 2}
        assert await shadow.aflush()
    found = read_records(sink)
    assert [r["outcome"] for r in found] == ["error"] * 3
    assert {r["candidate"]["error"] for r in found} == {"ServerDisconnectedError"}
    assert {r["primary"]["error"] for r in found} == {None}


async def test_a_slow_candidate_changes_nothing_for_the_caller(
    services: Start, sink: JsonlSink
) -> None:
    answered = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        answered.set()
        return web.json_response({"n": 3})

    primary = await services(Service(answer({"n": 3})))
    gray = await services(Service(slow))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            async with http.get(f"{primary.url}/item") as resp:
                assert await resp.json() == {"n": 3}
            assert not answered.is_set()  # the caller had its answer before the candidate's
        assert await shadow.aflush()
    (rec,) = read_records(sink)
    assert rec["outcome"] == "match"
    assert rec["candidate"]["latency_ms"] >= 1000.0 > rec["primary"]["latency_ms"]


async def test_the_primary_failure_reaches_the_caller_as_is(
    services: Start, sink: JsonlSink
) -> None:
    primary = await services(Service(drop_connection))
    gray = await services(Service(answer({"n": 4})))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
        async with session(shadow=shadow, retries=False, breaker=False) as http:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await http.get(f"{primary.url}/item")
        assert await shadow.aflush()
    assert len(primary.seen) == 2  # aiohttp itself sends a GET again on a fresh connection
    assert len(gray.seen) == 1  # one call, one mirror
    (rec,) = read_records(sink)
    assert (rec["outcome"], rec["diffs"]) == ("mismatch", ["$"])
    assert rec["primary"]["error"] == "ServerDisconnectedError"
    assert rec["candidate"]["error"] is None


async def test_a_request_aiohttp_sends_again_is_mirrored_once(
    services: Start, sink: JsonlSink
) -> None:
    # The primary's first connection breaks (a stale keep-alive); aiohttp sends the
    # GET again and it succeeds: the caller sees one call, and so must the report.
    async def flaky(request: web.Request) -> web.StreamResponse:
        if len(primary.seen) == 1:
            return await drop_connection(request)
        return web.json_response({"n": 6})

    primary = await services(Service(flaky))
    gray = await services(Service(answer({"n": 6})))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
        async with (
            session(shadow=shadow, retries=False, breaker=False) as http,
            http.get(f"{primary.url}/item") as resp,
        ):
            assert await resp.json() == {"n": 6}
        assert await shadow.aflush()
    assert (len(primary.seen), len(gray.seen)) == (2, 1)
    (rec,) = read_records(sink)
    assert (rec["outcome"], rec["primary"]["error"]) == ("match", None)


async def test_cancelling_the_caller_stops_the_candidate_long_before_its_timeout(
    services: Start, sink: JsonlSink
) -> None:
    primary: Service = await services(Service(lambda request: primary.hold()))
    gray: Service = await services(Service(lambda request: gray.hold()))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=60.0) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            caller = asyncio.ensure_future(http.get(f"{primary.url}/item"))
            await asyncio.wait_for(asyncio.gather(primary.held.wait(), gray.held.wait()), 10.0)
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await asyncio.wait_for(gray.gone.wait(), 10.0)  # not at its 60 s timeout
        assert await shadow.aflush()
    (rec,) = read_records(sink)
    assert (rec["outcome"], rec["dropped"]) == ("dropped", "cancelled")


async def test_a_full_bulkhead_drops_the_mirror_and_never_sends_it(
    services: Start, sink: JsonlSink
) -> None:
    async def candidate(request: web.Request) -> web.StreamResponse:
        if request.path == "/first":
            return await gray.hold()
        return web.json_response({"n": 5})

    primary = await services(Service(answer({"n": 5})))
    gray = await services(Service(candidate))
    async with HttpShadow(
        gray.url, sample=1.0, noise=0.0, sink=sink, timeout=60.0, bulkhead=1
    ) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            async with http.get(f"{primary.url}/first") as resp:
                assert await resp.json() == {"n": 5}
            await asyncio.wait_for(gray.held.wait(), 10.0)  # the one slot is taken
            with traced(0x5EC) as refused:
                async with http.get(f"{primary.url}/second") as resp:
                    assert await resp.json() == {"n": 5}
            await shadow.aclose()  # ends the held candidate (an error), freeing the slot
            await asyncio.wait_for(gray.gone.wait(), 10.0)
            assert await shadow.aflush()
            async with http.get(f"{primary.url}/third") as resp:
                assert await resp.json() == {"n": 5}
        assert await shadow.aflush()
    assert gray.paths() == ["/first", "/third"]  # /second was never sent, nor queued
    by_trace = {r["trace_id"]: r for r in read_records(sink)}
    assert (by_trace[refused]["outcome"], by_trace[refused]["dropped"]) == ("dropped", "bulkhead")
    assert shadow.shadow.counts["dropped"] == 1
    assert shadow.shadow.counts["match"] == 1  # /third, once the slot was free


async def test_http_shadow_sends_the_candidate_the_same_request(
    services: Start, sink: JsonlSink
) -> None:
    primary = await services(Service(answer({"ok": True})))
    gray = await services(Service(answer({"ok": True})))
    async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
        async with session(shadow=shadow, retries=False) as http:
            with traced(0xABC) as trace_id, use(GrayTag("canary", "header")):
                async with http.get(
                    f"{primary.url}/search?q=tea&page=2", headers={"X-Client": "t1"}
                ) as resp:
                    assert resp.status == 200
                async with http.put(f"{primary.url}/orders/9", data=b'{"qty": 1}') as resp:
                    assert resp.status == 200
                async with http.post(f"{primary.url}/orders", data=b'{"qty": 2}') as resp:
                    assert resp.status == 200  # not idempotent: never mirrored by default
        assert await shadow.aflush()
    assert [(s.method, s.path_qs, s.body) for s in gray.seen] == [
        ("GET", "/search?q=tea&page=2", b""),
        ("PUT", "/orders/9", b'{"qty": 1}'),
    ]
    get = gray.seen[0].headers
    assert get["X-Client"] == "t1"
    assert get["x-gray"] == "canary"
    assert get["traceparent"].split("-")[1] == trace_id
    assert get["Host"] == gray.url.removeprefix("http://")
    own = {"Host", "x-request-timeout-ms"}  # the candidate's host; a deadline counted down
    assert _without(get, own) == _without(primary.seen[0].headers, own)
    put = gray.seen[1].headers
    assert _without(put, own) == _without(primary.seen[1].headers, own)
    found = read_records(sink)
    assert [(r["outcome"], r["trace_id"], r["gray"]) for r in found] == [
        ("match", trace_id, "canary")
    ] * 2


# ---------------------------------------------------------------------- Redis


async def test_redis_stream_sink_and_reconcile_through_a_consumer_group(
    services: Start, redis_server_session: RedisServer
) -> None:
    stream = f"shadow-test:{uuid.uuid4().hex}"
    primary = await services(Service(answer({"price": 10})))

    async def candidate(request: web.Request) -> web.StreamResponse:
        return web.json_response({"price": 11 if request.path == "/b" else 10})

    gray = await services(Service(candidate))
    sink = RedisStreamSink(redis_server_session.url, stream=stream, maxlen=1000)
    try:
        async with HttpShadow(gray.url, sample=1.0, noise=0.0, sink=sink, timeout=10.0) as shadow:
            async with session(shadow=shadow, retries=False) as http:
                for path in ("/a", "/b", "/c"):
                    async with http.get(f"{primary.url}{path}") as resp:
                        assert resp.status == 200
            assert await shadow.aflush()
    finally:
        sink.close()
    assert sink.failures == 0
    url = redis_server_session.url
    run = reconcile(url, "--stream", stream, "--json")
    assert run.code == 0, run.stderr
    op = only_operation(run.json())
    assert (op["mirrored"], op["matches"], op["mismatches"]) == (3, 2, 1)
    assert op["top_paths"][0]["path"] == "$.body.price"
    again = reconcile(url, "--stream", stream, "--json").json()
    assert again["operations"] == []  # each entry is read once per consumer group
    other = reconcile(url, "--stream", stream, "--group", "another", "--json").json()
    assert only_operation(other)["mirrored"] == 3
    client = redis_server_session.client()
    try:
        assert client.xpending(stream, "resilient-reconcile")["pending"] == 0  # acknowledged
    finally:
        client.close()


def test_redis_stream_sink_trims_to_about_maxlen(redis_server_session: RedisServer) -> None:
    stream = f"shadow-test:{uuid.uuid4().hex}"
    sink = RedisStreamSink(redis_server_session.url, stream=stream, maxlen=50)
    try:
        for i in range(300):
            sink.write(_record(float(i), "trimmed", "match"))
    finally:
        sink.close()
    client = redis_server_session.client()
    try:
        length = client.xlen(stream)
    finally:
        client.close()
    # MAXLEN ~ trims whole macro nodes (100 entries by default): never below 50, never exact.
    assert 50 < length < 300
    run = reconcile(redis_server_session.url, "--stream", stream, "--json")
    assert only_operation(run.json())["mirrored"] == length


def test_bad_stream_entries_are_reported_by_id_and_skipped(
    redis_server_session: RedisServer,
) -> None:
    stream = f"shadow-test:{uuid.uuid4().hex}"
    good = _record(1.0, "feed", "match")
    client = redis_server_session.client()
    try:
        ids = [
            client.xadd(stream, {"record": json.dumps(good)}),
            client.xadd(stream, {"record": json.dumps(good)[:25]}),  # truncated
            client.xadd(stream, {"record": json.dumps({**good, "ts": "yesterday"})}),
            client.xadd(stream, {"record": json.dumps({**good, "ts": 10**400})}),
            client.xadd(stream, {"record": json.dumps({**good, "diffs": [1, 2]})}),
            client.xadd(stream, {"record": b"\xff\xfe{"}),  # not UTF-8
            client.xadd(stream, {"record": "[" * 100_000}),  # nested past any parser's depth
            client.xadd(stream, {"other": "field"}),  # not a shadow record
            client.xadd(stream, {"record": json.dumps(good)}),
        ]
    finally:
        client.close()
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    run = reconcile(redis_server_session.url, "--stream", stream, "--json")
    assert run.code == 0
    report = run.json()
    assert only_operation(report)["mirrored"] == 2
    bad = {b["where"]: b["reason"] for b in report["bad_records"]}
    assert list(bad) == [f"{stream} entry {i}" for i in ids[1:-1]]
    assert "ts must be a finite number" in bad[f"{stream} entry {ids[2]}"]
    assert "diffs must be a list of JSON paths" in bad[f"{stream} entry {ids[4]}"]
    for i in ids[1:-1]:
        assert f"{stream} entry {i}" in run.stderr


def _without(headers: dict[str, str], names: set[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


def _record(ts: float, operation: str, outcome: str) -> dict[str, Any]:
    return call_record(
        ts=ts,
        operation=operation,
        trace_id=None,
        gray=None,
        outcome=outcome,
        diffs=[],
        noise=[],
        primary=(0.001, None),
        candidate=(0.002, None),
        dropped=None,
    )
