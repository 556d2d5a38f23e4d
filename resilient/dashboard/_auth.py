"""The dashboard's control token: checked in constant time, never shown.

One idea: the token is a secret the process holds and nothing else sees. It
is compared with ``hmac.compare_digest`` (no early exit on the first wrong
byte), it has no ``repr`` beyond its presence, and the log lines and errors
of the dashboard never carry it (a refused request says only that it was
refused).
"""

from __future__ import annotations

import hmac
from typing import Final

__all__ = ["Token"]

MIN_LENGTH: Final = 8  # characters: a shorter token is a typo or a guessable word


class Token:
    """``Authorization: Bearer <token>``, as the control endpoints require it.

    Raises:
        ValueError: a token shorter than 8 characters, or with whitespace or
            control characters (it could never be sent in a header).
    """

    __slots__ = ("_expected",)

    def __init__(self, token: str) -> None:
        if len(token) < MIN_LENGTH:
            raise ValueError(f"the token must be at least {MIN_LENGTH} characters long")
        if any(c.isspace() or not c.isprintable() for c in token):
            raise ValueError("the token must not contain whitespace or control characters")
        self._expected = f"Bearer {token}".encode()

    def allows(self, authorization: str | None) -> bool:
        """Does this ``Authorization`` header value carry the token?"""
        if authorization is None:
            return False
        try:
            given = authorization.strip().encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._expected)

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__
