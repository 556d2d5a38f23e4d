"""Outbound propagation: the gray tag and the trace context on a request's headers.

One function, ``apply``, serves the aiohttp client middleware and
``inject()`` for other clients. It decides where the trace context comes
from and whether this process may touch the tracestate, following W3C: *if
the traceparent is not changed, the tracestate must not be changed either*.

1. The request already has a ``traceparent`` (the caller, or an
   OpenTelemetry client instrumentation that ran first, wrote one): it is
   left alone; the tracestate gets the gray member only if that traceparent is
   valid and its parent-id is not the inbound one (someone here made a span).
2. An active, local OpenTelemetry span (this process takes part in the
   trace): the traceparent is written from it (a new parent-id), and the
   tracestate is the span's with the gray member first.
3. A valid inbound trace context recorded by the server middleware and no
   local span (no SDK, or no span): traceparent and tracestate are copied
   byte for byte. The gray member is *not* added; the header carries the tag.
4. A remote span context only (someone attached an extracted context): it
   is forwarded unchanged.
5. No trace context at all: nothing trace-related is written. A trace is
   never invented.

Then, whenever there is a tag, the gray header is written (replacing any).
With no tag, the tracestate is never modified and no header is written.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

from resilient.gray import _otel
from resilient.gray._context import record
from resilient.gray._tracestate import (
    format_traceparent,
    join_members,
    parse_traceparent,
    parse_tracestate,
    put_member,
)

__all__ = ["DEFAULT_HEADER", "DEFAULT_KEY", "apply"]

#: The default tracestate key of the gray member.
DEFAULT_KEY: Final = "gray"
#: The default header that carries the tag for hops without trace context.
DEFAULT_HEADER: Final = "x-gray"


def apply(headers: MutableMapping[str, str], header: str, key: str) -> None:
    """Write the current gray tag and trace context onto outbound ``headers``.

    Args:
        headers: the outbound headers; lookups of ``traceparent`` and
            ``tracestate`` use lower-case names (case-insensitive mappings
            such as aiohttp's and httpx's match any case).
        header: the gray header name (validated by the caller).
        key: the tracestate key (validated by the caller).
    """
    inbound = record()
    if inbound is None and not _otel.current_context():
        return  # no tag and no trace context: nothing to forward (stable traffic's path)
    tag = None if inbound is None else inbound.tag
    existing = headers.get("traceparent")
    if existing is not None:
        if tag is not None:
            parent_id = parse_traceparent((existing,))
            if parent_id is not None and (inbound is None or parent_id != inbound.parent_id):
                members = parse_tracestate((headers.get("tracestate", ""),))
                if members is not None:
                    headers["tracestate"] = put_member(members, key, tag.value)
    else:
        span = _otel.span_context()
        passed = None if inbound is None else inbound.traceparent
        if span is not None and not (span.is_remote and passed is not None):
            # Cases 2 and 4: only a local span changes the parent-id, so only
            # a local span may add the gray member.
            headers["traceparent"] = format_traceparent(
                span.trace_id, span.span_id, span.trace_flags
            )
            items = span.trace_state.items()
            if tag is not None and not span.is_remote:
                state = put_member(items, key, tag.value)
            else:
                state = join_members(items)
            if state:
                headers["tracestate"] = state
        elif passed is not None:
            headers["traceparent"] = passed
            if inbound is not None and inbound.tracestate is not None:
                headers["tracestate"] = inbound.tracestate
    if tag is not None:
        headers[header] = tag.value
