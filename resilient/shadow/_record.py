"""The records every sink holds: one per mirrored call, one per recorded write.

One idea: the record format (stable, docs/formats.md), built here and read
back here, so writer and reader cannot drift apart.

A call record (``"type": "call"``)::

    {"type": "call", "ts": 1765123456.789, "operation": "feed",
     "trace_id": "4bf9...4736" | null, "gray": "canary" | null,
     "match": true | false | null, "outcome": "match",
     "diffs": ["$.items[2].score"], "noise": ["$.generated_at"],
     "primary": {"latency_ms": 12.5, "error": null},
     "candidate": {"latency_ms": 14.1, "error": "TimeoutError"} ,
     "dropped": null | "bulkhead" | "breaker" | "cancelled" | "overload"}

``match`` is null when nothing was compared (dropped, or the candidate
failed where the primary did not). ``outcome`` is the counter's label:
``match``, ``mismatch``, ``noise`` (only noisy paths differ), ``error`` (the
candidate failed or timed out and the primary did not) or ``dropped``.

A write record (``"type": "write"``)::

    {"type": "write", "ts": ..., "operation": "order", "key": "order:42",
     "side": "stable" | "gray", "digest": "<sha256 hex of canonical JSON>",
     "trace_id": ... | null, "gray": ... | null}

``ts`` is epoch seconds. Readers accept a record without ``type`` when its
fields say which it is (``side`` means a write).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, TypeGuard

from resilient.shadow._normalize import JSONValue, to_json

__all__ = [
    "DROP_REASONS",
    "OUTCOMES",
    "SIDES",
    "CallRecord",
    "Side",
    "WriteRecord",
    "canonical_digest",
    "parse_record",
]

OUTCOMES: Final = ("match", "mismatch", "noise", "error", "dropped")
DROP_REASONS: Final = ("bulkhead", "breaker", "cancelled", "overload")
SIDES: Final = ("stable", "gray")
Side: TypeAlias = Literal["stable", "gray"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One mirrored call, as read back from a sink (see the module docstring)."""

    ts: float
    operation: str
    trace_id: str | None
    gray: str | None
    match: bool | None
    outcome: str
    diffs: tuple[str, ...]
    noise: tuple[str, ...]
    primary_ms: float | None
    primary_error: str | None
    candidate_ms: float | None
    candidate_error: str | None
    dropped: str | None


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One recorded write of one side (see ``record_write``)."""

    ts: float
    operation: str
    key: str
    side: str
    digest: str
    trace_id: str | None
    gray: str | None


def canonical_digest(value: object) -> str:
    """sha256 (hex) of ``value``'s canonical JSON: sorted keys, no spaces, UTF-8."""
    text = json.dumps(to_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def call_record(
    *,
    ts: float,
    operation: str,
    trace_id: str | None,
    gray: str | None,
    outcome: str,
    diffs: list[str],
    noise: list[str],
    primary: tuple[float | None, str | None],
    candidate: tuple[float | None, str | None],
    dropped: str | None,
) -> dict[str, JSONValue]:
    """A call record as a JSON object (what sinks write)."""
    match: bool | None = {"match": True, "noise": True, "mismatch": False}.get(outcome)
    return {
        "type": "call",
        "ts": ts,
        "operation": operation,
        "trace_id": trace_id,
        "gray": gray,
        "match": match,
        "outcome": outcome,
        "diffs": list(diffs),
        "noise": list(noise),
        "primary": {"latency_ms": _ms(primary[0]), "error": primary[1]},
        "candidate": {"latency_ms": _ms(candidate[0]), "error": candidate[1]},
        "dropped": dropped,
    }


def write_record(
    *,
    ts: float,
    operation: str,
    key: str,
    side: str,
    digest: str,
    trace_id: str | None,
    gray: str | None,
) -> dict[str, JSONValue]:
    """A write record as a JSON object."""
    return {
        "type": "write",
        "ts": ts,
        "operation": operation,
        "key": key,
        "side": side,
        "digest": digest,
        "trace_id": trace_id,
        "gray": gray,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)


# ---------------------------------------------------------------------- reading back


def parse_record(obj: object) -> CallRecord | WriteRecord:
    """A record read from a sink, checked field by field.

    Raises:
        ValueError: the object is not a record; the message names the field.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"a record must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type", "write" if "side" in obj else "call")
    if kind == "write":
        side = _text(obj, "side")
        if side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {_shown(side)}")
        return WriteRecord(
            ts=_number(obj, "ts"),
            operation=_text(obj, "operation"),
            key=_text(obj, "key"),
            side=side,
            digest=_text(obj, "digest"),
            trace_id=_optional_text(obj, "trace_id"),
            gray=_optional_text(obj, "gray"),
        )
    if kind != "call":
        raise ValueError(f"type must be 'call' or 'write', got {_shown(kind)}")
    ts = _number(obj, "ts")
    operation = _text(obj, "operation")
    primary = _side(obj, "primary")
    candidate = _side(obj, "candidate")
    dropped = _optional_text(obj, "dropped")
    match = obj.get("match")
    if match is not None and not isinstance(match, bool):
        raise ValueError(f"match must be true, false or null, got {_shown(match)}")
    diffs = _paths(obj, "diffs")
    noise = _paths(obj, "noise")
    outcome = obj.get("outcome")
    if outcome is None:  # a writer that leaves it out: derive it
        outcome = _derive_outcome(match, diffs, noise, dropped, candidate[1])
    elif outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {list(OUTCOMES)}, got {_shown(outcome)}")
    return CallRecord(
        ts=ts,
        operation=operation,
        trace_id=_optional_text(obj, "trace_id"),
        gray=_optional_text(obj, "gray"),
        match=match,
        outcome=outcome,
        diffs=diffs,
        noise=noise,
        primary_ms=primary[0],
        primary_error=primary[1],
        candidate_ms=candidate[0],
        candidate_error=candidate[1],
        dropped=dropped,
    )


def _derive_outcome(
    match: bool | None, diffs: tuple[str, ...], noise: tuple[str, ...], dropped: str | None,
    candidate_error: str | None,
) -> str:  # fmt: skip
    if dropped is not None:
        return "dropped"
    if match is None or candidate_error is not None:
        return "error"
    if diffs or match is False:
        return "mismatch"
    return "noise" if noise else "match"


def _finite(value: object) -> TypeGuard[int | float]:
    """A JSON number a float can hold (an integer of 400 digits is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(obj: Mapping[str, Any], field: str) -> float:
    value = obj.get(field)
    if _finite(value):
        return float(value)
    raise ValueError(f"{field} must be a finite number, got {_shown(value)}")


def _shown(value: object) -> str:
    """``value`` for an error message, cut short (a bad record may hold anything)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _text(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {_shown(value)}")
    return value


def _optional_text(obj: Mapping[str, Any], field: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{field} must be a string or null, got {_shown(value)}")
    return value


def _paths(obj: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = obj.get(field, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{field} must be a list of JSON paths, got {_shown(value)}")
    return tuple(value)


def _side(obj: Mapping[str, Any], field: str) -> tuple[float | None, str | None]:
    value = obj.get(field)
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{field} must be an object with latency_ms and error, got {_shown(value)}"
        )
    latency = value.get("latency_ms")
    if latency is not None and (not _finite(latency) or latency < 0):
        raise ValueError(f"{field}.latency_ms must be a number >= 0 or null, got {_shown(latency)}")
    error = value.get("error")
    if error is not None and not isinstance(error, str):
        raise ValueError(f"{field}.error must be a string or null, got {_shown(error)}")
    return (None if latency is None else float(latency)), error
