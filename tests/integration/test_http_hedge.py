"""session(hedge=..., limit=...) against a real aiohttp server on 127.0.0.1.

The server holds the first request of a path until the client goes away and
answers the others at once; every assertion is on what the server saw and
on the session's pool, never on how long something took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from resilient.errors import LimitExceededError
from resilient.hedge import hedge
from resilient.http import session
from resilient.hub import Hub
from resilient.limit import ConcurrencyLimit


class Server:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.gone = asyncio.Event()  # a held request's client went away
        self.held = asyncio.Event()  # a request is being held

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        n = self.hits[path] = self.hits.get(path, 0) + 1
        if n == 1 or path == "/hold":
            self.held.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.gone.set()
                raise
        return web.Response(text=f"answer {n}")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_held_get_is_hedged_the_loser_cancelled_and_its_connection_released(
    server: tuple[Server, str],
) -> None:
    state, url = server
    hub = Hub()
    async with session(hub=hub, hedge=hedge(delay=0.05)) as http:
        async with http.get(f"{url}/item") as response:
            assert response.status == 200
            assert await response.text() == "answer 2"
        await asyncio.wait_for(state.gone.wait(), 10.0)  # the loser's request was dropped
        assert state.hits["/item"] == 2
        assert len(http.connector._acquired) == 0  # type: ignore[union-attr]
        breakers = list(hub.breakers().values())
        assert [b.snapshot().calls for b in breakers] == [1]  # one success, no failure
        assert breakers[0].snapshot().failures == 0


async def test_a_post_is_never_hedged(server: tuple[Server, str]) -> None:
    state, url = server
    async with session(hub=Hub(), hedge=hedge(delay=0.0), retries=False) as http:
        task = asyncio.ensure_future(http.post(f"{url}/order", data=b"x"))
        for _ in range(50):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert state.hits["/order"] == 1


async def test_beyond_the_limit_a_request_is_refused_and_never_sent(
    server: tuple[Server, str],
) -> None:
    state, url = server
    hub = Hub()
    async with session(
        hub=hub, limit=lambda: ConcurrencyLimit(initial=1, min=1, max=1), retries=False
    ) as http:
        held = asyncio.ensure_future(http.get(f"{url}/hold"))
        await asyncio.wait_for(state.held.wait(), 10.0)
        with pytest.raises(LimitExceededError):
            await http.get(f"{url}/hold")
        assert state.hits["/hold"] == 1
        # The host's limit is in the hub under the host's breaker name, for telemetry.
        (name, limit), *others = hub.limits().items()
        assert not others and name in hub.breakers()
        assert (limit.inflight, limit.snapshot().rejected) == (1, 1)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
