"""``record_write``: a digest of what each side wrote, for dual-write reconciliation.

One idea: when the stable path and the gray path both write (to their own
stores, or one to a log), each records ``(trace id, key, side, digest)``;
``resilient reconcile`` joins the two sides by (trace id, key) and reports
a key that only one side wrote (``missing``) or that both wrote differently
(``differs``). Only the digest leaves the process: sha256 of the value's
canonical JSON (sorted keys, no spaces), never the value.

The digest is computed on the caller's thread (the value is what it is at
the time of the call); the write to the sink happens on the reporter's.
"""

from __future__ import annotations

import functools
import time

from resilient.errors import ConfigError
from resilient.shadow._record import SIDES, canonical_digest, write_record
from resilient.shadow._reporter import reporter
from resilient.shadow._sinks import Sink, default_sink
from resilient.shadow._trace import current_gray, current_trace_id

__all__ = ["record_write"]


def record_write(
    key: str,
    value: object,
    *,
    side: str,
    operation: str | None = None,
    sink: Sink | None = None,
) -> str:
    """Record that this side wrote ``value`` under ``key``; returns the digest.

    Args:
        key: what was written (``"order:42"``).
        value: the value written (normalised to JSON for the digest).
        side: ``"stable"`` or ``"gray"``.
        operation: the report's grouping (default: ``key`` up to its first ``:``).
        sink: where the record goes (default: the process's ``JsonlSink``).

    Raises:
        ConfigError: ``key`` is empty or ``side`` is neither side.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"key must be a non-empty string, got {key!r}", field="key", value=key)
    if side not in SIDES:
        raise ConfigError(
            f"side must be 'stable' or 'gray', got {side!r}", field="side", value=side
        )
    digest = canonical_digest(value)
    record = write_record(
        ts=time.time(),
        operation=operation or key.partition(":")[0] or key,
        key=key,
        side=side,
        digest=digest,
        trace_id=current_trace_id(),
        gray=current_gray(),
    )
    target = sink if sink is not None else default_sink()
    reporter().submit(functools.partial(target.write, record))
    return digest


def flush_writes(timeout: float = 10.0) -> bool:
    """Wait until the writes recorded so far are in their sinks; False on timeout."""
    return reporter().drain(timeout)
