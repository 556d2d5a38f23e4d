"""The HTTP layer against a real aiohttp upstream on loopback, one fault at a time.

Each test drives a ``resilient.http.session`` at the steerable upstream (the
``upstream`` fixture: in this event loop, seeded) and checks what the
caller sees, what reached the upstream, the host's breaker, and that every
connection went back to the pool (the connector's own count of connections
in use). Time bounds are generous; load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from resilient.errors import CircuitOpenError, ConfigError
from resilient.http import (
    AttemptTimeoutError,
    HostCircuitOpenError,
    Propagation,
    Retries,
    Timeouts,
    session,
)
from resilient.hub import Hub
from resilient.state import State
from resilient.testing.upstream import Upstream


@pytest.fixture
def hub() -> Hub:
    """A fresh in-memory hub: no breaker state leaks between tests."""
    return Hub(namespace="http-tests")


def in_use(s: aiohttp.ClientSession) -> int:
    """Connections handed out by the session's connector and not yet released."""
    connector = s.connector
    assert isinstance(connector, aiohttp.TCPConnector)
    return len(connector._acquired)


def breaker_of(hub: Hub, up: Upstream) -> str:
    """The name of the upstream's breaker (``host:port``)."""
    return f"127.0.0.1:{up.port}"


async def get(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as resp:
        await resp.read()
        return resp.status


async def warm_up(s: aiohttp.ClientSession, url: str, n: int = 40) -> None:
    """Healthy requests, so the host's attempt timeout and slow limit are learned."""
    for _ in range(n):
        assert await get(s, url) == 200


async def open_loop(
    s: aiohttp.ClientSession, url: str, *, rate: float, count: int
) -> list[tuple[str, float]]:
    """``count`` GETs sent at ``rate``/s whatever happens to them: (outcome, seconds) each."""

    async def one() -> tuple[str, float]:
        started = time.monotonic()
        try:
            outcome = str(await get(s, url))
        except Exception as exc:
            outcome = type(exc).__name__
        return outcome, time.monotonic() - started

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    return list(await asyncio.gather(*tasks))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_session_is_a_real_client_session_with_the_profile_and_timeouts(
    upstream: Upstream, hub: Hub
) -> None:
    async with session(hub=hub, timeouts=Timeouts(connect=0.5, total=2.0)) as s:
        assert type(s) is aiohttp.ClientSession
        # The total is the pipeline's to keep (the body included), not aiohttp's.
        assert s.timeout == aiohttp.ClientTimeout(total=None, connect=0.5, sock_connect=2.0)
        connector = s.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert (connector.limit, connector.limit_per_host) == (100, 50)
        assert await get(s, f"{upstream.url}/a") == 200
        assert in_use(s) == 0
    assert s.closed


async def test_connection_refused_fails_fast_then_the_host_opens_without_connecting(
    hub: Hub,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/x"
    connects = 0

    async def count_connect(*_: object) -> None:
        nonlocal connects
        connects += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(count_connect)
    errors: list[Exception] = []
    async with session(hub=hub, timeouts=Timeouts(total=2.0), trace_configs=[trace]) as s:
        started = time.monotonic()
        for _ in range(40):
            try:
                await get(s, url)
            except aiohttp.ClientError as exc:
                errors.append(exc)
        assert time.monotonic() - started < 5.0
        assert isinstance(errors[0], aiohttp.ClientConnectorError)
        assert len(errors) == 40
        rejected = [e for e in errors if isinstance(e, HostCircuitOpenError)]
        assert rejected, "the breaker never opened"
        assert all(isinstance(e, CircuitOpenError) for e in rejected)
        assert hub.breaker(f"127.0.0.1:{port}").state is State.OPEN
        before = connects
        with pytest.raises(HostCircuitOpenError):
            await get(s, url)
        assert connects == before  # a rejected request opens no connection
        assert in_use(s) == 0


async def test_slow_headers_cost_one_attempt_timeout_per_attempt(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(slow_headers=1.0, header_delay=2.0)
    timeouts = Timeouts(total=3.0, attempt=0.1)
    async with session(hub=hub, timeouts=timeouts, retries=Retries(attempts=2)) as s:
        started = time.monotonic()
        with pytest.raises(AttemptTimeoutError) as info:
            await get(s, upstream.url)
        assert time.monotonic() - started < 1.0
        assert info.value.bound == "attempt"
        assert isinstance(info.value, TimeoutError)
        assert upstream.hits == 2  # GET is retried once
        # A POST is not retried and has no attempt timeout: the total bounds it.
        upstream.reset_stats()
        started = time.monotonic()
        async with session(hub=hub, timeouts=Timeouts(total=0.4)) as short:
            with pytest.raises(TimeoutError):
                async with short.post(upstream.url, data=b"x") as resp:
                    await resp.read()
            assert 0.3 < time.monotonic() - started < 1.5
            assert upstream.hits == 1
            assert in_use(short) == 0
        assert in_use(s) == 0


async def test_a_hung_post_fails_at_the_total_as_a_failure_of_the_host(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(hang=1.0)
    async with session(hub=hub, timeouts=Timeouts(total=0.5)) as s:
        started = time.monotonic()
        with pytest.raises(AttemptTimeoutError) as info:
            async with s.post(upstream.url, data=b"x"):
                pass
        assert 0.4 < time.monotonic() - started < 1.5  # the total, not aiohttp's own timer
        assert info.value.bound == "total"
        assert in_use(s) == 0
        assert hub.breaker(breaker_of(hub, upstream)).snapshot().failures == 1
        assert upstream.hits == 1  # not retried


async def test_an_attempt_with_no_time_left_is_neither_sent_nor_counted(
    upstream: Upstream, hub: Hub
) -> None:
    from resilient.deadline import deadline
    from resilient.errors import DeadlineExceeded

    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        assert await get(s, upstream.url) == 200
        upstream.reset_stats()
        with deadline(0.0), pytest.raises(DeadlineExceeded):  # a plain with: no timer
            await get(s, upstream.url)
        assert upstream.hits == 0
        snap = hub.breaker(breaker_of(hub, upstream)).snapshot()
        assert (snap.calls, snap.failures, snap.running) == (1, 0, 0)  # no ticket left behind


async def test_a_rejected_attempt_leaves_no_bound_behind_to_cut_the_task_later(
    upstream: Upstream, hub: Hub
) -> None:
    async with session(hub=hub, timeouts=Timeouts(total=2.0, attempt=0.05)) as s:
        assert await get(s, upstream.url) == 200
        hub.breaker(breaker_of(hub, upstream)).force_open()
        with pytest.raises(HostCircuitOpenError):
            await get(s, upstream.url)
        await asyncio.sleep(0.2)  # past the attempt's bound: a leftover would cancel this


async def test_slow_body_is_bounded_by_sock_read_and_by_the_deadline(
    upstream: Upstream, hub: Hub
) -> None:
    from resilient.deadline import deadline
    from resilient.errors import DeadlineExceeded

    upstream.set(slow_body=1.0, chunks=5, chunk_delay=0.5)
    async with session(hub=hub, timeouts=Timeouts(total=5.0, sock_read=0.2)) as s:
        async with s.get(upstream.url) as resp:
            assert resp.status == 200  # the headers came at once
            with pytest.raises(aiohttp.ServerTimeoutError):
                await resp.read()
        assert in_use(s) == 0
    async with session(hub=hub, timeouts=Timeouts(total=5.0)) as s:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            async with deadline(0.3), s.get(upstream.url) as resp:
                await resp.read()
        assert time.monotonic() - started < 1.5
        assert in_use(s) == 0


async def test_slow_body_is_bounded_by_the_total_in_whichever_task_reads_it(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(slow_body=1.0, chunks=10, chunk_delay=0.3)  # 3 s of body
    async with session(hub=hub, timeouts=Timeouts(total=1.0)) as s:
        started = time.monotonic()
        async with s.get(upstream.url) as resp:
            assert resp.status == 200  # the headers came at once
            with pytest.raises(AttemptTimeoutError) as caught:
                await resp.read()
        assert 0.9 < time.monotonic() - started < 1.8
        assert caught.value.bound == "total"
        assert isinstance(caught.value, asyncio.TimeoutError)  # as aiohttp's own total was
        assert in_use(s) == 0

        # Read by another task, chunk by chunk: the read waiting at the total fails.
        resp = await s.get(upstream.url)
        chunks = 0

        async def drain() -> None:
            nonlocal chunks
            async for _ in resp.content.iter_any():
                chunks += 1

        reader = asyncio.create_task(drain())
        with pytest.raises(AttemptTimeoutError):
            await reader
        assert 1 <= chunks < 10
        with pytest.raises(AttemptTimeoutError):  # and every later read
            await resp.read()
        resp.release()
        assert in_use(s) == 0


async def test_a_body_that_ends_in_time_is_not_cut_later(upstream: Upstream, hub: Hub) -> None:
    upstream.set(slow_body=1.0, chunks=3, chunk_delay=0.1)
    async with session(hub=hub, timeouts=Timeouts(total=0.6)) as s:
        async with s.get(upstream.url) as resp:
            body = await resp.read()
            await asyncio.sleep(0.5)  # past the request's expiry
            assert len(body) > 0 and resp.content.exception() is None
        upstream.recover()
        assert await get(s, upstream.url) == 200
        assert in_use(s) == 0


async def test_hang_trips_the_host_fast_and_few_requests_reach_it(
    upstream: Upstream, hub: Hub
) -> None:
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        await warm_up(s, upstream.url)
        upstream.reset_stats()
        upstream.set(hang=1.0)
        results = await open_loop(s, upstream.url, rate=150, count=120)
        outcomes = [outcome for outcome, _ in results]
        assert "200" not in outcomes
        assert outcomes.count("HostCircuitOpenError") >= 60
        assert max(seconds for _, seconds in results) < 1.0  # nobody waited for the total
        assert hub.breaker(breaker_of(hub, upstream)).state in (State.OPEN, State.HALF_OPEN)
        hits = upstream.stats().by_mode.get("hang", 0)
        assert hits <= 60, f"{hits} of 120 requests reached the hung upstream"
        assert in_use(s) == 0


async def test_5xx_burst_is_returned_counted_and_opens_the_host(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(error=1.0, status=503)
    statuses: list[int] = []
    rejected = 0
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        for _ in range(60):
            try:
                statuses.append(await get(s, upstream.url))
            except HostCircuitOpenError as exc:
                rejected += 1
                assert exc.name == breaker_of(hub, upstream)
                assert exc.retry_after > 0
        assert set(statuses) == {503}  # returned as aiohttp returns them, never raised
        assert rejected >= 30
        assert upstream.hits <= 20, f"{upstream.hits} requests reached the failing upstream"
        assert in_use(s) == 0


async def test_4xx_is_an_answer_not_a_failure(upstream: Upstream, hub: Hub) -> None:
    upstream.set(error=1.0, status=404)
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        statuses = [await get(s, upstream.url) for _ in range(30)]
    assert statuses == [404] * 30
    assert upstream.hits == 30  # not retried
    snap = hub.breaker(breaker_of(hub, upstream)).snapshot()
    assert snap.state is State.CLOSED and snap.failures == 0


async def test_429_with_retry_after_is_waited_for_when_it_fits_the_budget(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(error=1.0, status=429, retry_after="1")
    async with session(hub=hub, timeouts=Timeouts(total=3.0), retries=Retries(attempts=2)) as s:
        started = time.monotonic()
        assert await get(s, upstream.url) == 429
        assert time.monotonic() - started >= 1.0
        assert upstream.hits == 2
        # A Retry-After longer than what is left of the total: no retry, no wait.
        upstream.set(error=1.0, status=429, retry_after="30")
        upstream.reset_stats()
        started = time.monotonic()
        assert await get(s, upstream.url) == 429
        assert time.monotonic() - started < 0.5
        assert upstream.hits == 1
        assert in_use(s) == 0


async def test_connection_closed_mid_body_and_reset_release_the_connection(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(close_mid_body=1.0)
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        async with s.get(upstream.url) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert in_use(s) == 0
        upstream.set(reset=1.0)
        upstream.reset_stats()
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(s, upstream.url)
        assert 2 <= upstream.hits <= 6  # retried within the attempts (aiohttp adds one pass)
        assert in_use(s) == 0


async def test_recovery_closes_the_host_within_a_second(upstream: Upstream, hub: Hub) -> None:
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        await warm_up(s, upstream.url)
        upstream.set(error=1.0, status=503)
        for _ in range(40):
            try:
                await get(s, upstream.url)
            except HostCircuitOpenError:
                break
        else:
            pytest.fail("the breaker never opened")
        upstream.recover()
        healed = time.monotonic()
        while True:
            try:
                assert await get(s, upstream.url) == 200
                break
            except HostCircuitOpenError:
                assert time.monotonic() - healed < 1.5, "still open 1.5 s after the heal"
                await asyncio.sleep(0.02)
        assert hub.breaker(breaker_of(hub, upstream)).state is State.CLOSED
        assert in_use(s) == 0


async def test_cancelled_and_cut_requests_release_their_connections(
    upstream: Upstream, hub: Hub
) -> None:
    async with session(hub=hub, timeouts=Timeouts(total=5.0)) as s:
        await warm_up(s, upstream.url)  # the slow limit is learned: 0.2 s here
        upstream.set(hang=1.0)
        tasks = [asyncio.create_task(get(s, upstream.url)) for _ in range(5)]
        await asyncio.sleep(0.02)
        assert in_use(s) == 5
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert in_use(s) == 0
        br = hub.breaker(breaker_of(hub, upstream))
        assert br.snapshot().failures == 0  # the caller's cancellation is not the host's failure

        # POSTs have no attempt timeout: hung, they are cut when the breaker opens.
        async def post() -> int:
            async with s.post(upstream.url, data=b"x") as resp:
                return resp.status

        posts = [asyncio.create_task(post()) for _ in range(5)]
        await asyncio.sleep(0.4)  # past the slow limit
        started = time.monotonic()
        gets = await open_loop(s, upstream.url, rate=200, count=40)  # they open it
        assert "HostCircuitOpenError" in [outcome for outcome, _ in gets]
        cut = await asyncio.gather(*posts, return_exceptions=True)
        assert all(isinstance(r, HostCircuitOpenError) for r in cut), cut
        assert time.monotonic() - started < 1.5  # cut at once, not left to the total
        assert in_use(s) == 0


async def test_per_route_breakers_are_named_by_path(upstream: Upstream, hub: Hub) -> None:
    async with session(hub=hub, timeouts=Timeouts(total=2.0), per="route") as s:
        assert await get(s, f"{upstream.url}/a/b") == 200
        assert await get(s, f"{upstream.url}/c") == 200
    names = set(hub.breakers())
    assert names == {f"127.0.0.1:{upstream.port}/a/b", f"127.0.0.1:{upstream.port}/c"}


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A real server that answers with the deadline header it received, after ``?sleep=``."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.Response(text=request.headers.get("x-request-timeout-ms", "-"))

    app = web.Application()

    async def budget(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("x-budget-ms", "-"))

    app.router.add_get("/", handler)
    app.router.add_get("/budget", budget)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def _header(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as resp:
        return await resp.text()


async def test_deadline_header_carries_the_tightest_bound_on_the_attempt(
    echo: str, hub: Hub
) -> None:
    from resilient.deadline import deadline

    async with session(hub=hub, timeouts=Timeouts(total=2.0, attempt=None)) as s:
        # No deadline and no attempt timeout: the total bounds the attempt.
        assert 1500 < int(await _header(s, echo)) <= 2000
        async with deadline(0.5):
            assert 300 < int(await _header(s, echo)) <= 500
    async with session(hub=hub, timeouts=Timeouts(total=2.0, attempt=0.25)) as s:
        assert 150 < int(await _header(s, echo)) <= 250
        async with deadline(0.1):  # tighter than the attempt timeout
            assert 0 <= int(await _header(s, echo)) <= 100


async def test_stacked_middlewares_hand_the_bound_to_a_later_deadline_header(
    echo: str, hub: Hub
) -> None:
    from resilient.http import attempt_bound, deadline_propagation, timeout_middleware

    middlewares = (
        timeout_middleware(Timeouts(total=2.0, attempt=0.25)),
        deadline_propagation(bound=attempt_bound),
    )
    async with aiohttp.ClientSession(middlewares=middlewares) as s:
        assert 150 < int(await _header(s, echo)) <= 250
    async with session(hub=hub, timeouts=Timeouts(total=2.0, attempt=0.25), propagate=False) as s:
        assert await _header(s, echo) == "-"  # nothing written by the session itself
    renamed = Propagation(deadline_header="x-budget-ms")
    async with session(hub=hub, timeouts=Timeouts(total=2.0, attempt=0.25), propagate=renamed) as s:
        assert await _header(s, echo) == "-"  # the echo reads x-request-timeout-ms only
        async with s.get(f"{echo}budget") as resp:
            assert 150 < int(await resp.text()) <= 250
    with pytest.raises(ConfigError, match="propagate"):
        session(hub=hub, propagate="yes")  # type: ignore[arg-type]


async def test_the_deadline_clips_every_timeout_and_is_not_the_hosts_failure(
    echo: str, hub: Hub
) -> None:
    from resilient.deadline import deadline
    from resilient.errors import DeadlineExceeded

    async with session(hub=hub, timeouts=Timeouts(total=5.0)) as s:
        for enter in ("async", "sync"):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                if enter == "async":
                    async with deadline(0.2):
                        await _header(s, f"{echo}?sleep=3")
                else:  # a sync scope arms no timer: the attempt timer clips to it
                    with deadline(0.2):
                        await _header(s, f"{echo}?sleep=3")
            assert time.monotonic() - started < 1.5
            assert in_use(s) == 0
        name = next(iter(hub.breakers()))
        # 0.2 s is less than the slow limit: the host had no fair chance.
        assert hub.breaker(name).snapshot().failures == 0


async def test_only_idempotent_requests_are_retried(upstream: Upstream, hub: Hub) -> None:
    upstream.set(error=1.0, status=503)
    async with session(hub=hub, timeouts=Timeouts(total=2.0)) as s:
        async with s.post(upstream.url, data=b"x") as resp:
            assert resp.status == 503
        assert upstream.hits == 1
        upstream.reset_stats()
        headers = {"Idempotency-Key": "order-42"}
        async with s.post(upstream.url, data=b"x", headers=headers) as resp:
            assert resp.status == 503
        assert upstream.hits == 3  # the first attempt and two retries
        upstream.reset_stats()
        async with s.put(upstream.url, data=b"x") as resp:
            assert resp.status == 503
        # Every attempt counts in the host's streak, the POST's too: the PUT's
        # first attempt is the fifth failure in a row, so it is not retried.
        assert upstream.hits == 1
    async with session(hub=Hub(), timeouts=Timeouts(total=2.0), retries=False) as s:
        upstream.reset_stats()
        assert await get(s, upstream.url) == 503
        assert upstream.hits == 1


async def test_the_middlewares_work_alone_in_a_plain_session(upstream: Upstream, hub: Hub) -> None:
    from resilient.http import (
        breaker_middleware,
        deadline_propagation,
        retry_middleware,
        timeout_middleware,
    )

    middlewares = (
        retry_middleware(),
        breaker_middleware(hub),
        timeout_middleware(Timeouts(total=2.0)),
        deadline_propagation(),
    )
    upstream.set(error=1.0, status=500)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=2.0), middlewares=middlewares
    ) as s:
        rejected = 0
        for _ in range(40):
            try:
                assert await get(s, upstream.url) == 500
            except HostCircuitOpenError:
                rejected += 1
        assert rejected >= 10
        assert upstream.hits <= 25
        assert in_use(s) == 0
