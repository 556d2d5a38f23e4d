"""``resilient.httpx`` against a real upstream on loopback, one fault at a time.

The async client talks to the steerable upstream (the ``upstream`` fixture:
an aiohttp server in this event loop, seeded); the sync client runs in
worker threads (``asyncio.to_thread``) while the loop serves, so both meet
the same real server. Each test checks what the caller sees, what reached
the upstream and the host's breaker. Bounds are generous; load is bounded in
count and time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from resilient.budget import RetryBudget
from resilient.config import BreakerConfig
from resilient.deadline import deadline
from resilient.errors import CircuitOpenError, ConfigError, DeadlineExceeded
from resilient.gray import GrayTag
from resilient.gray._context import Inbound, enter, leave, use
from resilient.http import Retries, Timeouts
from resilient.httpx import AsyncClient, AttemptTimeoutError, Client, HostCircuitOpenError
from resilient.hub import Hub
from resilient.state import State
from resilient.testing.upstream import Upstream

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def hub() -> Hub:
    """A fresh in-memory hub: no breaker state leaks between tests."""
    return Hub(namespace="httpx-tests")


def breaker_name(port: int) -> str:
    return f"127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Counting(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the requests that reach it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def warm_up(client: AsyncClient, url: str, n: int = 40) -> None:
    """Healthy requests, so the host's attempt timeout and slow limit are learned."""
    for _ in range(n):
        assert (await client.get(url)).status_code == 200


