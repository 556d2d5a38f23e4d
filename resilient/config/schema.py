"""The config document's JSON Schema, derived from FIELDS, and whole-document validation.

One idea: ``FIELDS`` (in ``_fields``) is the only table of what a breaker's
config may hold; this module turns it into a JSON Schema (what ``resilient
config schema`` prints and editors can use) and checks a whole document of the
shape ``{defaults: {...}, breakers: {name: {...}}}`` with the ``jsonschema``
library, reporting every problem with the key path it sits at.

Validation has two passes:

1. the schema: structure, types, ranges, unknown fields and breaker names;
2. the combinations a schema cannot express (``open_duration_max >=
   open_duration``, a whole ``window_size`` for count windows), found by
   building the BreakerConfig each breaker would get, defaults included.

Messages for a bad field come from ``Field.check``, so the CLI, a running hub
and the dataclass all say the same thing about the same value (a unit test
checks that the schema and ``Field.check`` agree). This module is for the CLI
and the edges: the hot path never validates, and ``import resilient`` never
imports ``jsonschema``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resilient.config._fields import FIELDS, BreakerConfig, Field
from resilient.errors import ConfigError

__all__ = [
    "NAME_PATTERN",
    "DocumentError",
    "Problem",
    "breaker_schema",
    "document_schema",
    "format_path",
    "is_valid_name",
    "validate_breaker",
    "validate_document",
]

NAME_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
"""What a breaker name may be; the HTTP layer's ``host:port`` names fit it."""

_NAME_RE = re.compile(NAME_PATTERN)
_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
_TOP_LEVEL = ("defaults", "breakers")
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def is_valid_name(name: object) -> bool:
    """True if ``name`` is a string matching ``NAME_PATTERN``."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a key path) and what.

    ``path`` is the keys from the document's root, e.g. ``("breakers",
    "payments", "failure_rate_threshold")``; it is empty for the document
    itself. ``str()`` gives ``breakers.payments.failure_rate_threshold: must
    be > 0, got 0``.
    """

    path: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        where = format_path(self.path)
        return f"{where}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, str]:
        return {"path": format_path(self.path), "message": self.message}


def format_path(path: Sequence[str]) -> str:
    """Render a key path the way jq would: ``breakers["api.example.com:443"].buckets``."""
    out = ""
    for segment in path:
        if _PLAIN_SEGMENT.match(segment):
            out += f".{segment}" if out else segment
        else:
            escaped = segment.replace("\\", "\\\\").replace('"', '\\"')
            out += f'["{escaped}"]'
    return out


class DocumentError(ConfigError):
    """A config document is invalid; ``problems`` lists every reason, with its path."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        first = self.problems[0] if self.problems else Problem((), "invalid document")
        head = f"{source}: " if source else ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        field = first.path[-1] if first.path else None
        super().__init__(f"{head}{first}{more}", field=field)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_document_error, (self.problems, self.source))


def _rebuild_document_error(problems: Sequence[Problem], source: str | None) -> DocumentError:
    return DocumentError(problems, source=source)


# -- the schema ---------------------------------------------------------------------------


def _number_schema(f: Field) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": f.kind}
    if f.minimum is not None:
        schema["exclusiveMinimum" if f.exclusive_minimum else "minimum"] = f.minimum
    if f.maximum is not None:
        schema["maximum"] = f.maximum
    return schema


def field_schema(f: Field) -> dict[str, Any]:
    """The JSON Schema of one field (with its description and default)."""
    body: dict[str, Any]
    if f.kind == "boolean":
        body = {"type": "boolean"}
    elif f.kind == "string":
        body = {"type": "string", "enum": list(f.choices)}
    elif f.auto:
        body = {"anyOf": [_number_schema(f), {"const": "auto"}]}
    else:
        body = _number_schema(f)
    return {"description": f.doc, "default": f.default, **body}


def breaker_schema() -> dict[str, Any]:
    """The JSON Schema of one breaker's config object (an etcd value, a ``defaults``)."""
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in FIELDS},
        "additionalProperties": False,
    }


