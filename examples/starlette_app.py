"""Gray traffic in a Starlette app: recognise it, route it, forward it.

    python examples/starlette_app.py           # a short demo against itself, then exit
    python examples/starlette_app.py --serve   # serve on 127.0.0.1:8000 until Ctrl-C

The app sits behind ``resilient.asgi.GrayMiddleware``: a request is gray when
its tracestate has a ``gray`` member, when it sends ``x-gray``, or for 10% of
users by a stable hash of ``x-user-id``. The handler reads
``resilient.gray.current()``, picks the gray pool or the stable pool with
``route()`` (the stable one while the gray pool's breaker is open) and calls
it through ``resilient.http.session()``, which forwards the tag, the trace
context and what is left of the caller's ``x-request-timeout-ms`` budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilient
import resilient.http
from resilient.asgi import GrayMiddleware
from resilient.gray import HeaderRule, PercentageRule, TracestateRule, current, route

RULES = [TracestateRule("gray"), HeaderRule("x-gray"), PercentageRule(10, header="x-user-id")]


def build_app(hub: resilient.Hub, stable_url: str, gray_url: str) -> Starlette:
    gray_host = gray_url.split("//", 1)[1].rstrip("/")  # the HTTP layer's breaker name

    async def feed(request: Request) -> JSONResponse:
        tag = current()
        upstream = route(stable_url, gray_url, breaker=hub.breakers().get(gray_host))
        session: aiohttp.ClientSession = request.app.state.session
        async with session.get(upstream) as resp:
            answer = await resp.json()
        return JSONResponse(
            {
                "gray": None if tag is None else {"tag": tag.value, "rule": tag.rule},
                "budget_left_s": resilient.remaining(),
                "upstream": answer,
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with resilient.http.session(hub=hub) as session:
            app.state.session = session
            yield

    return Starlette(
        routes=[Route("/feed", feed)],
        middleware=[Middleware(GrayMiddleware, rules=RULES, deny=["admin"])],
        lifespan=lifespan,
    )


async def pool(name: str) -> tuple[web.AppRunner, str]:
    """A stand-in upstream pool that says who answered and what it was sent."""

    async def answer(request: web.Request) -> web.Response:
        wanted = ("x-gray", "traceparent", "tracestate", "x-request-timeout-ms")
        return web.json_response(
            {
                "pool": name,
                "received": {h: request.headers[h] for h in wanted if h in request.headers},
            }
        )

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/"


async def main(serve: bool) -> None:
    stable_runner, stable_url = await pool("stable")
    gray_runner, gray_url = await pool("gray")
    hub = resilient.Hub()
    app = build_app(hub, stable_url, gray_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 8000 if serve else 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
            await asyncio.sleep(0.01)
        if serve:
            print(f"serving on http://127.0.0.1:{port}/feed (stable {stable_url}, gray {gray_url})")
            await task
            return
        requests = {
            "stable traffic": {},
            "x-gray header, 800 ms budget": {"x-gray": "canary", "x-request-timeout-ms": "800"},
            "tracestate member, with a trace": {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate": "congo=t61rcWkgMzE,gray=canary",
            },
            "denied value": {"x-gray": "admin"},
            "user u1 (not in the 10%)": {"x-user-id": "u1"},
            "user u4 (in the 10%)": {"x-user-id": "u4"},
        }
        async with aiohttp.ClientSession() as client:
            for title, headers in requests.items():
                async with client.get(f"http://127.0.0.1:{port}/feed", headers=headers) as resp:
                    print(f"== {title}\n{json.dumps(await resp.json(), indent=2)}")
    finally:
        server.should_exit = True
        await task
        await stable_runner.cleanup()
        await gray_runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve on 127.0.0.1:8000")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().serve))
