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
from collections.abc import Callable

from resilient.gray._context import record
from resilient.gray._otel import span_context
from resilient.gray._rules import bucket

__all__ = ["SCALE", "current_gray", "current_trace_id", "drawn"]

#: Buckets of the percentage rule: a share ``s`` mirrors buckets below ``s * SCALE``.
SCALE = 10000


def current_trace_id() -> str | None:
    """The current trace id as 32 lower-case hex digits, or ``None`` outside a trace."""
    ctx = span_context()
    if ctx is not None:
        return f"{ctx.trace_id:032x}"
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
