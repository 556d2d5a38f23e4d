"""Gray-traffic rules and the recogniser that evaluates them in order.

A rule reads a request's headers and proposes a tag value; the recogniser
tries its rules in the configured order and keeps the first proposal that is
a valid tag value and passes the allow and deny lists (a refused proposal
does not stop the search: a denied ``x-gray`` still lets a percentage rule
decide). The rules:

* ``TracestateRule(key="gray")``: the value of one W3C tracestate member;
  only read when the traceparent and the whole tracestate are valid.
* ``HeaderRule(header="x-gray")``: a header holding exactly one token.
* ``CookieRule(cookie=...)``: a cookie's value.
* ``PercentageRule(percent, header=... | cookie=..., value="gray")``: a stable
  split by a hash of a header's or cookie's value (say, a user id), so one
  user lands on the same side in every process, language and restart:
  ``int.from_bytes(sha256(value)[:8], "big") % 10000 < percent * 100``
  (never ``hash()``, which is salted per process).

Rules and the recogniser are frozen and validated on construction
(``ConfigError``, a ``ValueError``, naming the field); after that, on the
request path, nothing raises: malformed input simply proposes nothing.
Header values reach the rules as ``str`` decoded from bytes as UTF-8 with
``surrogateescape`` (what aiohttp does), so the percentage hash sees the very
bytes on the wire whichever server decoded them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Final

from resilient._deadline_header import check_name
from resilient.errors import ConfigError
from resilient.gray._context import Found, Inbound
from resilient.gray._tag import MAX_TAG_LENGTH, RULE_NAMES, GrayTag, RuleName, is_tag_value
from resilient.gray._tracestate import Reader, check_traceparent, is_key

__all__ = [
    "DEFAULT_RULES",
    "CookieRule",
    "HeaderRule",
    "PercentageRule",
    "Recognizer",
    "Rule",
    "bucket",
]


_OWS: Final = " \t"


#: The digest's first 8 bytes as a big-endian integer (``int.from_bytes(d[:8], "big")``
#: without the slice and the keyword parsing: a shadow buckets every call's trace id).
_FIRST_8: Final = struct.Struct(">Q").unpack_from


def bucket(value: str) -> int:
    """The percentage bucket (0-9999) of a header or cookie value."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
    first: int = _FIRST_8(digest)[0]
    return first % 10000


def _single(found: Found, header: str) -> str | None:
    """The value of a header sent exactly once (a repeated one is ambiguous)."""
    values = found.get(header)
    if values is None or len(values) != 1:
        return None
    return values[0].strip(_OWS)


def _cookie(found: Found, name: str) -> str | None:
    """The first cookie called ``name`` in the Cookie header(s), unquoted."""
    for field in found.get("cookie", ()):
        for pair in field.split(";"):
            key, eq, value = pair.partition("=")
            if eq and key.strip(_OWS) == name:
                value = value.strip(_OWS)
                if len(value) >= 2 and value[0] == '"' == value[-1]:
                    value = value[1:-1]
                return value
    return None


def check_key(field: str, key: object) -> str:
    """``key`` if it is a W3C tracestate key; ``ConfigError`` naming ``field`` if not."""
    if not isinstance(key, str) or not is_key(key):
        raise ConfigError(
            f"{field} must be a W3C tracestate key (a-z or 0-9, then up to 255 of "
            f"a-z 0-9 _ - * / @), got {key!r}",
            field=field,
            value=key,
        )
    return key


