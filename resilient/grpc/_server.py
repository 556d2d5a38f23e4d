"""A grpc.aio server interceptor: the inbound deadline and gray tag, made ambient.

One idea: a handler behind it sees what an HTTP handler behind
``resilient.asgi.GrayMiddleware`` sees. For each call:

- its gRPC deadline (``context.time_remaining()``) becomes a
  ``resilient.deadline`` around the handler, so ``resilient.remaining()``
  tells the handler what is left and every layer beneath clips to it (the
  client interceptors and ``resilient.http.session`` carry it onwards: as a
  gRPC deadline, as the deadline header). When it runs out, the handler is
  cancelled and the call ends with ``DEADLINE_EXCEEDED``;
- its metadata goes through the same ``Recognizer`` as the HTTP middlewares
  (``ServerOptions``: ``TracestateRule("gray")`` then ``HeaderRule("x-gray")``
  by default), and the ``Inbound`` record (the tag, and the valid trace
  context kept byte for byte) is published for the handler's task tree:
  ``resilient.gray.current()`` reads the tag, and every outbound layer
  forwards it.

Every kind of handler is wrapped: coroutines, async generators (streaming
responses) and plain functions (``with`` scopes: sync code cannot be cut,
only clipped). The interceptor holds no per-call state and is safe to share.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import grpc
import grpc.aio

from resilient.deadline import deadline
from resilient.errors import DeadlineExceeded
from resilient.gray._context import Inbound
from resilient.gray._rules import DEFAULT_RULES, Rule
from resilient.gray._serve import ServerOptions, close_request, open_request
from resilient.grpc._metadata import found

__all__ = ["ResilientServerInterceptor", "server_interceptor"]

#: A remaining time above this (seconds) is gRPC's "no deadline" (it reports years).
NO_DEADLINE: Final = 365 * 24 * 3600.0
_BEHAVIOURS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _seconds(context: Any) -> float | None:
    left = context.time_remaining()
    if left is None or left > NO_DEADLINE:
        return None
    return max(0.0, float(left))


class ResilientServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """See ``server_interceptor``."""

    def __init__(self, options: ServerOptions) -> None:
        self._options = options

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        options = self._options
        fields = found(details.invocation_metadata, options.headers)
        inbound = None if fields is None else options.recognizer.inspect(fields)
        wrapped = {
            name: _wrap(behaviour, inbound, options)
            for name in _BEHAVIOURS
            if (behaviour := getattr(handler, name)) is not None
        }
        return handler._replace(**wrapped)


@asynccontextmanager
async def _ambient(
    inbound: Inbound | None, options: ServerOptions, context: Any
) -> AsyncIterator[None]:
    """The call's tag and deadline, published around an async handler."""
    tokens = None if inbound is None else open_request(inbound, options)
    try:
        seconds = _seconds(context)
        if seconds is None:
            yield
            return
        scope = deadline(seconds, clock=options.clock)
        try:
            async with scope:
                yield
        except DeadlineExceeded:
            if not scope.fired:
                raise
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    finally:
        if tokens is not None:
            close_request(tokens)


def _wrap(behaviour: Any, inbound: Inbound | None, options: ServerOptions) -> Any:
    if inspect.isasyncgenfunction(behaviour):

        async def streamed(request: Any, context: Any) -> AsyncIterator[Any]:
            async with _ambient(inbound, options, context):
                async for item in behaviour(request, context):
                    yield item

        return streamed

    if inspect.iscoroutinefunction(behaviour):

        async def awaited(request: Any, context: Any) -> Any:
            async with _ambient(inbound, options, context):
                return await behaviour(request, context)

        return awaited

    def plain(request: Any, context: Any) -> Any:
        tokens = None if inbound is None else open_request(inbound, options)
        try:
            seconds = _seconds(context)
            if seconds is None:
                return behaviour(request, context)
            with deadline(seconds, clock=options.clock):
                return behaviour(request, context)
        finally:
            if tokens is not None:
                close_request(tokens)

    return plain


def server_interceptor(
    *,
    rules: Iterable[Rule] = DEFAULT_RULES,
    allow: Iterable[str] | None = None,
    deny: Iterable[str] = (),
    span_attributes: bool = True,
    baggage: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> ResilientServerInterceptor:
    """A grpc.aio server interceptor: the inbound deadline and gray tag, made ambient.

    ``grpc.aio.server(interceptors=[resilient.grpc.server_interceptor()])``.

    Args:
        rules: ``resilient.gray`` rule objects, tried in order on the call's
            metadata (default: ``TracestateRule("gray")`` then
            ``HeaderRule("x-gray")``).
        allow: if given, the only tag values recognised.
        deny: tag values never recognised.
        span_attributes: put ``gray.tag`` and ``gray.strategy`` on the current
            OpenTelemetry span (when it is recording).
        baggage: also make ``gray=<value>`` OpenTelemetry baggage current.
        clock: monotonic seconds for the deadline (injected by tests).

    Raises:
        ValueError: (``ConfigError`` for rule options) an option is invalid;
            the message names it.
    """
    options = ServerOptions.build(
        rules=rules,
        allow=allow,
        deny=deny,
        deadline_header=None,  # gRPC carries its own deadline
        span_attributes=span_attributes,
        baggage=baggage,
        clock=clock,
    )
    return ResilientServerInterceptor(options)
