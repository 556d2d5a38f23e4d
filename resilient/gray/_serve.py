"""What an inbound middleware does with a recognised request, once for both servers.

``ServerOptions.build`` validates the options both gray middlewares take
(``ValueError`` naming the option) into one frozen object. ``open_request``
publishes a recognised ``Inbound`` for the request's task tree, tags the
current span and, if asked, makes the tag OpenTelemetry baggage;
``open_found`` publishes the found headers to be recognised by their first
reader (see ``_context``) unless there is something to do with the tag now,
then recognises them and calls ``open_request``. ``close_request`` undoes
either. The ASGI and aiohttp
middlewares call these around the handler, in the same task, inside
``try/finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import Token
from dataclasses import dataclass

from opentelemetry.context import Context

from resilient._deadline_header import check_name
from resilient.gray import _otel
from resilient.gray._context import Inbound, Pending, enter, leave
from resilient.gray._rules import Recognizer, Rule

__all__ = [
    "ServerOptions",
    "Tokens",
    "check_bool",
    "check_clock",
    "close_request",
    "open_found",
    "open_request",
]

Tokens = tuple[Token[Inbound | Pending | None], Token[Context] | None]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """The validated options of a gray server middleware; see ``resilient.asgi.GrayMiddleware``.

    Attributes:
        recognizer: the rules and the allow and deny lists.
        deadline_header: the lower-case deadline header, or ``None``.
        spans: whether gray requests tag the current span.
        baggage: whether gray requests get ``gray`` baggage.
        clock: the deadline's clock.
        headers: every lower-case header name the middleware reads.
    """

    recognizer: Recognizer
    deadline_header: str | None
    spans: bool
    baggage: bool
    clock: Callable[[], float]
    headers: frozenset[str]

    @classmethod
    def build(
        cls,
        *,
        rules: Iterable[Rule],
        allow: Iterable[str] | None,
        deny: Iterable[str],
        deadline_header: str | None,
        span_attributes: bool,
        baggage: bool,
        clock: Callable[[], float],
    ) -> ServerOptions:
        recognizer = Recognizer(rules, allow=allow, deny=deny)
        header = None if deadline_header is None else check_name("deadline_header", deadline_header)
        names = recognizer.headers if header is None else recognizer.headers | {header}
        return cls(
            recognizer,
            header,
            check_bool("span_attributes", span_attributes),
            check_bool("baggage", baggage),
            check_clock(clock),
            names,
        )


def open_found(found: Pending, options: ServerOptions) -> Tokens | None:
    """Publish what ``found`` says: lazily, unless there is something to do with the tag now.

    Returns the tokens for ``close_request``, or ``None`` when nothing was
    published (recognised at once, the request carries neither a tag nor a
    valid trace context).
    """
    if not options.baggage and not (options.spans and _otel.current_context()):
        # No baggage to set, no span that could record the tag: the first
        # reader recognises it, if anyone reads it.
        found.inspector = options.recognizer
        return enter(found), None
    inbound = options.recognizer.inspect(found)
    return None if inbound is None else open_request(inbound, options)


def open_request(inbound: Inbound, options: ServerOptions) -> Tokens:
    """Publish ``inbound``; tag the span and set baggage for a gray request."""
    baggage_token = None
    tag = inbound.tag
    if tag is not None:
        if options.spans:
            _otel.tag_span(tag)
        if options.baggage:
            baggage_token = _otel.attach_baggage(tag)
    return enter(inbound), baggage_token


def close_request(tokens: Tokens) -> None:
    """Undo ``open_request``."""
    token, baggage_token = tokens
    leave(token)
    if baggage_token is not None:
        _otel.detach(baggage_token)


def check_bool(field: str, value: object) -> bool:
    """``value`` if it is a bool; ``ValueError`` naming ``field`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {value!r}")
    return value


def check_clock(clock: object) -> Callable[[], float]:
    """``clock`` if it is callable; ``ValueError`` naming ``clock`` otherwise."""
    if not callable(clock):
        raise ValueError(f"clock must be a callable returning monotonic seconds, got {clock!r}")
    return clock