async def open_loop(
    client: AsyncClient, url: str, *, rate: float, count: int
) -> list[tuple[str, float]]:
    """``count`` GETs sent at ``rate``/s whatever happens to them: (outcome, seconds) each."""

    async def one() -> tuple[str, float]:
        started = time.monotonic()
        try:
            outcome = str((await client.get(url)).status_code)
        except Exception as exc:
            outcome = type(exc).__name__
        return outcome, time.monotonic() - started

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    return list(await asyncio.gather(*tasks))


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """A real server answering with the headers it received (as JSON), after ``?sleep=``."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------- the clients


async def test_the_clients_are_httpx_clients_and_refuse_bad_options(
    upstream: Upstream, hub: Hub
) -> None:
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        assert isinstance(client, httpx.AsyncClient)
        assert (await client.get(f"{upstream.url}/a")).text == "ok"
        assert client.timeout.connect == 2.0  # sock_connect, clipped to the total
    with Client(hub=hub) as sync:
        assert isinstance(sync, httpx.Client)
    with pytest.raises(ConfigError, match="timeouts="):
        AsyncClient(timeout=1.0)
    with pytest.raises(ConfigError, match="transport= or profile="):
        Client(profile="low-latency", transport=httpx.HTTPTransport())
    with pytest.raises(ConfigError, match="timeouts must be"):
        AsyncClient(timeouts=2.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="retries"):
        Client(retries="many")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the breaker


async def test_connection_refused_opens_the_host_and_then_nothing_is_sent(hub: Hub) -> None:
    port = free_port()
    counting = Counting()
    errors: list[Exception] = []
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0), transport=counting) as client:
        started = time.monotonic()
        for _ in range(40):
            try:
                await client.get(f"http://127.0.0.1:{port}/x")
            except httpx.HTTPError as exc:
                errors.append(exc)
        assert time.monotonic() - started < 5.0
        assert isinstance(errors[0], httpx.ConnectError)
        assert len(errors) == 40
        rejected = [e for e in errors if isinstance(e, HostCircuitOpenError)]
        assert rejected, "the breaker never opened"
        assert all(isinstance(e, CircuitOpenError | httpx.TransportError) for e in rejected)
        assert hub.breaker(breaker_name(port)).state is State.OPEN
        before = counting.sent
        with pytest.raises(HostCircuitOpenError):
            await client.get(f"http://127.0.0.1:{port}/x")
        assert counting.sent == before  # a rejected request reaches no transport


async def test_5xx_are_returned_counted_and_open_the_host(upstream: Upstream, hub: Hub) -> None:
    upstream.set(error=1.0, status=503)
    statuses: list[int] = []
    rejected = 0
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        for _ in range(30):
            try:
                statuses.append((await client.get(upstream.url)).status_code)
            except HostCircuitOpenError:
                rejected += 1
    assert set(statuses) == {503}  # returned as httpx returns them, not raised
    assert rejected > 0
    assert hub.breaker(breaker_name(upstream.port)).state is State.OPEN
    # 4xx is an answer: the host did its job.
    upstream.set(error=1.0, status=404)
    fresh = Hub()
    async with AsyncClient(hub=fresh, timeouts=Timeouts(total=2.0)) as client:
        for _ in range(30):
            assert (await client.get(upstream.url)).status_code == 404
    assert fresh.breaker(breaker_name(upstream.port)).snapshot().failures == 0


async def test_a_hang_trips_the_host_fast_and_few_requests_reach_it(
    upstream: Upstream, hub: Hub
) -> None:
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        await warm_up(client, upstream.url)
        upstream.reset_stats()
        upstream.set(hang=1.0)
        results = await open_loop(client, upstream.url, rate=150, count=120)
        outcomes = [outcome for outcome, _ in results]
        assert "200" not in outcomes
        assert outcomes.count("HostCircuitOpenError") >= 60
        assert max(seconds for _, seconds in results) < 1.0  # nobody waited for the total
        assert hub.breaker(breaker_name(upstream.port)).state in (State.OPEN, State.HALF_OPEN)
        hits = upstream.stats().by_mode.get("hang", 0)
        assert hits <= 60, f"{hits} of 120 requests reached the hung upstream"
        # Healed: a probe closes the host again within a second or so.
        upstream.recover()
        deadline_at = time.monotonic() + 3.0
        while time.monotonic() < deadline_at:
            try:
                if (await client.get(upstream.url)).status_code == 200:
                    break
            except HostCircuitOpenError:
                await asyncio.sleep(0.05)
        assert hub.breaker(breaker_name(upstream.port)).state is State.CLOSED


# ---------------------------------------------------------------------- timeouts and retries


async def test_slow_headers_cost_one_attempt_timeout_per_attempt(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(slow_headers=1.0, header_delay=2.0)
    timeouts = Timeouts(total=3.0, attempt=0.1)
    async with AsyncClient(hub=hub, timeouts=timeouts, retries=Retries(attempts=2)) as client:
        started = time.monotonic()
        with pytest.raises(AttemptTimeoutError) as info:
            await client.get(upstream.url)
        assert time.monotonic() - started < 1.0
        assert info.value.bound == "attempt"
        assert isinstance(info.value, httpx.TimeoutException)
        assert upstream.hits == 2  # a GET is retried once
    # A POST is not retried and has no attempt timeout: the total bounds it.
    upstream.reset_stats()
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=0.4)) as short:
        started = time.monotonic()
        with pytest.raises(AttemptTimeoutError) as info:
            await short.post(upstream.url, content=b"x")
        assert 0.3 < time.monotonic() - started < 1.5
        assert info.value.bound == "total"
        assert upstream.hits == 1


async def test_only_idempotent_requests_are_retried(upstream: Upstream, hub: Hub) -> None:
    upstream.set(error=1.0, status=503)
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        assert (await client.post(upstream.url, content=b"x")).status_code == 503
        assert upstream.hits == 1
        upstream.reset_stats()
        keyed = {"Idempotency-Key": "order-42"}
        assert (await client.post(upstream.url, content=b"x", headers=keyed)).status_code == 503
        assert upstream.hits == 3  # the first attempt and two retries
        upstream.reset_stats()

        async def streamed() -> AsyncIterator[bytes]:
            yield b"x"

        # Idempotent, but a streamed body cannot be sent again.
        assert (await client.put(upstream.url, content=streamed())).status_code == 503
        assert upstream.hits == 1
    async with AsyncClient(hub=Hub(), timeouts=Timeouts(total=2.0), retries=False) as client:
        upstream.reset_stats()
        assert (await client.get(upstream.url)).status_code == 503
        assert upstream.hits == 1


async def test_retries_stay_within_the_hosts_budget(upstream: Upstream, hub: Hub) -> None:
    """Half the requests fail: retries add at most the budget's share, not 2x the load."""
    upstream.set(error=0.5, status=503)
    no_breaker = BreakerConfig(window="count", window_size=1000, minimum_calls=1000)
    small = Retries(budget=lambda: RetryBudget(ratio=0.1, min_per_second=1.0, window=10.0))
    async with AsyncClient(
        hub=hub, timeouts=Timeouts(total=2.0), breaker=no_breaker, retries=small
    ) as client:
        requests = 300
        for _ in range(requests):
            await client.get(upstream.url)
    # 10% of the requests plus 1 a second over the 10 s window; without a budget
    # about 0.5 * 1.5 retries a request (225) would be sent.
    retries = upstream.hits - requests
    assert 0 < retries <= 0.1 * requests + 1.0 * 10.0 + 1


