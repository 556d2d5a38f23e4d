"""The OpenTelemetry rim of the gray package: span attributes, baggage, span context.

Only ``opentelemetry-api`` is used. With no SDK configured every call here is
a cheap no-op: the current span is the invalid non-recording span, so no
attribute is set and no trace context is reported. Attributes are set only on
a recording span, and only for gray requests: stable traffic never reaches
this module on the inbound path.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Final, cast

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from resilient.gray._tag import GrayTag

__all__ = [
    "ATTR_STRATEGY",
    "ATTR_TAG",
    "BAGGAGE_KEY",
    "attach_baggage",
    "current_context",
    "current_span",
    "detach",
    "span_context",
    "tag_span",
]

ATTR_TAG: Final = "gray.tag"
ATTR_STRATEGY: Final = "gray.strategy"
BAGGAGE_KEY: Final = "gray"


def tag_span(tag: GrayTag) -> None:
    """Put ``gray.tag`` and ``gray.strategy`` on the current span, if it records."""
    if not current_context():
        return  # no span attached (no SDK, or no instrumentation): nothing records
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_TAG, tag.value)
        span.set_attribute(ATTR_STRATEGY, tag.rule)


def attach_baggage(tag: GrayTag, key: str = BAGGAGE_KEY) -> Token[Context]:
    """Make ``key=tag.value`` baggage current; returns the token for ``detach``."""
    return context.attach(baggage.set_baggage(key, tag.value))


def detach(token: Token[Context]) -> None:
    """Undo ``attach_baggage``."""
    context.detach(token)


def _context_getter() -> Callable[[], Context]:
    """The current OpenTelemetry context's reader, as cheap as can be.

    With the default runtime context (context variables) that is the
    variable's own ``get``, one C call instead of three Python ones; any
    other runtime context is asked through the API.
    """
    variable = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(variable, ContextVar):
        return variable.get
    return context.get_current


#: The current OpenTelemetry context: empty (false) when no span or baggage is attached.
current_context: Final = _context_getter()


def _span_key() -> str | None:
    """The key the API keeps the current span under in a context, if it can be found.

    It is private to ``opentelemetry.trace`` (``propagation._SPAN_KEY``); the
    key is checked by putting a span in a context, so an API that moved or
    renamed it leaves ``current_span`` on the public, slower way.
    """
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY as key
    except ImportError:
        return None
    probe = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    if not isinstance(key, str) or trace.set_span_in_context(probe).get(key) is not probe:
        return None
    return key


_SPAN: Final = _span_key()


def current_span() -> trace.Span | None:
    """The current span, or ``None`` when none is attached.

    What ``trace.get_current_span()`` says, less its four Python calls and
    an ABC check: one context-variable read and one dict lookup (a
    shadow draws on every call; docs/benchmarks.md, "Shadowing").
    """
    ctx = current_context()
    if not ctx:
        return None
    if _SPAN is None:
        span = trace.get_current_span(ctx)
        return None if span is trace.INVALID_SPAN else span
    found = ctx.get(_SPAN)
    kind = type(found)
    if kind in _SPAN_TYPES:
        return cast("trace.Span", found)  # a type seen to be a Span
    if isinstance(found, trace.Span):  # an ABC check (~2,000 instructions): once per type
        _SPAN_TYPES.add(kind)
        return found
    return None


#: Classes seen to be spans (``set.add`` is atomic; a race adds one twice, harmlessly).
_SPAN_TYPES: Final[set[type]] = set()


def span_context() -> SpanContext | None:
    """The current span's context if it is valid (a trace is in progress), else ``None``."""
    span = current_span()
    if span is None:
        return None
    ctx = span.get_span_context()
    return ctx if ctx.is_valid else None
