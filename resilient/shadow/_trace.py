"""Which request a mirrored call belongs to, and whether it is mirrored at all.

One idea: a call is identified by its trace id and its gray tag, read where
the caller runs; the same trace id is mirrored or not in every process,
because the draw is the gray percentage rule's stable hash
(``resilient.gray.bucket``: sha256, never ``hash()``) of the trace id.
A call with no trace is drawn at random.

The trace id is the current OpenTelemetry span's when an SDK records one,
else the inbound ``traceparent`` an inbound gray middleware published (so
a process with no SDK still joins its records to its caller's trace).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from hashlib import sha256
from typing import Final

from resilient.gray._context import record
from resilient.gray._otel import current_span
from resilient.gray._rules import bucket

__all__ = ["SCALE", "current_gray", "current_trace_id", "draw", "drawn"]

#: Buckets of the percentage rule: a share ``s`` mirrors buckets below ``s * SCALE``.
SCALE = 10000
#: A digest's first 8 bytes, big-endian (as ``resilient.gray.bucket`` reads them).
_FIRST_8: Final = struct.Struct(">Q").unpack_from


def draw(threshold: int, rng: Callable[[], float] = random.random) -> tuple[bool, str | None]:
    """Is the current call mirrored (``drawn(current_trace_id(), ...)``), and its trace id.

    In one Python call with the hash inlined: every call of a shadowed
    function pays this, drawn or not (docs/benchmarks.md, "Shadowing").
    """
    span = current_span()
    if span is not None:
        ctx = span.get_span_context()
        if ctx.is_valid:  # then 0 < trace_id < 2**128: 16 bytes, as "032x" writes them
            hex_id = ctx.trace_id.to_bytes(16, "big").hex()
            first: int = _FIRST_8(sha256(hex_id.encode()).digest())[0]
            return first % SCALE < threshold, hex_id  # bucket(hex_id) < threshold
    trace_id = _inbound_trace_id()
    return drawn(trace_id, threshold, rng), trace_id


def current_trace_id() -> str | None:
    """The current trace id as 32 lower-case hex digits, or ``None`` outside a trace."""
    span = current_span()
    if span is not None:
        ctx = span.get_span_context()
        if ctx.is_valid:
            return ctx.trace_id.to_bytes(16, "big").hex()
    return _inbound_trace_id()


def _inbound_trace_id() -> str | None:
    inbound = record()
    if inbound is not None and inbound.traceparent is not None:
        return inbound.traceparent[3:35]
    return None


def current_gray() -> str | None:
    """The current request's gray tag value, or ``None`` for stable traffic."""
    inbound = record()
    if inbound is None or inbound.tag is None:
        return None
    return inbound.tag.value


def drawn(trace_id: str | None, threshold: int, rng: Callable[[], float] = random.random) -> bool:
    """Is a call of ``trace_id`` mirrored, for a share of ``threshold / SCALE``?"""
    if trace_id is None:
        return rng() * SCALE < threshold
    return bucket(trace_id) < threshold
