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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, TypeVar, overload

__all__ = [
    "MAX_MEMBERS",
    "MemberView",
    "Members",
    "Reader",
    "check_traceparent",
    "check_tracestate",
    "first_value",
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
_T = TypeVar("_T")

_KEY: Final = re.compile(r"[a-z0-9][_0-9a-z*/@-]{0,255}")
_VALUE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MEMBER: Final = re.compile(f"({_KEY.pattern})=({_VALUE.pattern})")
# A whole list in one match, for "," + the list: after each comma OWS, a
# member or nothing, OWS. A member has exactly one "=" (neither a key nor a
# value may hold one), so the members of a list that matches are counted by
# counting "=".
_ELEMENT: Final = "[ \t]*(?:{member}[ \t]*)?"
_ANY_MEMBER: Final = f"{_KEY.pattern}={_VALUE.pattern}"
_LIST: Final = re.compile(f"(?:,{_ELEMENT.format(member=_ANY_MEMBER)})*")
# version-trace_id-parent_id-flags, then (future versions only) "-" and more;
# version ff and all-zero ids are refused by the look-aheads.
_TRACEPARENT: Final = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})([0-9a-f]{16})-[0-9a-f]{2}"
    r"(-[\x21-\x7e]*)?"
)
_OWS: Final = " \t"


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
    return check_traceparent(values[0].strip(_OWS)) if len(values) == 1 else None


def check_traceparent(value: str) -> str | None:
    """The parent-id of ``value``, one traceparent field without its OWS, if it is valid."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, parent_id, rest = match.groups()
    return None if rest is not None and version == "00" else parent_id


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


def check_tracestate(text: str) -> bool:
    """Whether ``text``, a whole tracestate (fields joined by ``,``), is valid.

    The same verdict as ``parse_tracestate([text]) is not None``, in one
    regular-expression match and a count.
    """
    return _LIST.fullmatch("," + text) is not None and text.count("=") <= MAX_MEMBERS


class Reader:
    """Validates an inbound tracestate and reads one key's first member in the same match.

    What the inbound path needs of a tracestate is its verdict and, for the
    tracestate rule, one member; the members themselves are rarely all read.
    ``Reader("gray").read(text)`` is ``(valid, value)``: whether ``text`` is a
    valid tracestate with at least one member (``parse_tracestate``'s
    verdict, in one match and a count), and the value of its first ``gray``
    member (``None`` if there is none, or if it is not valid).

    Args:
        key: the key to read in the same match, or ``None`` for none.
    """

    __slots__ = ("_key", "_pattern")

    def __init__(self, key: str | None) -> None:
        self._key = key
        if key is None:
            self._pattern = _LIST
        else:
            # Elements whose member is not `key`, then (if there is one) the
            # first `key` member, its value captured, then any elements.
            other = f"(?!{re.escape(key)}=){_ANY_MEMBER}"
            first = f",[ \t]*{re.escape(key)}=({_VALUE.pattern})[ \t]*{_LIST.pattern}"
            self._pattern = re.compile(f"(?:,{_ELEMENT.format(member=other)})*(?:{first})?")

    def read(self, text: str) -> tuple[bool, str | None]:
        match = self._pattern.fullmatch("," + text)
        if match is None or "=" not in text or text.count("=") > MAX_MEMBERS:
            return False, None
        return True, match.group(1) if self._key is not None else None

    def view(self, text: str, value: str | None) -> MemberView:
        """The members of ``text``, which ``read`` found valid with ``value``."""
        return MemberView(text, self._key, value)


def first_value(text: str, key: str) -> str | None:
    """The value of the first member ``key`` of ``text``, a tracestate ``check_tracestate`` passed.

    In a valid list ``key=`` can start only a member or stand inside a
    longer key (``xkey=``, ``a@key=``): a hit counts when only OWS lies
    between it and the start or a comma.
    """
    probe = key + "="
    start = text.find(probe)
    while start >= 0:
        before = text[:start].rstrip(_OWS)
        if not before or before[-1] == ",":
            begin = start + len(probe)
            end = text.find(",", begin)
            return (text[begin:] if end < 0 else text[begin:end]).rstrip(_OWS)
        start = text.find(probe, start + 1)
    return None


class MemberView(Mapping[str, str]):
    """The members of a valid tracestate as a read-only mapping, the first of each key.

    Made per request for the rules, who mostly look up one key: a lookup
    scans the text (``first_value``) unless the ``Reader`` already read that
    key, and only iterating parses it all (once).

    Args:
        text: a tracestate that ``check_tracestate`` passed.
        key: a key whose first ``value`` is known (``None``: absent).
    """

    __slots__ = ("_all", "_key", "_value", "text")

    def __init__(self, text: str, key: str | None = None, value: str | None = None) -> None:
        self.text = text
        self._key = key  # a key whose first value (or absence: None) is known
        self._value = value
        self._all: dict[str, str] | None = None

    def _first(self, key: str) -> str | None:
        return self._value if key == self._key else first_value(self.text, key)

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        value = self._first(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> str:
        value = self._first(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._first(key) is not None

    def _parsed(self) -> dict[str, str]:
        if self._all is None:
            self._all = dict(parse_tracestate((self.text,)) or ())
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return f"MemberView({self.text!r})"


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
