"""Results as JSON values, so a primary's and a candidate's can be compared.

One idea: whatever a call returns becomes plain JSON (dict, list, str, int,
float, bool, None) by fixed rules, the same in every process:

- dataclass instances: their fields (``dataclasses.fields``, no deep copy);
- pydantic models, if pydantic is already imported: ``model_dump(mode="json")``;
- mappings: keys as strings; lists and tuples as lists; sets sorted;
- HTTP responses (``http_value``): ``{"status", "headers", "body"}`` with the
  chosen headers only and the body as JSON when it parses, else as text;
- ``datetime``/``date``/``time`` as ISO text, ``Decimal``/``UUID`` as text,
  enums as their value, bytes as UTF-8 text (invalid bytes replaced);
- a float that JSON cannot hold (NaN, infinities) as its text;
- anything else as ``{"$type": <qualified name>}``: comparable, never called.

Nothing here evaluates or unpickles anything; nesting deeper than
``MAX_DEPTH`` raises ``ValueError`` (a cycle, or a value nobody should diff).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import sys
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeAlias

__all__ = ["MAX_DEPTH", "JSONValue", "http_value", "to_json"]

JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"

MAX_DEPTH = 64


def to_json(value: object, _depth: int = 0) -> JSONValue:
    """``value`` as a JSON value, by the rules of the module docstring."""
    if value is None or isinstance(value, bool | int | str):
        return value  # (int subclasses such as IntEnum too)
    if _depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels (a cycle?)")
    depth = _depth + 1
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, depth) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, depth) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_json(v, depth) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value, depth)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    dumped = _pydantic(value)
    if dumped is not None:
        return to_json(dumped, depth)
    return {"$type": f"{type(value).__module__}.{type(value).__qualname__}"}


def _pydantic(value: object) -> object | None:
    """A pydantic model's JSON dump, only if pydantic is loaded already (never imported here)."""
    module = sys.modules.get("pydantic")
    base = getattr(module, "BaseModel", None) if module is not None else None
    if base is not None and isinstance(value, base):
        dumped: Any = value.model_dump(mode="json")
        return dumped  # type: ignore[no-any-return]
    return None


def http_value(
    status: int, headers: Mapping[str, str], body: bytes, chosen: Iterable[str]
) -> JSONValue:
    """An HTTP response as ``{"status", "headers", "body"}`` (chosen headers, lower-case names).

    The body is JSON when it parses as JSON, else text (UTF-8, invalid bytes
    replaced), so two services that format JSON differently still match.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    picked: dict[str, JSONValue] = {}
    for name in chosen:
        key = name.lower()
        if key in lowered:
            picked[key] = lowered[key]
    text = body.decode("utf-8", "replace")
    parsed: JSONValue
    try:
        parsed = json.loads(text, parse_constant=_no_constant) if text else None
    except ValueError:
        parsed = text
    return {"status": status, "headers": picked, "body": parsed}


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN never equals itself: keep the text
