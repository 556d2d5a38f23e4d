"""What an inbound middleware does with a recognised request, once for both servers.

``open_request`` publishes the ``Inbound`` record for the request's task tree,
tags the current span and, if asked, makes the tag OpenTelemetry baggage;
``close_request`` undoes both in reverse order. The ASGI and aiohttp
middlewares call these around the handler, in the same task, inside
``try/finally``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token

from opentelemetry.context import Context

from resilient.gray import _otel
from resilient.gray._context import Inbound, enter, leave

__all__ = ["Tokens", "check_bool", "check_clock", "close_request", "open_request"]

Tokens = tuple[Token[Inbound | None], Token[Context] | None]


def open_request(inbound: Inbound, spans: bool, baggage: bool) -> Tokens:
    """Publish ``inbound``; tag the span and set baggage for a gray request."""
    baggage_token = None
    tag = inbound.tag
    if tag is not None:
        if spans:
            _otel.tag_span(tag)
        if baggage:
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