async def test_a_reset_is_a_failure_of_the_host_and_is_retried(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(reset=1.0)
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(upstream.url)
        assert upstream.hits == 3
        snap = hub.breaker(breaker_name(upstream.port)).snapshot()
        assert (snap.calls, snap.failures) == (3, 3)
        upstream.set(close_mid_body=1.0)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(upstream.url)  # the headers came, then the body failed


async def test_the_attempt_bound_does_not_cut_a_body_that_the_total_allows(
    upstream: Upstream, hub: Hub
) -> None:
    upstream.set(slow_body=1.0, chunks=3, chunk_delay=0.2)
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=3.0, attempt=0.1)) as client:
        response = await client.get(upstream.url)
        assert response.text == "chunk 0\nchunk 1\nchunk 2\n"
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=0.3)) as client:
        started = time.monotonic()
        with pytest.raises(AttemptTimeoutError) as info:
            await client.get(upstream.url)  # the body ends by the total
        assert info.value.bound == "total"
        assert time.monotonic() - started < 0.55  # not the 0.6 s the body would take
    sync_body = await asyncio.to_thread(_sync_slow_body, upstream.url, hub)
    assert isinstance(sync_body, AttemptTimeoutError)


def _sync_slow_body(url: str, hub: Hub) -> Exception | None:
    with Client(hub=hub, timeouts=Timeouts(total=0.3)) as client:
        try:
            client.get(url)
        except AttemptTimeoutError as exc:  # a read cannot be cut: checked after each
            return exc
    return None


# ---------------------------------------------------------------------- the deadline


async def test_the_deadline_header_carries_the_tightest_bound(echo: str, hub: Hub) -> None:
    async def budget(client: AsyncClient) -> int:
        return int((await client.get(echo)).json()["x-request-timeout-ms"])

    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0, attempt=None)) as client:
        assert 1500 < await budget(client) <= 2000  # the total bounds the attempt
        async with deadline(0.5):
            assert 300 < await budget(client) <= 500
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=2.0, attempt=0.25)) as client:
        assert 150 < await budget(client) <= 250
        with deadline(0.1):  # tighter than the attempt timeout
            assert 0 <= await budget(client) <= 100
    async with AsyncClient(hub=hub, propagate=False) as client:
        assert "x-request-timeout-ms" not in (await client.get(echo)).json()


async def test_the_deadline_clips_every_timeout_and_is_not_the_hosts_failure(
    echo: str, hub: Hub
) -> None:
    async with AsyncClient(hub=hub, timeouts=Timeouts(total=5.0)) as client:
        for enter_kind in ("async", "sync"):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                if enter_kind == "async":
                    async with deadline(0.2):
                        await client.get(f"{echo}?sleep=3")
                else:  # a sync scope arms no timer: the attempt's timeouts clip to it
                    with deadline(0.2):
                        await client.get(f"{echo}?sleep=3")
            assert time.monotonic() - started < 1.5
    # 0.2 s is less than the slow limit: the host had no fair chance.
    assert hub.breaker(breaker_name(int(echo.split(":")[2].strip("/")))).snapshot().failures == 0


