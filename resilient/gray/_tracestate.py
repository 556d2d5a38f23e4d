"""W3C Trace Context grammar: ``traceparent`` and ``tracestate``, parsed and written.

The grammar is the current W3C one (the spec's ABNF, and the trace-context
test suite since its revision acab820, 2026-06): a key is
``(lcalpha / DIGIT) 0*255(keychar)`` with ``keychar`` one of
``a-z 0-9 _ - * / @``, so an ``@`` may stand anywhere after the first
character (``foo@``, ``foo@@bar``; not ``@foo``) and a key has at most 256
characters (the old ``tenant@system`` 241/14 split is gone); a value is 1 to
256 printable ASCII characters other than ``,`` and ``=``, not ending in a
space. (opentelemetry-api 1.45 still checks the old key grammar.)

Rules this module enforces, all from the spec:

* a ``traceparent`` with any fault (wrong length, upper-case hex, version
  ``ff``, an all-zero id, extra fields on version ``00``, or more than one
  header) is invalid, and an invalid or missing traceparent means the
  tracestate is not parsed at all;
* a ``tracestate`` is the comma-joined list of all its header fields; empty
  and whitespace-only members are allowed and ignored; one member breaking the
  key or value grammar, or more than 32 members, makes the *whole* tracestate
  invalid (it is dropped, never repaired);
* a duplicated key is not invalid. Whoever forwards the tracestate as
  received (a pass-through) keeps it as it is; a parse, which is for a
  participant that rewrites the list and for reading the gray member, keeps
  the first member of each key (W3C: vendors MAY discard duplicates);
* writing a member puts it first, keeps the other members in order and
  byte for byte, and drops members from the end to stay within 32.

Every function here is total: any string in, a result or ``None`` out, never
an exception. These run on untrusted input on every request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "MAX_MEMBERS",
    "Members",
    "format_traceparent",
    "is_key",
    "is_value",
    "join_members",
    "parse_traceparent",
    "parse_tracestate",
    "put_member",
]

#: W3C: "There can be a maximum of 32 list-members in a list."
MAX_MEMBERS: Final = 32

Members = list[tuple[str, str]]

_KEY: Final = re.compile(r"[a-z0-9][_0-9a-z*/@-]{0,255}")
_VALUE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MEMBER: Final = re.compile(f"({_KEY.pattern})=({_VALUE.pattern})")
# version-trace_id-parent_id-flags, then (future versions only) "-" and more.
_TRACEPARENT: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-[\x21-\x7e]*)?"
)
_OWS: Final = " \t"
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_PARENT_ID: Final = "0" * 16


def is_key(key: str) -> bool:
    """Whether ``key`` is a valid tracestate key."""
    return _KEY.fullmatch(key) is not None


def is_value(value: str) -> bool:
    """Whether ``value`` is a valid tracestate value."""
    return _VALUE.fullmatch(value) is not None


def parse_traceparent(values: Sequence[str]) -> str | None:
    """The parent-id of a valid traceparent, or ``None``.

    Args:
        values: every ``traceparent`` header field of the message (more than
            one is invalid: the suite expects a restart for duplicates).
    """
    if len(values) != 1:
        return None
    match = _TRACEPARENT.fullmatch(values[0].strip(_OWS))
    if match is None:
        return None
    version, trace_id, parent_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return parent_id


def parse_tracestate(values: Iterable[str]) -> Members | None:
    """The members of a tracestate, in order, or ``None`` if it is invalid.

    A key that comes more than once keeps its first member (W3C: vendors MAY
    discard duplicates); every member received counts towards the 32.

    Args:
        values: every ``tracestate`` header field, in the order received;
            they are combined as one comma-separated list (RFC 9110 5.3).
    """
    members: Members = []
    seen: set[str] = set()
    count = 0
    for field in values:
        for raw in field.split(","):
            member = raw.strip(_OWS)
            if not member:
                continue
            match = _MEMBER.fullmatch(member)
            if match is None or count == MAX_MEMBERS:
                return None
            count += 1
            key, value = match.groups()
            if key not in seen:
                seen.add(key)
                members.append((key, value))
    return members


def join_members(members: Iterable[tuple[str, str]]) -> str:
    """The tracestate header value for ``members`` (empty string for none)."""
    return ",".join(f"{key}={value}" for key, value in members)


def put_member(members: Iterable[tuple[str, str]], key: str, value: str) -> str:
    """The tracestate with ``key=value`` first, others kept in order, at most 32.

    The caller guarantees ``key`` and ``value`` are valid (they come from a
    validated rule and a validated tag). A previous member with the same key
    is replaced; when the list would exceed 32 members, the last ones go.
    """
    kept = [f"{k}={v}" for k, v in members if k != key]
    del kept[MAX_MEMBERS - 1 :]
    kept.insert(0, f"{key}={value}")
    return ",".join(kept)


def format_traceparent(trace_id: int, span_id: int, trace_flags: int) -> str:
    """A version-00 traceparent for a span context's ids and flags."""
    return f"00-{trace_id:032x}-{span_id:016x}-{trace_flags & 0xFF:02x}"
