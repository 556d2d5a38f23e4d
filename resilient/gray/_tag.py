"""The gray tag: which canary ("gray") lane a request belongs to, and why.

A tag value travels in three places: a W3C ``tracestate`` list member, a plain
HTTP header and span attributes. It is validated once, where it is made, by
one rule strict enough for all three: 1 to 64 URL-unreserved characters
(``A-Z a-z 0-9 . _ ~ -``). That set is a subset of both the tracestate value
grammar and the HTTP token grammar, so no tag value can ever carry a CR, LF,
comma, ``=``, ``;``, quote or space into a header: header injection through a
tag is impossible by construction, not by escaping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["MAX_TAG_LENGTH", "RULE_NAMES", "GrayTag", "RuleName", "is_tag_value"]

RuleName = Literal["tracestate", "header", "cookie", "percentage"]

#: The values of ``GrayTag.rule`` (and of the span attribute ``gray.strategy``).
RULE_NAMES: Final = frozenset({"tracestate", "header", "cookie", "percentage"})

#: The longest tag value.
MAX_TAG_LENGTH: Final = 64

_TAG_VALUE: Final = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_TAG_LENGTH}}}")


def is_tag_value(value: object) -> bool:
    """Whether ``value`` may be a tag: 1-64 characters of ``A-Za-z0-9._~-``."""
    return isinstance(value, str) and _TAG_VALUE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class GrayTag:
    """A request recognised as gray traffic.

    Attributes:
        value: the tag, e.g. ``"canary"``; safe to write into any header.
        rule: the rule that recognised it: ``"tracestate"``, ``"header"``,
            ``"cookie"`` or ``"percentage"``. It is also the span attribute
            ``gray.strategy``.

    Raises:
        ValueError: ``value`` breaks the tag grammar, or ``rule`` is unknown.
    """

    value: str
    rule: RuleName

    def __post_init__(self) -> None:
        if not is_tag_value(self.value):
            raise ValueError(
                f"GrayTag value must be 1-64 characters of A-Z a-z 0-9 . _ ~ -, got {self.value!r}"
            )
        if self.rule not in RULE_NAMES:
            raise ValueError(f"GrayTag rule must be one of {sorted(RULE_NAMES)}, got {self.rule!r}")
