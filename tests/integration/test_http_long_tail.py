"""A slow answer at a healthy host is not cut; a hang still is (issue 22).

The learned attempt timeout sees only answers faster than itself, so without
more it would cut a healthy host's slow tail for ever. A real aiohttp server
on 127.0.0.1 answers each request after the delay a test sets, or holds it,
and records the deadline header each attempt carried: the bound in force on
the attempt (``ATTEMPT_PATIENCE`` times the learned bound while the host shows
no hang symptoms). Every assertion is on outcomes and on the bounds the layer
reports, never on how long something took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from resilient.http import AttemptTimeoutError, Retries, Timeouts, session
from resilient.http._attempt import (
    ATTEMPT_FLOOR,
    ATTEMPT_PATIENCE,
    ATTEMPT_TAIL,
    HANG_OVERRUNS,
)
from resilient.hub import Hub

from .test_http_faults import get

HANG = -1.0  # a delay that never ends: the request is held until the client goes


class Server:
    """Answers 200 after ``delay`` seconds (``HANG``: never); counts hits, keeps the headers."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.hits = 0
        self.bounds: list[float] = []  # the deadline header of each request, in seconds
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.bounds.append(int(request.headers["x-request-timeout-ms"]) / 1000)
        if self.delay == HANG:
            await asyncio.Event().wait()
        elif self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(text="ok")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_get("/", srv.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def learned_bound(s: aiohttp.ClientSession, server: Server, answers: int = 40) -> float:
    """Fast answers (spaced, so each is a sample) until the bound is learned: the bound."""
    for _ in range(answers):
        assert await get(s, server.url) == 200
        await asyncio.sleep(0.002)
    assert await get(s, server.url) == 200
    return server.bounds[-1] / ATTEMPT_PATIENCE  # the header carries the patience


async def test_a_slow_answer_the_learned_bound_would_cut_is_not_cut_and_is_learned(
    server: Server,
) -> None:
    async with session(hub=Hub(namespace="auto"), timeouts=Timeouts(total=10.0)) as s:
        bound = await learned_bound(s, server)
        # Learned from fast answers: 50 ms, the floor, on loopback (the header
        # carries the patience beyond it: the layer will wait on).
        assert ATTEMPT_FLOOR * 0.99 <= bound < 0.5
        server.delay = 3 * bound  # past the learned bound, well within its patience
        hits = server.hits
        assert await get(s, server.url) == 200  # not cut ...
        assert server.hits == hits + 1  # ... and not retried
        # The slow answer is the host's tail: once learned again, the bound sits above it.
        server.delay = 0.0
        after = await learned_bound(s, server, answers=100)
        assert after == pytest.approx(ATTEMPT_TAIL * 3 * bound, rel=0.2)

    # What a fixed bound does with the same answer: cuts it, and every retry.
    async with session(hub=Hub(namespace="fixed"), timeouts=Timeouts(attempt=bound)) as s:
        server.delay = 3 * bound
        hits = server.hits
        with pytest.raises(AttemptTimeoutError) as info:
            await get(s, server.url)
        assert info.value.bound == "attempt"
        assert server.hits == hits + 3


async def test_a_hang_is_still_cut_and_at_the_learned_bound_once_the_host_shows_symptoms(
    server: Server,
) -> None:
    hub, timeouts = Hub(namespace="hang"), Timeouts(total=10.0)
    async with session(hub=hub, timeouts=timeouts, retries=Retries(attempts=1)) as s:
        bound = await learned_bound(s, server)
        server.delay = HANG
        cuts = []
        for _ in range(HANG_OVERRUNS + 2):
            with pytest.raises(AttemptTimeoutError) as info:
                await get(s, server.url)
            assert info.value.bound == "attempt"  # cut by the attempt's bound, not the total
            cuts.append(info.value.seconds)
        # A healthy host's first hangs might have been slow answers: given the
        # patience, then cut. From the HANG_OVERRUNS-th on, the host hangs too
        # often for a tail: cut at the learned bound.
        patient = [pytest.approx(ATTEMPT_PATIENCE * bound, rel=0.01)] * (HANG_OVERRUNS - 1)
        assert cuts == [*patient, *[pytest.approx(bound, rel=0.01)] * 3]
        assert server.bounds[-2:] == [pytest.approx(bound, abs=0.002)] * 2  # what they carried