# ---------------------------------------------------------------------- gray propagation


async def test_the_gray_tag_and_the_trace_context_go_out_on_every_attempt(
    echo: str, hub: Hub
) -> None:
    async with AsyncClient(hub=hub) as client:
        with use(GrayTag("canary", "header")):
            tagged = (await client.get(echo)).json()
        stable = (await client.get(echo)).json()
        token = enter(Inbound(GrayTag("canary", "header"), TP, "b7ad6b7169203331", "foo=1,bar=2"))
        try:
            passed = (await client.get(echo)).json()
        finally:
            leave(token)
    assert tagged["x-gray"] == "canary"
    assert "traceparent" not in tagged
    assert "x-gray" not in stable
    assert passed["traceparent"] == TP  # no local span: byte for byte
    assert passed["tracestate"] == "foo=1,bar=2"
    assert passed["x-gray"] == "canary"


# ---------------------------------------------------------------------- the sync client


async def test_the_sync_client_from_several_threads(upstream: Upstream, hub: Hub) -> None:
    threads, each = 8, 25

    def healthy(client: Client) -> list[int]:
        return [client.get(upstream.url).status_code for _ in range(each)]

    def failing(client: Client) -> list[str]:
        outcomes = []
        for _ in range(each):
            try:
                outcomes.append(str(client.get(upstream.url).status_code))
            except HostCircuitOpenError:
                outcomes.append("rejected")
        return outcomes

    def run_all(client: Client, work: object) -> list[list[object]]:
        results: list[list[object]] = [[] for _ in range(threads)]
        barrier = threading.Barrier(threads)

        def worker(i: int) -> None:
            barrier.wait()
            results[i] = work(client)  # type: ignore[operator]

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(30)
        return results

    with Client(hub=hub, timeouts=Timeouts(total=2.0)) as client:
        ok = await asyncio.to_thread(run_all, client, healthy)
        assert [status for part in ok for status in part] == [200] * threads * each
        assert upstream.hits == threads * each  # nothing retried, nothing lost
        upstream.reset_stats()
        upstream.set(error=1.0, status=503)
        bad = await asyncio.to_thread(run_all, client, failing)
        outcomes = [o for part in bad for o in part]
        assert set(outcomes) <= {"503", "rejected"}
        assert outcomes.count("rejected") > threads * each / 2
        assert hub.breaker(breaker_name(upstream.port)).state is State.OPEN
        # Retries stayed inside the budget: far fewer than 3 attempts a request.
        assert upstream.hits < threads * each


async def test_the_sync_client_bounds_attempts_and_deadlines_without_a_loop(
    upstream: Upstream, echo: str, hub: Hub
) -> None:
    upstream.set(slow_headers=1.0, header_delay=2.0)

    def attempts() -> AttemptTimeoutError:
        with Client(hub=hub, timeouts=Timeouts(total=3.0, attempt=0.1)) as client:
            with pytest.raises(AttemptTimeoutError) as info:
                client.get(upstream.url)
            return info.value

    started = time.monotonic()
    error = await asyncio.to_thread(attempts)
    assert time.monotonic() - started < 1.0
    assert error.bound == "attempt"
    assert upstream.hits == 3  # retried twice, each cut at 0.1 s

    def deadlined() -> tuple[int, float]:
        with Client(hub=hub, timeouts=Timeouts(total=5.0)) as client:
            with deadline(0.3):
                sent = json.loads(client.get(echo).text)["x-request-timeout-ms"]
            started = time.monotonic()
            with deadline(0.2), pytest.raises(DeadlineExceeded):
                client.get(f"{echo}?sleep=3")
            return int(sent), time.monotonic() - started

    sent, took = await asyncio.to_thread(deadlined)
    assert 100 < sent <= 300
    assert took < 1.5
