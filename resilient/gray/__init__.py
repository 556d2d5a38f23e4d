"""Gray (canary) traffic: recognise it at the edge, expose it to code, forward it.

``GrayTag`` is a recognised request's tag value and the rule that found it;
``current()`` returns it anywhere in the request's task tree (``None`` for
stable traffic). The rules (``TracestateRule``, ``HeaderRule``,
``CookieRule``, ``PercentageRule``) run in a configured order inside a
``Recognizer``, which the server middlewares (``resilient.asgi``,
``resilient.aiohttp``) build from their options. Outbound, the aiohttp client
middlewares in ``resilient.http`` and ``inject(headers)`` for any other client
write the tag as a W3C tracestate member (only where this process takes part
in the trace) and as a header (always, when there is a tag).

Wire format (stable): tracestate member ``gray=<value>`` (key configurable),
header ``x-gray: <value>`` (name configurable); a value is 1-64 characters of
``A-Z a-z 0-9 . _ ~ -``.

This package imports ``opentelemetry-api`` and nothing heavier.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TypeVar

from resilient._deadline_header import check_name
from resilient.gray._context import current, use
from resilient.gray._outbound import DEFAULT_HEADER, DEFAULT_KEY, apply
from resilient.gray._routing import route
from resilient.gray._rules import (
    DEFAULT_RULES,
    CookieRule,
    HeaderRule,
    PercentageRule,
    Recognizer,
    Rule,
    TracestateRule,
    bucket,
    check_key,
)
from resilient.gray._tag import RULE_NAMES, GrayTag, is_tag_value

__all__ = [
    "DEFAULT_HEADER",
    "DEFAULT_KEY",
    "DEFAULT_RULES",
    "RULE_NAMES",
    "CookieRule",
    "GrayTag",
    "HeaderRule",
    "PercentageRule",
    "Recognizer",
    "Rule",
    "TracestateRule",
    "bucket",
    "current",
    "inject",
    "is_tag_value",
    "route",
    "use",
]


Headers = TypeVar("Headers", bound=MutableMapping[str, str])


def inject(headers: Headers, *, header: str = DEFAULT_HEADER, key: str = DEFAULT_KEY) -> Headers:
    """Write the current gray tag and trace context onto ``headers``; return them.

    For clients other than aiohttp (httpx, a gRPC metadata dict, a message's
    headers). Follows the same rules as the aiohttp client middleware: the
    header whenever there is a tag; the tracestate member only where this
    process takes part in the trace; otherwise the inbound traceparent and
    tracestate passed through byte for byte; and no trace context invented.

    Args:
        headers: a mutable mapping; use lower-case names in a plain ``dict``.
        header: the gray header name.
        key: the tracestate key of the gray member.

    Raises:
        ConfigError: ``header`` or ``key`` is not valid.
    """
    apply(headers, check_name("header", header), check_key("key", key))
    return headers
