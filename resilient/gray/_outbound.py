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

In cases 1 and 2, OpenTelemetry's tracestate parser (opentelemetry-api
1.45) still checks the old key grammar and refuses duplicated keys, so a span
continuing an inbound tracestate that is valid today (``foo@=1``,
``foo=1,foo=2``) has an empty one, and OpenTelemetry's injector writes none:
where a span of this process continues the inbound trace (same trace-id, new
parent-id) and its tracestate is empty, the inbound members are written
instead, the first member of each key kept.

Then, whenever there is a tag, the gray header is written (replacing any).
With no tag, no header is written and the tracestate is not modified, but
for the inbound members put back as above.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from typing import Final

from resilient.gray import _otel
from resilient.gray._context import Inbound, record
from resilient.gray._tag import GrayTag
from resilient.gray._tracestate import (
    Members,
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


def _inherited(trace_id: str, inbound: Inbound) -> Members:
    """The inbound tracestate's members, for a span of ``trace_id`` (hex) that continues it."""
    passed, state = inbound.traceparent, inbound.tracestate
    if state is None or passed is None or passed[3:35] != trace_id:
        return []
    return parse_tracestate((state,)) or []


def _rewrite(
    headers: MutableMapping[str, str],
    existing: str,
    inbound: Inbound | None,
    tag: GrayTag | None,
    key: str,
) -> None:
    """Case 1: the request's own traceparent; its tracestate is ours only past a span of ours."""
    parent_id = parse_traceparent((existing,))
    if parent_id is None or (inbound is not None and parent_id == inbound.parent_id):
        return  # not valid, or the inbound one passed on: the tracestate is not ours to touch
    members = parse_tracestate((headers.get("tracestate", ""),))
    if members is None:
        return
    if not members and inbound is not None:
        members = _inherited(existing.strip(" \t")[3:35], inbound)
        if members and tag is None:
            headers["tracestate"] = join_members(members)
    if tag is not None:
        headers["tracestate"] = put_member(members, key, tag.value)


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
        if tag is not None or (inbound is not None and inbound.tracestate is not None):
            _rewrite(headers, existing, inbound, tag, key)
    else:
        span = _otel.span_context()
        passed = None if inbound is None else inbound.traceparent
        if span is not None and not (span.is_remote and passed is not None):
            # Cases 2 and 4: only a local span changes the parent-id, so only
            # a local span may add the gray member.
            headers["traceparent"] = format_traceparent(
                span.trace_id, span.span_id, span.trace_flags
            )
            items: Collection[tuple[str, str]] = span.trace_state.items()
            if not items and inbound is not None:
                items = _inherited(f"{span.trace_id:032x}", inbound)
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
