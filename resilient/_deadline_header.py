"""The deadline header: a request's remaining budget in whole milliseconds.

Wire format (stable): ``x-request-timeout-ms: <digits>`` (name configurable),
the budget the caller had left when it sent the request, as a non-negative
whole number of milliseconds, at most 12 digits (about 31 years). Outbound,
the value is the *floor* of the tightest bound on the attempt, so a callee
never believes it has more time than its caller. Inbound, the value becomes
a ``resilient.deadline()`` for the handler.

Parsing is total and strict: optional spaces or tabs around ASCII digits and
nothing else; a sign, a fraction, an exponent, non-ASCII digits, a repeated
header or an over-long number all mean "no deadline" rather than an error.
A malformed header never breaks a request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

from resilient.errors import ConfigError

__all__ = ["DEFAULT_HEADER", "MAX_DIGITS", "LastFormatted", "check_name", "format_ms", "parse_ms"]

#: The default header name.
DEFAULT_HEADER: Final = "x-request-timeout-ms"
#: The longest budget accepted, in digits.
MAX_DIGITS: Final = 12

_MAX_TEXT: Final = "9" * MAX_DIGITS
_MAX_SECONDS: Final = int(_MAX_TEXT) / 1000.0
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_name(field: str, name: object) -> str:
    """``name`` lower-cased if it is an HTTP token; ``ConfigError`` naming ``field`` if not.

    Used for every header and cookie name an option can set, here and in
    ``resilient.gray``.
    """
    if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
        raise ConfigError(
            f"{field} must be an HTTP token (letters, digits, !#$%&'*+.^_`|~-), got {name!r}",
            field=field,
            value=name,
        )
    return name.lower()


def parse_ms(values: Sequence[str]) -> float | None:
    """The budget in seconds from the header's fields, or ``None`` if absent or malformed.

    Args:
        values: every field of the header, in order; more than one is
            ambiguous and ignored.
    """
    if len(values) != 1:
        return None
    text = values[0]
    # 1 to MAX_DIGITS ASCII digits (isdigit alone would take other scripts' digits);
    # OWS is stripped only when there is some (rarely: it costs a tenth of the parse)
    if not text.isdigit():
        text = text.strip(" \t")
        if not text.isdigit():
            return None
    if len(text) > MAX_DIGITS or not text.isascii():
        return None
    # float() rather than int(): exact for these (below 2**53), a third cheaper
    return float(text) / 1000.0


def format_ms(seconds: float) -> str:
    """The header value for a budget of ``seconds``: floor to whole ms, never negative."""
    if not seconds > 0.0:  # also NaN
        return "0"
    if math.isinf(seconds):
        raise ValueError("an infinite budget has no header value")
    if seconds >= _MAX_SECONDS:
        return _MAX_TEXT
    ms = seconds * 1000.0
    whole = math.floor(ms)
    # 1.001 * 1000.0 is 1000.9999999999999, and a budget read from "1001" must
    # be written back as "1001": a float a rounding error below the next whole
    # millisecond is that millisecond.
    if math.isclose(ms, whole + 1, rel_tol=1e-14, abs_tol=1e-6):
        whole += 1
    return str(whole)


class LastFormatted:
    """``format_ms`` remembering its last value: a host's attempts mostly carry the same bound."""

    __slots__ = ("_seconds", "_text")

    def __init__(self) -> None:
        self._seconds = math.nan
        self._text = ""

    def __call__(self, seconds: float) -> str:
        if seconds != self._seconds:
            self._seconds, self._text = seconds, format_ms(seconds)
        return self._text
