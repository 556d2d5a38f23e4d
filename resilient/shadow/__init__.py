"""Shadow traffic and reconciliation: prove a gray release before it takes traffic.

``Shadow`` runs a candidate beside the primary for a sample of calls (by
the gray percentage rule's hash of the trace id), compares the two answers
as JSON paths, learns noisy paths from repeated primaries, and records one
record per mirrored call; ``record_write`` records a digest of each side's
writes. ``resilient reconcile`` joins the records by operation, gray tag,
trace id and key and says whether the candidate may take traffic.

The caller is never hurt: it gets the primary's result or exception at the
primary's latency; the candidate runs in the background under its own
timeout, bulkhead and breaker, and a mirror they refuse is dropped and
recorded, never queued. Comparing and writing records happen on one
background thread (``_reporter``).

Sinks: ``JsonlSink`` (the default, under ``$RESILIENT_SHADOW_DIR`` or
``./.resilient/``), ``RedisStreamSink`` (needs ``resilient[redis]``; loaded
on first use), and always OpenTelemetry (span event ``resilient.shadow``,
counter ``resilient.shadow.calls``). ``HttpShadow`` mirrors the requests of
a ``resilient.http.session`` (needs ``resilient[http]``; loaded on first use).
The record format is in docs/formats.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.shadow._normalize import JSONValue, http_value, to_json
from resilient.shadow._paths import diff_paths
from resilient.shadow._record import CallRecord, WriteRecord, canonical_digest, parse_record
from resilient.shadow._shadow import Shadow
from resilient.shadow._sinks import JsonlSink, Sink, default_path
from resilient.shadow._writes import flush_writes, record_write

if TYPE_CHECKING:
    from resilient.shadow._http import HttpShadow
    from resilient.shadow._redis import RedisStreamSink

__all__ = [
    "CallRecord",
    "HttpShadow",
    "JSONValue",
    "JsonlSink",
    "RedisStreamSink",
    "Shadow",
    "Sink",
    "WriteRecord",
    "canonical_digest",
    "default_path",
    "diff_paths",
    "flush_writes",
    "http_value",
    "parse_record",
    "record_write",
    "to_json",
]


def __getattr__(name: str) -> Any:
    # redis and aiohttp are extras: import them only when their classes are asked for.
    if name == "RedisStreamSink":
        from resilient.shadow._redis import RedisStreamSink

        return RedisStreamSink
    if name == "HttpShadow":
        from resilient.shadow._http import HttpShadow

        return HttpShadow
    raise AttributeError(f"module 'resilient.shadow' has no attribute {name!r}")
