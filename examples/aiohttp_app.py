"""Gray traffic in an aiohttp server: recognise it, expose it, forward it.

    python examples/aiohttp_app.py           # a short demo against itself, then exit
    python examples/aiohttp_app.py --serve   # serve on 127.0.0.1:8080 until Ctrl-C

``resilient.aiohttp.gray_middleware()`` recognises gray traffic (a ``gray``
tracestate member, an ``x-gray`` header, or a ``lane`` cookie set by your
canary rollout) and arms the inbound ``x-request-timeout-ms`` as a deadline.
The handler reads ``resilient.gray.current()`` and calls a downstream through
a plain ``aiohttp.ClientSession`` with ``resilient.http.propagation()`` as its
client middleware, which writes the tag (header, and tracestate member where
this process takes part in the trace) and the budget left. Other clients
(httpx, gRPC metadata) use ``resilient.gray.inject(headers)`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

import resilient
from resilient.aiohttp import gray_middleware
from resilient.gray import CookieRule, HeaderRule, TracestateRule, current, inject
from resilient.http import propagation

SESSION = web.AppKey("session", aiohttp.ClientSession)
DOWNSTREAM = web.AppKey("downstream", str)


async def checkout(request: web.Request) -> web.Response:
    tag = current()
    session = request.app[SESSION]
    async with session.get(request.app[DOWNSTREAM]) as resp:
        downstream = await resp.json()
    return web.json_response(
        {
            "gray": None if tag is None else {"tag": tag.value, "rule": tag.rule},
            "budget_left_s": resilient.remaining(),
            "downstream_received": downstream,
            "inject_would_write": inject({}),
        }
    )


def build_app(downstream_url: str) -> web.Application:
    rules = [TracestateRule(), HeaderRule(), CookieRule("lane")]
    app = web.Application(middlewares=[gray_middleware(rules=rules, allow=["canary", "beta"])])
    app[DOWNSTREAM] = downstream_url

    async def client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(middlewares=[propagation()]) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client)
    app.router.add_get("/checkout", checkout)
    return app


async def echo(request: web.Request) -> web.Response:
    wanted = ("x-gray", "traceparent", "tracestate", "x-request-timeout-ms")
    return web.json_response({h: request.headers[h] for h in wanted if h in request.headers})


async def start(app: web.Application, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    host, bound = runner.addresses[0][:2]
    return runner, f"http://{host}:{bound}/"


async def main(serve: bool) -> None:
    echo_app = web.Application()
    echo_app.router.add_get("/", echo)
    echo_runner, echo_url = await start(echo_app, 0)
    runner, url = await start(build_app(echo_url), 8080 if serve else 0)
    try:
        if serve:
            print(f"serving on {url}checkout (downstream {echo_url})")
            await asyncio.Event().wait()
        requests = {
            "stable traffic": {},
            "cookie lane=beta, 300 ms budget": {
                "cookie": "session=abc; lane=beta",
                "x-request-timeout-ms": "300",
            },
            "tracestate member (passed through: no span here)": {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "tracestate": "rojo=00f067aa0ba902b7,gray=canary",
            },
            "not on the allow list": {"x-gray": "whatever"},
            "malformed everything": {
                "traceparent": "00-zz",
                "x-gray": "a,b",
                "x-request-timeout-ms": "soon",
            },
        }
        async with aiohttp.ClientSession() as client:
            for title, headers in requests.items():
                async with client.get(url + "checkout", headers=headers) as resp:
                    print(f"== {title} -> {resp.status}\n{json.dumps(await resp.json(), indent=2)}")
    finally:
        await runner.cleanup()
        await echo_runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve on 127.0.0.1:8080")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().serve))
