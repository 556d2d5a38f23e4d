"""aiohttp server middlewares: gray-traffic recognition and the inbound deadline header.

The aiohttp twins of ``resilient.asgi``: ``gray_middleware(...)`` and
``deadline_middleware(...)`` validate their options once (``ValueError``
naming the option) and return a new-style middleware. Recognition, the
published context, span attributes and the deadline rules are the same as
for ASGI (see ``resilient.asgi``); the once-per-request mark lives in the
request's own storage under ``DEADLINE_KEY``, which both middlewares check.

As for ASGI, a websocket's lifetime is not a request budget: the deadline
header is not armed for a websocket upgrade.

When the inbound budget runs out in the handler, the middleware answers
``504``. A handler that had already started a streamed response cannot be
answered again; aiohttp then ends that response as it ends any failed one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from resilient._deadline_header import DEFAULT_HEADER as DEFAULT_DEADLINE_HEADER
from resilient._deadline_header import check_name, parse_ms
from resilient.deadline import deadline
from resilient.errors import DeadlineExceeded
from resilient.gray._context import Pending
from resilient.gray._rules import DEFAULT_RULES, Rule
from resilient.gray._serve import ServerOptions, check_clock, close_request, open_found

__all__ = ["DEADLINE_KEY", "deadline_middleware", "gray_middleware"]

Clock = Callable[[], float]

#: Request storage key marking a request whose deadline header is already armed.
DEADLINE_KEY: Final = web.RequestKey("resilient.deadline", bool)


def _budgeted(request: web.Request) -> bool:
    """Whether the deadline header still needs arming: not yet armed, not a websocket."""
    if request.get(DEADLINE_KEY):
        return False
    return request.headers.get("Upgrade", "").lower() != "websocket"


async def _handle_with_deadline(
    request: web.Request, handler: Handler, seconds: float, clock: Clock
) -> web.StreamResponse:
    """Run ``handler`` under ``deadline(seconds)``; 504 if that budget runs out."""
    request[DEADLINE_KEY] = True
    scope = deadline(seconds, clock=clock)
    try:
        async with scope:
            return await handler(request)
    except DeadlineExceeded:
        if not scope.fired:
            raise
        return web.Response(status=504, text="deadline exceeded\n")


def gray_middleware(
    *,
    rules: Iterable[Rule] = DEFAULT_RULES,
    allow: Iterable[str] | None = None,
    deny: Iterable[str] = (),
    deadline_header: str | None = DEFAULT_DEADLINE_HEADER,
    span_attributes: bool = True,
    baggage: bool = False,
    clock: Clock = time.monotonic,
) -> Middleware:
    """A middleware that recognises gray traffic and exposes it through ``current()``.

    Args:
        rules: ``resilient.gray`` rule objects, tried in order (default:
            ``TracestateRule("gray")`` then ``HeaderRule("x-gray")``).
        allow: if given, the only tag values recognised.
        deny: tag values never recognised.
        deadline_header: the inbound deadline header to arm, or ``None`` to
            leave deadlines to a separate ``deadline_middleware``.
        span_attributes: put ``gray.tag`` and ``gray.strategy`` on the
            current OpenTelemetry span (when it is recording).
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
        deadline_header=deadline_header,
        span_attributes=span_attributes,
        baggage=baggage,
        clock=clock,
    )
    header = options.deadline_header
    names = tuple(options.headers)

    @web.middleware
    async def gray(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        found: Pending | None = None
        for name in names:
            values = headers.getall(name, None)
            if values:
                if found is None:
                    found = Pending()
                found[name] = values
        if found is None:
            return await handler(request)
        seconds = None
        if header is not None and header in found and _budgeted(request):
            seconds = parse_ms(found[header])
        # (a deadline header alone is nothing to recognise)
        tokens = open_found(found, options) if len(found) > (header in found) else None
        try:
            if seconds is None:
                return await handler(request)
            return await _handle_with_deadline(request, handler, seconds, options.clock)
        finally:
            if tokens is not None:
                close_request(tokens)

    return gray


def deadline_middleware(
    *, header: str = DEFAULT_DEADLINE_HEADER, clock: Clock = time.monotonic
) -> Middleware:
    """A middleware that turns the inbound deadline header into ``resilient.deadline``.

    Args:
        header: the header name (default ``x-request-timeout-ms``).
        clock: monotonic seconds for the deadline (injected by tests).

    Raises:
        ValueError: an option is invalid; the message names it.
    """
    name = check_name("header", header)
    checked_clock = check_clock(clock)

    @web.middleware
    async def deadline_(request: web.Request, handler: Handler) -> web.StreamResponse:
        values = request.headers.getall(name, None)
        seconds = parse_ms(values) if values and _budgeted(request) else None
        if seconds is None:
            return await handler(request)
        return await _handle_with_deadline(request, handler, seconds, checked_clock)

    return deadline_
