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
A request with none of them costs that pass and nothing else. The rules
run when the tag is first read (``resilient.gray.current()``, an outbound
call's propagation), not for every request that carries a header they name;
at once only when a recording span or baggage wants the tag. ``send`` is
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
from resilient.gray._context import Pending
from resilient.gray._rules import DEFAULT_RULES, Rule
from resilient.gray._serve import ServerOptions, close_request, open_found

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


class _Inbound:
    """What both middlewares do with a request, in one pass and one frame.

    The headers the options name are read once; what they say is published
    (``open_found``: recognised lazily, by the first reader) and a deadline
    header, for ``http``, runs the app under ``deadline``. A subclass only
    builds ``_options`` and ``_wanted`` (raw header name -> str name).
    """

    __slots__ = ("_options", "_wanted", "app")

    app: ASGIApp
    _options: ServerOptions
    _wanted: dict[bytes, str]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        wanted = self._wanted
        found: Pending | None = None
        for name, value in scope["headers"]:
            if name in wanted:
                key = wanted[name]
                try:
                    text = value.decode()  # (no error handler to pass: a third cheaper)
                except UnicodeDecodeError:  # kept byte for byte, as aiohttp keeps them
                    text = value.decode("utf-8", "surrogateescape")
                if found is None:
                    found = Pending()
                    found[key] = [text]
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
        # (a deadline header alone is nothing to recognise)
        tokens = open_found(found, options) if len(found) > (header in found) else None
        try:
            if seconds is None:
                await self.app(scope, receive, send)
                return
            # The deadline around the app, written out here rather than in a
            # coroutine of its own: one frame fewer per request.
            scope = {**scope}  # ASGI: copy the scope before changing it
            scope[DEADLINE_SCOPE_KEY] = True
            started = False

            def tracking(message: Message) -> Awaitable[None]:
                # Remembers that the response has started; returns ``send``'s
                # awaitable rather than awaiting it: no frame more per message.
                nonlocal started
                started = True
                return send(message)

            clock = options.clock
            # (a keyword argument costs a parse of its own; the default clock needs none)
            scope_deadline = (
                deadline(seconds) if clock is time.monotonic else deadline(seconds, clock=clock)
            )
            try:
                scope_deadline.arm()  # `async with scope_deadline:`, two coroutines fewer
                try:
                    await self.app(scope, receive, tracking)
                except BaseException as exc:
                    scope_deadline.disarm(type(exc), exc)
                    raise
                scope_deadline.disarm(None, None)
            except DeadlineExceeded:
                if started or not scope_deadline.fired:
                    raise
                await send(dict(_TIMEOUT_START))  # the budget ran out before a response
                await send({"type": "http.response.body", "body": _TIMEOUT_BODY})
        finally:
            if tokens is not None:
                close_request(tokens)


class GrayMiddleware(_Inbound):
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

    __slots__ = ()

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


class DeadlineMiddleware(_Inbound):
    """Turn the inbound deadline header into ``resilient.deadline`` for the app.

    Args:
        app: the ASGI app to wrap.
        header: the header name (default ``x-request-timeout-ms``).
        clock: monotonic seconds for the deadline (injected by tests).

    Raises:
        ValueError: an option is invalid; the message names it.
    """

    __slots__ = ()

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        name = check_name("header", header)
        # Recognises nothing: the only header read is the deadline's.
        self._options = ServerOptions.build(
            rules=(),
            allow=None,
            deny=(),
            deadline_header=name,
            span_attributes=False,
            baggage=False,
            clock=clock,
        )
        self._wanted = {name.encode("latin-1"): name}
