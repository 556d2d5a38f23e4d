"""Policy against a real aiohttp upstream on loopback that fails, then recovers.

The upstream is ``resilient.testing.upstream.Upstream`` (a real aiohttp server
on 127.0.0.1); the client is a plain ``aiohttp.ClientSession``. The breaker's
clock is injected so its open duration passes without waiting; the network
and the per-attempt timeouts are real, with generous bounds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from resilient.breaker import CircuitBreaker
from resilient.budget import RetryBudget
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError
from resilient.policy import Policy
from resilient.retry import retry
from resilient.state import State
from resilient.testing.upstream import Upstream

# Four calls in a count window, half failed: open for 5 s (of the fake clock).
CONFIG = BreakerConfig(
    window="count", window_size=4, minimum_calls=4, half_open_calls=2, open_duration=5.0
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def no_wait(state: object) -> float:
    return 0.0


def client(
    session: aiohttp.ClientSession, url: str, policy: Policy
) -> Callable[[], Awaitable[str]]:
    @policy
    async def get_feed() -> str:
        async with session.get(f"{url}/feed", raise_for_status=True) as response:
            return await response.text()

    return get_feed


async def test_errors_open_the_breaker_and_recovery_closes_it(upstream: Upstream) -> None:
    clock = FakeClock()
    br = CircuitBreaker("upstream-errors", CONFIG, clock=clock, rng=lambda: 0.5)
    policy = Policy(
        breaker=br,
        retry=retry(attempts=3, on=aiohttp.ClientError, wait=no_wait, budget=RetryBudget()),
        timeout=10.0,
    )
    async with aiohttp.ClientSession() as session:
        get_feed = client(session, upstream.url, policy)
        assert await get_feed() == "ok"

        upstream.set(error=1.0)  # every request: 503
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await get_feed()
        assert caught.value.status == 503
        assert upstream.hits == 4  # one healthy call, then three attempts
        assert br.state is State.OPEN  # 3 failures in 4 calls

        with pytest.raises(CircuitOpenError):
            await get_feed()
        assert upstream.hits == 4  # rejected without a request, and not retried

        upstream.recover()
        clock.now += 10.0  # past the open duration (and its jitter)
        assert [await get_feed() for _ in range(2)] == ["ok", "ok"]  # the probes
        assert br.snapshot().state is State.CLOSED
        assert await get_feed() == "ok"
        assert upstream.hits == 7


async def test_a_hung_upstream_is_cut_by_the_timeout_and_then_left_alone(
    upstream: Upstream,
) -> None:
    clock = FakeClock()
    br = CircuitBreaker("upstream-hangs", CONFIG, clock=clock, rng=lambda: 0.5)
    policy = Policy(breaker=br, retry=retry(attempts=2, wait=no_wait), timeout=0.1)
    async with aiohttp.ClientSession() as session:
        get_feed = client(session, upstream.url, policy)
        assert await get_feed() == "ok"

        upstream.set(hang=1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # two attempts, each cut after 0.1 s
            await get_feed()
        # The next call's first attempt times out too, which opens the breaker (3
        # failures in 4 calls): its retry is rejected, and the rejection is what it raises.
        with pytest.raises(CircuitOpenError):
            await get_feed()
        assert time.monotonic() - started < 10.0
        assert br.state is State.OPEN
        hung_hits = upstream.hits
        assert hung_hits == 1 + 3

        for _ in range(5):
            with pytest.raises(CircuitOpenError):
                await get_feed()
        assert upstream.hits == hung_hits

        upstream.recover()
        clock.now += 10.0
        assert [await get_feed() for _ in range(3)] == ["ok"] * 3
        assert br.snapshot().state is State.CLOSED
