"""The Starlette front, which shadows the candidate and dual-writes orders.

    python -m examples.shadow.front --stable URL --candidate URL --records FILE

It binds a free loopback port, prints ``listening http://127.0.0.1:<port>``
and serves until SIGTERM (uvicorn's graceful shutdown runs the lifespan's
end, which waits for the mirrors in flight and closes the records file).

- ``GET /quote/{sku}`` asks the stable service through
  ``resilient.http.session(shadow=HttpShadow(candidate, ...))``: half of
  the requests (by the trace id's hash) are mirrored to the candidate in
  the background, and a fifth of those are also sent to the stable service
  a second time, to learn which paths differ between two stable answers.
  The caller always gets the stable answer.
- ``POST /orders/{order}`` is a dual write: the order goes to the stable
  service's store and to the candidate's, and ``record_write`` records a
  digest of each side's stored row under ``order:<id>``, so ``resilient
  reconcile`` can say whether the two stores agree.

``GrayMiddleware`` publishes each request's inbound ``traceparent``, which
is the trace id the records carry (no OpenTelemetry SDK needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import resilient.http
from resilient.asgi import GrayMiddleware
from resilient.shadow import HttpShadow, JsonlSink, flush_writes, record_write


def build_app(stable: str, candidate: str, sink: JsonlSink) -> Starlette:
    shadow = HttpShadow(
        candidate,
        operation="quote",  # the records' name (default: http:<candidate host:port>)
        sample=0.5,  # a high share, so a few hundred requests say enough
        noise=0.2,  # of the mirrored requests, send this share to the stable service again
        timeout=1.0,
        sink=sink,
    )

    async def quote(request: Request) -> JSONResponse:
        session: aiohttp.ClientSession = request.app.state.session
        async with session.get(f"{stable}/quote/{request.path_params['sku']}") as resp:
            return JSONResponse(await resp.json(), status_code=resp.status)

    async def order(request: Request) -> JSONResponse:
        session: aiohttp.ClientSession = request.app.state.session
        key = f"order:{request.path_params['order']}"
        body = await request.json()
        rows = {}
        for side, base in (("stable", stable), ("gray", candidate)):
            async with session.post(
                f"{base}/orders/{request.path_params['order']}", json=body
            ) as r:
                rows[side] = await r.json()
            record_write(key, rows[side], side=side, sink=sink)
        return JSONResponse(rows["stable"], status_code=201)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with shadow, resilient.http.session(shadow=shadow) as session:
            app.state.session = session
            yield
            await shadow.aflush()  # every mirror started is recorded before we exit
        await asyncio.to_thread(flush_writes)
        sink.close()

    return Starlette(
        routes=[
            Route("/quote/{sku:int}", quote),
            Route("/orders/{order}", order, methods=["POST"]),
        ],
        middleware=[Middleware(GrayMiddleware)],
        lifespan=lifespan,
    )


async def serve(stable: str, candidate: str, records: str) -> None:
    app = build_app(stable, candidate, JsonlSink(records))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn exposes a flag, not an event
        if task.done():
            await task  # it failed to start: say why
            return
        await asyncio.sleep(0.01)
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stable", required=True)
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--records", required=True, help="the JSONL file of shadow records")
    args = parser.parse_args()
    asyncio.run(serve(args.stable, args.candidate, args.records))
