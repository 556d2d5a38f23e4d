"""The two transports: an ``Exchange``'s steps carried out, awaited or blocking.

``AsyncTransport`` and ``Transport`` wrap httpx's own transport (any
``httpx.AsyncBaseTransport`` / ``httpx.BaseTransport``): each request runs
``Exchange.steps``, and every send of it goes to the wrapped transport.
Nothing is decided here; the loops only do what a step says (send, sleep,
close a response before a retry) and hand back what came of it. The body
of the response the caller gets is bounded by the request's expiry: the
async body's reads by a timeout each, what is left; the sync body (a read
cannot be cut short) is checked after each read, each read bounded by the
read timeout the exchange gave it.

Concurrency: ``AsyncTransport`` belongs to one event loop; ``Transport`` may
be shared by threads (its exchange is ``threaded``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from resilient.httpx._errors import AttemptTimeoutError, origin_of
from resilient.httpx._exchange import SEND, SLEEP, Delivered, Exchange

__all__ = ["AsyncTransport", "Transport"]


class AsyncTransport(httpx.AsyncBaseTransport):
    """An httpx async transport with the HTTP layers around ``inner``.

    Args:
        inner: the transport that sends (usually ``httpx.AsyncHTTPTransport``).
        exchange: the layers (``resilient.httpx.AsyncClient`` builds them).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange
        self._total = exchange.total

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        steps = self._exchange.steps(request, asyncio.current_task())
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                step, value = steps.send(result) if error is None else steps.throw(error)
            except StopIteration as done:
                delivered: Delivered = done.value
                response, expiry = delivered
                if expiry != math.inf and isinstance(response.stream, httpx.AsyncByteStream):
                    response.stream = _AsyncBody(response.stream, expiry, request, self._total)
                return response
            result = error = None
            try:
                if step is SEND:
                    result = await self._inner.handle_async_request(request)
                elif step is SLEEP:
                    await asyncio.sleep(value)
                else:
                    await value.aclose()
            except BaseException as exc:
                error = exc

    async def aclose(self) -> None:
        await self._inner.aclose()


class Transport(httpx.BaseTransport):
    """An httpx transport with the HTTP layers around ``inner``; safe to share by threads.

    Args:
        inner: the transport that sends (usually ``httpx.HTTPTransport``).
        exchange: the layers, ``threaded`` (``resilient.httpx.Client`` builds them).
    """

    def __init__(self, inner: httpx.BaseTransport, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange
        self._total = exchange.total

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        steps = self._exchange.steps(request, None)  # a thread cannot be cut short
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                step, value = steps.send(result) if error is None else steps.throw(error)
            except StopIteration as done:
                delivered: Delivered = done.value
                response, expiry = delivered
                if expiry != math.inf and isinstance(response.stream, httpx.SyncByteStream):
                    response.stream = _Body(response.stream, expiry, request, self._total)
                return response
            result = error = None
            try:
                if step is SEND:
                    result = self._inner.handle_request(request)
                elif step is SLEEP:
                    time.sleep(value)
                else:
                    value.close()
            except BaseException as exc:
                error = exc

    def close(self) -> None:
        self._inner.close()


def _late(request: httpx.Request, total: float) -> AttemptTimeoutError:
    return AttemptTimeoutError(origin_of(request.url), total, "total")


class _AsyncBody(httpx.AsyncByteStream):
    """A response body whose every read ends by the request's expiry."""

    def __init__(
        self, stream: httpx.AsyncByteStream, expiry: float, request: httpx.Request, total: float
    ) -> None:
        self._stream = stream
        self._expiry = expiry
        self._request = request
        self._total = total

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._stream)
        while True:
            try:
                async with asyncio.timeout(max(0.0, self._expiry - time.monotonic())):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _late(self._request, self._total) from None
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Body(httpx.SyncByteStream):
    """A response body that fails once a read ends past the request's expiry."""

    def __init__(
        self, stream: httpx.SyncByteStream, expiry: float, request: httpx.Request, total: float
    ) -> None:
        self._stream = stream
        self._expiry = expiry
        self._request = request
        self._total = total

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._expiry:
                raise _late(self._request, self._total)
            yield chunk

    def close(self) -> None:
        self._stream.close()