def document_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config document (what ``resilient config schema`` prints)."""
    return {
        "$schema": _DIALECT,
        "title": "resilient breaker configuration",
        "description": (
            "defaults apply to every breaker; breakers.<name> overlays them for one breaker. "
            "Both are optional."
        ),
        "type": "object",
        "properties": {
            "defaults": {"$ref": "#/$defs/breaker"},
            "breakers": {
                "type": "object",
                "propertyNames": {"pattern": NAME_PATTERN},
                "additionalProperties": {"$ref": "#/$defs/breaker"},
            },
        },
        "additionalProperties": False,
        "$defs": {"breaker": breaker_schema()},
    }


@functools.cache
def _validator(which: str) -> Any:
    import jsonschema

    schema = document_schema() if which == "document" else breaker_schema()
    if which != "document":
        schema = {"$schema": _DIALECT, **schema}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- validation ---------------------------------------------------------------------------


def validate_document(data: object) -> list[Problem]:
    """Every problem with a whole document, sorted by path; empty when it is valid.

    ``data`` is what a YAML or JSON parser returned. Unknown fields are
    problems here (the CLI's strictness); a running process ignores them.
    """
    if not isinstance(data, Mapping):
        return [Problem((), f"the document must be a mapping with optional 'defaults' "
                            f"and 'breakers', got {_kind(data)}")]  # fmt: skip
    problems = _key_type_problems(data)
    if not problems:
        errors = _validator("document").iter_errors(data)
        problems = _flatten([_describe(e, (), in_document=True) for e in errors])
        problems += _combination_problems(data, {_section(p.path) for p in problems})
    return _sorted_unique(problems)


def validate_breaker(data: object, *, path: tuple[str, ...] = ()) -> list[Problem]:
    """Every problem with one breaker's config object (say, an etcd value) on its own."""
    if not isinstance(data, Mapping):
        return [Problem(path, f"must be a mapping of fields, got {_kind(data)}")]
    errors = _validator("breaker").iter_errors(data)
    problems = _flatten([_describe(e, path, in_document=False) for e in errors])
    if not problems:
        problems = _build_problems(path, dict(data))
    return _sorted_unique(problems)


def _section(path: tuple[str, ...]) -> tuple[str, ...]:
    """The part of a document a problem sits in: ``()``, ``("defaults",)`` or one breaker."""
    return path[:2] if path[:1] == ("breakers",) else path[:1]


def _sorted_unique(problems: list[Problem]) -> list[Problem]:
    return sorted(set(problems), key=lambda p: (p.path, p.message))


def _key_type_problems(data: Mapping[Any, Any]) -> list[Problem]:
    """YAML allows non-string keys (``8080: {...}``); JSON and etcd keys cannot be."""
    problems = []
    for top in ("defaults", "breakers"):
        section = data.get(top)
        if not isinstance(section, Mapping):
            continue
        for key in section:
            if not isinstance(key, str):
                what = "breaker name" if top == "breakers" else "field name"
                problems.append(
                    Problem(
                        (top, str(key)),
                        f"{what} must be a string, got {_kind(key)} (quote it in YAML)",
                    )
                )
    return problems


def _flatten(problems: list[Problem | list[Problem]]) -> list[Problem]:
    out: list[Problem] = []
    for p in problems:
        out.extend(p if isinstance(p, list) else [p])
    return out


def _describe(error: Any, base: tuple[str, ...], *, in_document: bool) -> Problem | list[Problem]:
    """Turn one jsonschema error into problems an operator can act on."""
    rel = tuple(str(p) for p in error.absolute_path)
    path = base + rel
    keyword = error.validator
    if keyword == "additionalProperties":
        known = error.schema.get("properties") or {}
        top = in_document and not rel
        return [_unknown_key(path, str(k), top=top) for k in error.instance if str(k) not in known]
    if keyword == "pattern" and path[-1:] == ("breakers",) and isinstance(error.instance, str):
        return Problem(
            (*path, error.instance),
            "invalid breaker name: use 1 to 200 letters, digits and . _ : / -",
        )
    field = _BY_NAME.get(path[-1]) if _is_field_path(rel, in_document=in_document) else None
    if field is not None:
        try:
            field.check(error.instance)
        except ConfigError as exc:
            return Problem(path, str(exc).removeprefix(f"{field.name} "))
    if keyword == "type" and error.schema.get("type") == "object":
        what = "breaker names to fields" if path[-1:] == ("breakers",) else "fields"
        return Problem(path, f"must be a mapping of {what}, got {_kind(error.instance)}")
    return Problem(path, error.message)  # the schema and Field.check disagree: a test catches it


def _is_field_path(rel: tuple[str, ...], *, in_document: bool) -> bool:
    if not in_document:
        return len(rel) == 1
    return (len(rel) == 2 and rel[0] == "defaults") or (len(rel) == 3 and rel[0] == "breakers")


def _unknown_key(path: tuple[str, ...], key: str, *, top: bool) -> Problem:
    if top:
        return Problem((key,), "unknown top-level key (expected 'defaults' and/or 'breakers')")
    close = difflib.get_close_matches(key, list(_BY_NAME), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return Problem((*path, key), f"unknown field{hint}")


def _combination_problems(data: Mapping[str, Any], broken: set[tuple[str, ...]]) -> list[Problem]:
    """Build each breaker's config (defaults included) to find bad combinations.

    Sections the schema already found broken (``broken`` holds their paths)
    are skipped. A problem that a breaker only inherits from ``defaults`` is
    reported once, at ``defaults``, not again under every breaker.
    """
    if ("defaults",) in broken or () in broken or ("breakers",) in broken:
        return []
    defaults = dict(data.get("defaults") or {})
    problems = _build_problems(("defaults",), defaults)
    inherited = {p.message for p in problems}
    for name, own in (data.get("breakers") or {}).items():
        if ("breakers", name) in broken:
            continue
        for p in _build_problems(("breakers", name), {**defaults, **own}):
            if p.message in inherited and p.path[-1] not in own:
                continue
            problems.append(p)
    return problems


def _build_problems(path: tuple[str, ...], values: dict[str, Any]) -> list[Problem]:
    try:
        BreakerConfig.from_mapping(values)
    except ConfigError as exc:
        where = (*path, exc.field) if exc.field else path
        return [Problem(where, str(exc))]
    return []


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
