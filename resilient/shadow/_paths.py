"""JSON paths: where two JSON values differ, and which paths a pattern names.

One idea: a difference is a JSONPath-like string (``$.items[3].score``),
found by walking both values together. Object keys that are identifiers are
written ``.key``, others ``["key"]`` (JSON-quoted); list indexes ``[3]``.
Where one side has a key or an item the other lacks, or the types differ
(``1`` and ``true`` differ; ``1`` and ``1.0`` do not, as in JSON), the path
of that node is the difference and nothing beneath it is walked.

Patterns (``ignore=``, learned noise) are paths in which ``[*]`` matches any
index and ``.*`` any key; a pattern names its node and everything beneath.
``generalize`` turns a path into its pattern (indexes become ``[*]``), so a
noisy ``$.items[0].ts`` learned once covers ``$.items[7].ts`` too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache

from resilient.shadow._normalize import JSONValue

__all__ = ["Patterns", "diff_paths", "generalize"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\[\d+\]")


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENT.fullmatch(key) else f"{path}[{json.dumps(key)}]"


@lru_cache(maxsize=4096)
def generalize(path: str) -> str:
    """``path`` with every list index replaced by ``[*]``."""
    return _INDEX.sub("[*]", path)


class Patterns:
    """A set of path patterns; ``covers(path)`` says whether one names ``path`` or an ancestor.

    Raises:
        ValueError: a pattern does not start with ``$``.
    """

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        found = tuple(dict.fromkeys(patterns))
        for p in found:
            if not isinstance(p, str) or not p.startswith("$"):
                raise ValueError(f"a JSON path must start with '$', got {p!r}")
        self.patterns = found
        self._regex = re.compile("|".join(_pattern_regex(p) for p in found)) if found else None

    def covers(self, path: str) -> bool:
        return self._regex is not None and self._regex.match(path) is not None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __repr__(self) -> str:
        return f"Patterns({list(self.patterns)!r})"


def _pattern_regex(pattern: str) -> str:
    body = re.escape(pattern)
    body = body.replace(r"\[\*\]", r"\[\d+\]").replace(r"\.\*", r"\.[A-Za-z_][A-Za-z0-9_]*")
    return f"(?:{body})(?=$|[.\\[])"


def diff_paths(
    primary: JSONValue, candidate: JSONValue, ignore: Patterns | None = None
) -> list[str]:
    """The paths where ``candidate`` differs from ``primary``, in document order."""
    out: list[str] = []
    _walk(primary, candidate, "$", ignore if ignore else None, out)
    return out


def _walk(a: JSONValue, b: JSONValue, path: str, ignore: Patterns | None, out: list[str]) -> None:
    if ignore is not None and ignore.covers(path):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            child = _key_path(path, key)
            if key not in a or key not in b:
                if ignore is None or not ignore.covers(child):
                    out.append(child)
            else:
                _walk(a[key], b[key], child, ignore, out)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            child = f"{path}[{i}]"
            if i >= len(a) or i >= len(b):
                if ignore is None or not ignore.covers(child):
                    out.append(child)
            else:
                _walk(a[i], b[i], child, ignore, out)
        return
    if _kind(a) != _kind(b) or a != b:
        out.append(path)


def _kind(value: JSONValue) -> str:
    """The JSON type: bool is not a number, an int and a float are both numbers."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
