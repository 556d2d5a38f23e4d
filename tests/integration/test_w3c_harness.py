"""The W3C trace-context suite's protocol on loopback, with the suite's cases (``w3c_cases``).

What the suite's harness does (w3c/trace-context test/test.py, at the
revision in ``w3c_cases.REVISION``), in-process and on loopback: it POSTs a
JSON list of callbacks to the service with a case's header lines, and the
service calls each callback URL back. The service is what DESIGN.md names: a
plain ASGI app under ``resilient.asgi.GrayMiddleware`` (uvicorn), calling back
through ``resilient.http.session()``; the headers the harness receives are
judged as the suite judges them. Two modes:

* pass-through, no span: a valid traceparent and its tracestate reach the
  harness byte for byte (as the client sent them, less the OWS around a
  header value that HTTP itself drops), duplicated keys included; an invalid
  one reaches it not at all.
* SDK: a server span from the inbound context, as OpenTelemetry's ASGI
  instrumentation makes (``OtelAsgi``); same trace-id and a new parent-id, or
  a new trace, and the tracestate written anew with the first member of each
  key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.sdk.trace import TracerProvider
from w3c_cases import CASES, OTEL_DECIDES, TRACE_ID

import resilient.http
from resilient.asgi import GrayMiddleware
from resilient.gray._tracestate import join_members, parse_traceparent, parse_tracestate

from .test_gray_chain import OtelAsgi, aiohttp_server, uvicorn_server

pytestmark = pytest.mark.timeout(120)


async def service(scope: Any, receive: Any, send: Any) -> None:
    """The suite's test service: POST each callback's arguments to its URL, then answer."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    async with resilient.http.session(breaker=False, retries=False) as client:
        for action in json.loads(body):
            async with client.post(action["url"], json=action["arguments"]) as resp:
                await resp.read()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Harness:
    """The suite's side: sends a case to the service, keeps the headers of the callback."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[CIMultiDict[str]] = asyncio.Queue()
        self.app = web.Application()
        self.app.router.add_post("/callback", self.callback)

    async def callback(self, request: web.Request) -> web.Response:
        await self.received.put(CIMultiDict(request.headers))
        return web.json_response(None)

    async def run(self, client: aiohttp.ClientSession, service: str, url: str, headers: Any) -> Any:
        body = [{"url": url + "callback", "arguments": []}]
        async with client.post(service, json=body, headers=headers) as resp:
            assert resp.status == 200
        return await self.received.get()


@asynccontextmanager
async def harness(sdk: bool) -> AsyncIterator[tuple[Harness, str, str]]:
    app: Any = GrayMiddleware(service)
    if sdk:
        app = OtelAsgi(app, TracerProvider().get_tracer("w3c"))
    suite = Harness()
    async with aiohttp_server(suite.app) as url, uvicorn_server(app) as service_url:
        yield suite, url, service_url


def verdict(sdk: bool, headers: Any, valid: bool, members: Any, got: Any) -> str | None:
    """What the suite would say of the callback's headers ``got``: None for a pass."""
    traceparents = got.getall("traceparent", [])
    states = got.getall("tracestate", [])
    if not sdk:
        if not valid:
            return None if not traceparents and not states else f"sent on: {traceparents}"
        sent = [v.strip(" \t") for k, v in headers if k.lower() == "traceparent"]
        if traceparents != sent[:1]:
            return f"traceparent {traceparents} is not {sent[:1]}"
        raw = ",".join(v.strip(" \t") for k, v in headers if k.lower() == "tracestate")
        want = [raw] if members is not None else []
        return None if states == want else f"tracestate {states} is not {want}"
    if len(traceparents) != 1 or parse_traceparent(traceparents) is None:
        return f"not one valid traceparent: {traceparents}"
    trace_id, parent_id = traceparents[0].split("-")[1:3]
    if valid != (trace_id == TRACE_ID) or parent_id == "1234567890123456":
        return f"traceparent {traceparents[0]}: wrong trace or parent"
    want = [] if members is None else [join_members(members)]
    if states != want:
        return f"tracestate {states} is not {want}"
    assert not states or parse_tracestate(states) == members
    return None


@pytest.mark.parametrize("sdk", [False, True], ids=["pass-through", "sdk"])
async def test_every_case_of_the_suite_over_http(sdk: bool) -> None:
    failures = []
    async with harness(sdk) as (suite, url, service_url), aiohttp.ClientSession() as client:
        for name, headers, valid, members in CASES:
            if sdk and name in OTEL_DECIDES:
                continue
            got = await suite.run(client, service_url, url, headers)
            why = verdict(sdk, headers, valid, members, got)
            if why is not None:
                failures.append(f"{name}: {why}")
    assert not failures, "\n".join(failures)
