"""Each behaviour of the steerable upstream, seen by a real aiohttp client.

Time bounds are generous (a loaded CI box); what is asserted is what the
client observes (status, header, exception type) and the server's counts.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from resilient.testing.upstream import Behaviour, Upstream, main, spawn_upstream

BOUND = aiohttp.ClientTimeout(total=10)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=BOUND) as session:
        yield session


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with client.get(url) as response:
        return response.status, await response.read()


async def test_healthy_by_default_and_counts_per_path(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    assert await _get(client, f"{upstream.url}/a") == (200, b"ok")
    assert await _get(client, f"{upstream.url}/a?x=1") == (200, b"ok")
    assert await _get(client, f"{upstream.url}/b") == (200, b"ok")
    stats = upstream.stats()
    assert upstream.hits == stats.total == 3
    assert stats.by_path == {"/a": 2, "/b": 1}
    assert stats.by_mode == {"ok": 3}
    assert stats.active == 0
    upstream.reset_stats()
    assert upstream.hits == 0


async def test_fixed_latency_delays_every_answer(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(latency=0.2)
    started = time.monotonic()
    assert (await _get(client, upstream.url))[0] == 200
    assert time.monotonic() - started >= 0.2


def test_latency_distributions_draw_from_the_injected_rng() -> None:
    uniform = Behaviour(latency=0.1, jitter=0.05)
    draws = [uniform.delay(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same draw
    assert all(0.1 <= uniform.delay(random.Random(i)) <= 0.15 for i in range(50))
    tail = Behaviour(latency=0.0, jitter=0.01, distribution="exponential")
    samples = [tail.delay(random.Random(i)) for i in range(200)]
    assert max(samples) > 0.02  # a long tail, unlike uniform's hard cap
    assert Behaviour(latency=0.3).delay(random.Random()) == 0.3


def test_capacity_stretches_the_latency_of_requests_past_it() -> None:
    saturated = Behaviour(latency=0.02, capacity=10)
    rng = random.Random()
    assert [saturated.delay(rng, n) for n in (1, 10)] == [0.02, 0.02]
    assert saturated.delay(rng, 30) == pytest.approx(0.06)  # 3x over capacity, 3x as long
    assert Behaviour(latency=0.02).delay(rng, 1000) == 0.02  # capacity 0: no limit
    assert saturated.healthy.capacity == 10  # a capacity is a profile, not a fault
    with pytest.raises(ValueError, match="capacity"):
        Behaviour(capacity=-1)


async def test_capacity_counts_in_flight_requests_per_path(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(latency=0.5, capacity=2)
    started = time.monotonic()
    # Four at once on /a: the later ones arrive as the 3rd and 4th in flight
    # there and take 1.5x and 2x as long (0.75 s, 1 s); one on /b is alone on its path.
    timed: dict[str, float] = {}

    async def get(url: str, key: str) -> None:
        assert (await _get(client, url))[0] == 200
        timed[key] = time.monotonic() - started

    await asyncio.gather(
        *(get(f"{upstream.url}/a", f"a{i}") for i in range(4)), get(f"{upstream.url}/b", "b")
    )
    assert max(timed.values()) >= 1.0  # the 4th on /a
    assert timed["b"] < 0.9  # 0.5 s: /b's own count was 1


async def test_error_share_is_reproducible_with_a_seeded_rng(client: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with Upstream(Behaviour(error=0.3), rng=random.Random(42)) as up:
            statuses = [(await _get(client, up.url))[0] for _ in range(40)]
            outcomes.append(statuses)
            assert up.stats().by_mode.get("error", 0) == statuses.count(503)
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count(503) < 40


async def test_error_status_and_retry_after(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(error=1.0, status=429, retry_after=3)
    async with client.get(upstream.url) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
    upstream.set(error=1.0)
    async with client.get(upstream.url) as response:
        assert response.status == 503
        assert "Retry-After" not in response.headers


async def test_hang_holds_until_recovered(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(hang=1.0, latency=0.01)
    held = asyncio.ensure_future(_get(client, upstream.url))
    await _until(lambda: upstream.stats().active == 1)
    assert not held.done()
    assert upstream.recover() == Behaviour(latency=0.01)
    assert await asyncio.wait_for(held, 10) == (200, b"ok")
    assert upstream.stats().by_mode == {"hang": 1}


async def test_changing_a_hang_does_not_release_it(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(hang=1.0)
    held = asyncio.ensure_future(_get(client, upstream.url))
    await _until(lambda: upstream.stats().active == 1)
    upstream.set(hang=0.5, error=0.5)  # still hanging some: the held one stays held
    await asyncio.sleep(0.1)
    assert not held.done()
    upstream.set(error=1.0)  # no hangs: released, and it answers 200
    assert await asyncio.wait_for(held, 10) == (200, b"ok")


async def test_hang_ends_when_the_client_goes_away(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(hang=1.0)
    with pytest.raises(TimeoutError):
        async with client.get(upstream.url, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    await _until(lambda: upstream.stats().active == 0)


async def test_close_with_hung_requests_returns_promptly(client: aiohttp.ClientSession) -> None:
    tasks_before = asyncio.all_tasks()
    up = await Upstream(Behaviour(hang=1.0)).start()
    held = [asyncio.ensure_future(_get(client, f"{up.url}/{i}")) for i in range(5)]
    await _until(lambda: up.stats().active == 5)
    started = time.monotonic()
    await up.close()
    assert time.monotonic() - started < 3  # the drop backstop is 5 s
    results = await asyncio.gather(*held, return_exceptions=True)
    assert all(isinstance(r, aiohttp.ClientError) for r in results)
    assert up.stats().active == 0
    assert asyncio.all_tasks() == tasks_before  # no handler task outlives the server


async def test_close_mid_body_is_a_payload_error(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(close_mid_body=1.0)
    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(client, upstream.url)


async def test_slow_headers_delay_the_status_line(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(slow_headers=1.0, header_delay=0.3)
    with pytest.raises(TimeoutError):
        async with client.get(upstream.url, timeout=aiohttp.ClientTimeout(sock_read=0.1)):
            pass
    started = time.monotonic()
    assert await _get(client, upstream.url) == (200, b"ok")
    assert time.monotonic() - started >= 0.3


async def test_slow_body_sends_headers_then_trickles(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(slow_body=1.0, chunks=3, chunk_delay=0.1)
    started = time.monotonic()
    async with client.get(upstream.url) as response:
        headers_after = time.monotonic() - started
        assert response.status == 200
        body = await response.read()
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert time.monotonic() - started >= 0.3
    assert headers_after < time.monotonic() - started
    upstream.set(slow_body=1.0, chunks=3, chunk_delay=0.5)
    with pytest.raises(TimeoutError):
        async with client.get(upstream.url, timeout=aiohttp.ClientTimeout(sock_read=0.2)) as r:
            await r.read()


async def test_reset_is_a_connection_error(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    upstream.set(reset=1.0)
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await _get(client, upstream.url)
    assert caught.value.errno == errno.ECONNRESET
    assert upstream.stats().by_mode == {"reset": upstream.hits}


async def test_control_endpoint_validates_strictly(
    upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    control = f"{upstream.url}/_control"
    bad_bodies = {
        b"not json": "Expecting value",
        b"[1]": "must be a JSON object",
        b'{"hang": 2}': "hang must be in",
        b'{"hang": true}': "hang must be a number",
        b'{"status": 200}': "status must be in",
        b'{"nope": 1}': "unknown behaviour field(s): nope",
        b'{"error": 0.7, "hang": 0.7}': "sum to at most 1",
        b'{"retry_after": "1\\r\\nX: y"}': "retry_after must be",
        b'{"latency": "__import__(\'os\')"}': "latency must be a number",
    }
    for body, message in bad_bodies.items():
        async with client.post(control, data=body) as response:
            assert response.status == 400, body
            assert message in (await response.json())["error"], body
    async with client.post(control, data=b"{" + b" " * 70_000 + b"}") as response:
        assert response.status == 413
    assert upstream.behaviour == Behaviour()  # nothing changed
    async with client.post(control, json={"error": 1.0, "retry_after": "5"}) as response:
        assert response.status == 200
    assert upstream.behaviour == Behaviour(error=1.0, retry_after="5")
    async with client.get(control) as response:
        assert (await response.json())["retry_after"] == "5"
    async with client.get(f"{upstream.url}/_stats") as response:
        assert (await response.json())["total"] == 0  # control routes are not hits


def test_behaviour_rejects_bad_fields_by_name() -> None:
    with pytest.raises(ValueError, match="latency"):
        Behaviour(latency=-1)
    with pytest.raises(ValueError, match="distribution"):
        Behaviour(distribution="normal")
    with pytest.raises(ValueError, match="chunks"):
        Behaviour(chunks=0)
    assert Behaviour(hang=1 / 3, error=1 / 6, reset=1 / 2).pick(0.9999999999) == "reset"


def test_only_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Upstream(host="0.0.0.0")
    assert main(["--host", "0.0.0.0"]) == 2
    assert main(["--behaviour", '{"hang": "all"}']) == 2


async def test_subprocess_upstream_is_steered_over_http(client: aiohttp.ClientSession) -> None:
    with spawn_upstream(seed=3) as up:
        assert up.pid is not None
        assert await _get(client, f"{up.url}/x") == (200, b"ok")
        assert up.set(error=1.0, status=502, retry_after=1) == Behaviour(
            error=1.0, status=502, retry_after="1"
        )
        async with client.get(f"{up.url}/x") as response:
            assert response.status == 502
            assert response.headers["Retry-After"] == "1"
        up.set(hang=1.0)
        held = asyncio.ensure_future(_get(client, f"{up.url}/y"))
        await _until(lambda: up.stats().active == 1)
        up.recover()
        assert await asyncio.wait_for(held, 10) == (200, b"ok")
        stats = up.stats()
        assert stats.by_path == {"/x": 2, "/y": 1}
        assert stats.by_mode == {"ok": 1, "error": 1, "hang": 1}
        with pytest.raises(ValueError, match="unknown behaviour field"):
            up._call("POST", "/_control", {"eval": "1"})
        up.reset_stats()
        assert up.hits == 0
        up.set(hang=1.0)
        still_held = asyncio.ensure_future(_get(client, f"{up.url}/z"))
        await _until(lambda: up.stats().active == 1)
        pid = up.pid
        started = time.monotonic()
    assert time.monotonic() - started < 3  # SIGTERM drops held requests at once
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(still_held, 10)
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a cheap condition on the server's own state, for at most 10 s."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 (a counter, maybe in another process)
            await asyncio.sleep(0.01)