class Rule:
    """The base of every rule: which headers it reads, and what tag it proposes.

    A rule is immutable and validated when built. ``propose`` runs on every
    request and must never raise: malformed input proposes ``None``.
    ``rule`` is the name it gives its tags (``GrayTag.rule``).
    """

    __slots__ = ()
    rule: ClassVar[RuleName]

    @property
    def headers(self) -> frozenset[str]:
        """The lower-case header names ``propose`` reads."""
        raise NotImplementedError

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        """A tag value from ``found`` (headers) and ``members`` (a valid tracestate), or None."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class TracestateRule(Rule):
    """Gray when the tracestate has a member ``key`` (default ``gray``) with a tag value.

    Args:
        key: the tracestate key; it must be a valid W3C key.
    """

    key: str = "gray"
    rule: ClassVar[RuleName] = "tracestate"

    def __post_init__(self) -> None:
        check_key("key", self.key)

    @property
    def headers(self) -> frozenset[str]:
        return frozenset({"traceparent", "tracestate"})

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        return None if members is None else members.get(self.key)


@dataclass(frozen=True, slots=True)
class HeaderRule(Rule):
    """Gray when the header (default ``x-gray``) holds one tag value.

    Args:
        header: the header name, matched case-insensitively.
    """

    header: str = "x-gray"
    rule: ClassVar[RuleName] = "header"

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", check_name("header", self.header))

    @property
    def headers(self) -> frozenset[str]:
        return frozenset({self.header})

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        return _single(found, self.header)


@dataclass(frozen=True, slots=True)
class CookieRule(Rule):
    """Gray when the cookie ``cookie`` holds a tag value.

    Args:
        cookie: the cookie name (case-sensitive, as cookies are).
    """

    cookie: str
    rule: ClassVar[RuleName] = "cookie"

    def __post_init__(self) -> None:
        check_name("cookie", self.cookie)

    @property
    def headers(self) -> frozenset[str]:
        return frozenset({"cookie"})

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        return _cookie(found, self.cookie)


@dataclass(frozen=True, slots=True)
class PercentageRule(Rule):
    """Gray for a stable ``percent`` of the values of a header or cookie.

    Args:
        percent: 0 to 100 (fractions allowed, to 0.01); the share of values
            whose bucket is below ``percent * 100``.
        header: the header whose value is hashed (say ``x-user-id``), or
        cookie: the cookie whose value is hashed; exactly one of the two.
        value: the tag given to the requests that fall in.
    """

    percent: float
    header: str | None = None
    cookie: str | None = None
    value: str = "gray"
    rule: ClassVar[RuleName] = "percentage"

    def __post_init__(self) -> None:
        p = self.percent
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100:
            raise ConfigError(
                f"percent must be a number from 0 to 100, got {p!r}", field="percent", value=p
            )
        if (self.header is None) == (self.cookie is None):
            raise ConfigError(
                "exactly one of header= and cookie= must name the hashed value",
                field="header",
                value=(self.header, self.cookie),
            )
        if self.header is not None:
            object.__setattr__(self, "header", check_name("header", self.header))
        else:
            check_name("cookie", self.cookie)
        if not is_tag_value(self.value):
            raise ConfigError(
                f"value must be 1-64 characters of A-Z a-z 0-9 . _ ~ -, got {self.value!r}",
                field="value",
                value=self.value,
            )

    @property
    def headers(self) -> frozenset[str]:
        return frozenset({self.header if self.header is not None else "cookie"})

    def propose(self, found: Found, members: Mapping[str, str] | None) -> str | None:
        if self.header is not None:
            source = _single(found, self.header)
        else:
            source = _cookie(found, self.cookie or "")
        if not source or bucket(source) >= self.percent * 100:
            return None
        return self.value


@lru_cache(maxsize=1024)
def _tag(value: str, rule: RuleName) -> GrayTag | None:
    """The tag for a proposed ``value``, or None if it is not a tag value.

    Tags are immutable and few (the allow list, or a handful of lanes):
    checking and building one per request costs more than the rest of
    recognition, so the verdicts are shared. The cache is bounded, and only
    values of a tag's length reach it: values from the network that are not
    tags only push others out.
    """
    return GrayTag(value, rule) if is_tag_value(value) else None


#: The rules whose ``propose`` reads no tracestate member but a TracestateRule's key.
_BUILT_IN: Final = frozenset({TracestateRule, HeaderRule, CookieRule, PercentageRule})

#: The rules of a middleware built with no ``rules=``: tracestate, then header.
DEFAULT_RULES: Final[tuple[Rule, ...]] = (TracestateRule(), HeaderRule())


def _tag_set(field: str, values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str | bytes):
        raise ConfigError(
            f"{field} must be a collection of tag values, not a single string",
            field=field,
            value=values,
        )
    out = frozenset(values)
    for value in out:
        if not is_tag_value(value):
            raise ConfigError(
                f"{field} holds {value!r}, which is not a tag value "
                f"(1-64 characters of A-Z a-z 0-9 . _ ~ -)",
                field=field,
                value=value,
            )
    return out


class Recognizer:
    """Rules in order plus allow and deny lists: a request's headers in, an ``Inbound`` out.

    Args:
        rules: the rules, tried in this order (default: tracestate, header).
            An empty sequence recognises nothing but still validates and
            keeps the inbound trace context for a pass-through.
        allow: if given, only these tag values are recognised.
        deny: tag values never recognised (checked before ``allow``).

    Raises:
        ConfigError: a rule is not a rule object, or a list holds a value that
            is not a tag value; the message names the option.

    The instance is immutable and shared by every request.
    """

    __slots__ = ("_key", "_reader", "_view", "allow", "deny", "headers", "rules")

    def __init__(
        self,
        rules: Iterable[Rule] = DEFAULT_RULES,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
    ) -> None:
        given: object = rules  # checked as the untyped value a user may pass
        if isinstance(given, str | bytes | Rule) or not isinstance(given, Iterable):
            raise ConfigError(
                f"rules must be a sequence of rule objects, got {rules!r}",
                field="rules",
                value=rules,
            )
        checked = tuple(rules)
        for rule in checked:
            if not isinstance(rule, Rule) or getattr(rule, "rule", None) not in RULE_NAMES:
                raise ConfigError(
                    "rules must hold Rule objects (TracestateRule, HeaderRule, CookieRule, "
                    f"PercentageRule, or a subclass naming one of {sorted(RULE_NAMES)}), "
                    f"got {rule!r}",
                    field="rules",
                    value=rule,
                )
        self.rules: tuple[Rule, ...] = checked
        self.allow = _tag_set("allow", allow)
        self.deny = _tag_set("deny", deny) or frozenset()
        names = {"traceparent", "tracestate"}
        for rule in checked:
            names |= rule.headers
        #: the lower-case header names this recogniser reads
        self.headers: frozenset[str] = frozenset(names)
        # Validates the tracestate and reads the tracestate rule's key in one go.
        # The built-in rules read no member but that one: unless a rule of the
        # user's (or a second key) may read others, the rules get a one-member
        # dict instead of a view of them all.
        keys = {rule.key for rule in checked if isinstance(rule, TracestateRule)}
        self._key = min(keys) if keys else None
        self._reader = Reader(self._key)
        self._view = len(keys) > 1 or any(type(rule) not in _BUILT_IN for rule in checked)

    def inspect(self, found: Found) -> Inbound | None:
        """What the headers say: the tag and the valid inbound trace context.

        Returns ``None`` when there is neither a tag nor a valid traceparent,
        so the caller can skip publishing anything. Never raises.
        """
        traceparent = parent_id = tracestate = None
        members: Mapping[str, str] | None = None
        tp_fields = found.get("traceparent")
        if tp_fields and len(tp_fields) == 1:
            traceparent = tp_fields[0].strip(_OWS)
            parent_id = check_traceparent(traceparent)
            if parent_id is None:
                traceparent = None
            else:
                ts_fields = found.get("tracestate")
                if ts_fields:
                    text = ts_fields[0] if len(ts_fields) == 1 else ",".join(ts_fields)
                    valid, value = self._reader.read(text)  # invalid, or no member: False
                    if valid:
                        tracestate = text
                        key = self._key
                        if self._view:
                            members = self._reader.view(text, value)
                        else:
                            members = {} if value is None or key is None else {key: value}
        tag = self.match(found, members)
        if tag is None and traceparent is None:
            return None
        return Inbound(tag, traceparent, parent_id, tracestate)

    def match(self, found: Found, members: Mapping[str, str] | None) -> GrayTag | None:
        """The first acceptable proposal of the rules, as a tag, or ``None``."""
        allow = self.allow
        deny = self.deny
        for rule in self.rules:
            value = rule.propose(found, members)
            # (isinstance, not `is not None`: a rule of the user's may propose anything;
            # and only what may be a tag reaches the cache of verdicts)
            if (
                isinstance(value, str)
                and len(value) <= MAX_TAG_LENGTH
                and value not in deny
                and (allow is None or value in allow)
            ):
                tag = _tag(value, rule.rule)
                if tag is not None:
                    return tag
        return None

    def __repr__(self) -> str:
        return f"Recognizer(rules={self.rules!r}, allow={self.allow!r}, deny={self.deny!r})"
