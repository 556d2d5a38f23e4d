"""ASGI middlewares: gray-traffic recognition and the inbound deadline header.

Plain ASGI classes in the Starlette style: ``__init__(app, **options)``
validates the options once (``ValueError`` naming the option) and never
mutates the instance afterwards; ``__call__`` handles ``http`` and
``websocket`` scopes and passes ``lifespan`` and any other scope straight
through. Per-request values live in locals.

* ``GrayMiddleware`` recognises gray traffic (``resilient.gray`` rules),
  publishes the tag and the validated inbound trace context for the request's
  task tree (``resilient.gray.current()``), tags the current span, and, by
  default, also arms the inbound deadline header.
* ``DeadlineMiddleware`` only arms the deadline header.

The deadline header (``x-request-timeout-ms``) becomes ``resilient.deadline``
around the app for ``http`` scopes (a websocket's lifetime is not a request
budget). It is armed once per request even when both middlewares are
stacked: the first to arm it marks a copy of the scope with
``"resilient.deadline"`` and the other sees the mark. When the inbound budget
runs out before the response has started, the client gets ``504`` instead
of a stack trace in the log; after that, ``DeadlineExceeded`` propagates.

Cost: one pass over the request headers against a precomputed set of names.
A request with none of them costs that pass and nothing else; ``send`` is
wrapped only for requests that carry a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

from resilient._deadline_header import DEFAULT_HEADER as DEFAULT_DEADLINE_HEADER
from resilient._deadline_header import check_name, parse_ms
from resilient.deadline import deadline
from resilient.errors import DeadlineExceeded
from resilient.gray._rules import DEFAULT_RULES, Rule
from resilient.gray._serve import ServerOptions, check_clock, close_request, open_request

__all__ = ["DEADLINE_SCOPE_KEY", "DeadlineMiddleware", "GrayMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Clock = Callable[[], float]

#: The scope key that marks a request whose deadline header is already armed.
DEADLINE_SCOPE_KEY: Final = "resilient.deadline"

_TIMEOUT_BODY: Final = b"deadline exceeded\n"
_TIMEOUT_START: Final = {
    "type": "http.response.start",
    "status": 504,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_TIMEOUT_BODY)).encode()),
    ],
}


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _TrackingSend:
    """``send`` that remembers whether the response has started (one per request).

    It returns ``send``'s awaitable rather than awaiting it in a coroutine of
    its own: no frame more per message.
    """

    __slots__ = ("send", "started")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        self.started = True
        return self.send(message)


async def _call_with_deadline(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, seconds: float, clock: Clock
) -> None:
    """Run ``app`` under ``deadline(seconds)``; answer 504 if it runs out before a response."""
    scope = {**scope, DEADLINE_SCOPE_KEY: True}  # ASGI: copy the scope before changing it
    tracking = _TrackingSend(send)
    scope_deadline = deadline(seconds, clock=clock)
    try:
        scope_deadline.arm()  # `async with scope_deadline:`, two coroutines fewer
        try:
            await app(scope, receive, tracking)
        except BaseException as exc:
            scope_deadline.disarm(type(exc), exc)
            raise
        scope_deadline.disarm(None, None)
    except DeadlineExceeded:
        if tracking.started or not scope_deadline.fired:
            raise
        await send(dict(_TIMEOUT_START))
        await send({"type": "http.response.body", "body": _TIMEOUT_BODY})


class GrayMiddleware:
    """Recognise gray traffic; expose it through ``resilient.gray.current()``.

    Args:
        app: the ASGI app to wrap.
        rules: ``resilient.gray`` rule objects, tried in order (default:
            ``TracestateRule("gray")`` then ``HeaderRule("x-gray")``).
        allow: if given, the only tag values recognised.
        deny: tag values never recognised.
        deadline_header: the inbound deadline header to arm, or ``None`` to
            leave deadlines to a separate ``DeadlineMiddleware``.
        span_attributes: put ``gray.tag`` and ``gray.strategy`` on the
            current OpenTelemetry span (when it is recording).
        baggage: also make ``gray=<value>`` OpenTelemetry baggage current.
        clock: monotonic seconds for the deadline (injected by tests).

    Raises:
        ValueError: (``ConfigError`` for rule options) an option is invalid;
            the message names it.
    """

    __slots__ = ("_options", "_wanted", "app")

    def __init__(
        self,
        app: ASGIApp,
        *,
        rules: Iterable[Rule] = DEFAULT_RULES,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
        deadline_header: str | None = DEFAULT_DEADLINE_HEADER,
        span_attributes: bool = True,
        baggage: bool = False,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self._options = options = ServerOptions.build(
            rules=rules,
            allow=allow,
            deny=deny,
            deadline_header=deadline_header,
            span_attributes=span_attributes,
            baggage=baggage,
            clock=clock,
        )
        #: raw header name -> str name, for the one pass over the headers
        self._wanted: dict[bytes, str] = {name.encode("latin-1"): name for name in options.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        wanted = self._wanted
        found: dict[str, list[str]] | None = None
        for name, value in scope["headers"]:
            if name in wanted:
                key = wanted[name]
                text = value.decode("utf-8", "surrogateescape")  # _decode, written out
                if found is None:
                    found = {key: [text]}
                elif key in found:
                    found[key].append(text)
                else:
                    found[key] = [text]
        if found is None:  # the common case: nothing to recognise, no deadline
            await self.app(scope, receive, send)
            return

        options = self._options
        seconds = None
        header = options.deadline_header
        if (
            header is not None
            and kind == "http"
            and header in found
            and not scope.get(DEADLINE_SCOPE_KEY)
        ):
            seconds = parse_ms(found[header])
        inbound = options.recognizer.inspect(found)
        tokens = None if inbound is None else open_request(inbound, options)
        try:
            if seconds is None:
                await self.app(scope, receive, send)
            else:
                await _call_with_deadline(self.app, scope, receive, send, seconds, options.clock)
        finally:
            if tokens is not None:
                close_request(tokens)


class DeadlineMiddleware:
    """Turn the inbound deadline header into ``resilient.deadline`` for the app.

    Args:
        app: the ASGI app to wrap.
        header: the header name (default ``x-request-timeout-ms``).
        clock: monotonic seconds for the deadline (injected by tests).

    Raises:
        ValueError: an option is invalid; the message names it.
    """

    __slots__ = ("_clock", "_header", "app")

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self._header = check_name("header", header).encode("latin-1")
        self._clock = check_clock(clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(DEADLINE_SCOPE_KEY):
            await self.app(scope, receive, send)
            return
        header = self._header
        values = [_decode(value) for name, value in scope["headers"] if name == header]
        seconds = parse_ms(values) if values else None
        if seconds is None:
            await self.app(scope, receive, send)
        else:
            await _call_with_deadline(self.app, scope, receive, send, seconds, self._clock)
