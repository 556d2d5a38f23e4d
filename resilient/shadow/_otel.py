"""The OpenTelemetry rim of the shadow package: a span event and a counter.

Every finished mirror adds 1 to ``resilient.shadow.calls`` {operation,
outcome} (meter ``resilient``) and, when the caller's span still records, a
``resilient.shadow`` event on it with the outcome, the differing paths'
count and both latencies. Both happen on the reporter's thread; a mirror
that ends after its request's span has ended adds no event (an ended span
takes none), only the count.

With no SDK nothing is built and nothing recorded. The meter provider is
looked at for each report (an SDK configured after the first mirror is
noticed); the counter is made once per meter.
"""

from __future__ import annotations

import threading
import weakref
from typing import Final

from opentelemetry.metrics import Counter, Meter, MeterProvider
from opentelemetry.trace import Span

from resilient.gray._otel import current_span
from resilient.telemetry import _recording_meter

__all__ = ["CALLS", "EVENT", "caller_span", "report"]

CALLS: Final = "resilient.shadow.calls"
EVENT: Final = "resilient.shadow"

_lock = threading.Lock()
# The counter of each meter (an SDK meter lives as long as its provider).
_by_meter: weakref.WeakKeyDictionary[Meter, Counter] = weakref.WeakKeyDictionary()


def _the_counter(provider: MeterProvider | None) -> Counter | None:
    meter = _recording_meter(provider)
    if meter is None:
        return None
    with _lock:
        counter = _by_meter.get(meter)
        if counter is None:
            counter = _by_meter[meter] = meter.create_counter(
                CALLS, unit="{call}", description="Mirrored calls by their outcome."
            )
        return counter


def caller_span() -> Span | None:
    """The caller's span, if it records (captured when a mirror starts)."""
    span = current_span()
    return span if span is not None and span.is_recording() else None


def report(
    provider: MeterProvider | None,
    span: Span | None,
    operation: str,
    outcome: str,
    attributes: dict[str, str | int | float],
) -> None:
    """Count one finished mirror and add its event to ``span`` if that still records."""
    counter = _the_counter(provider)
    if counter is not None:
        counter.add(1, {"operation": operation, "outcome": outcome})
    if span is not None and span.is_recording():
        span.add_event(EVENT, {"operation": operation, "outcome": outcome, **attributes})
