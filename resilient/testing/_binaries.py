"""Finding the executables the test fixtures run (servers, openssl)."""

from __future__ import annotations

import shutil

__all__ = ["MissingBinaryError", "which"]


class MissingBinaryError(FileNotFoundError):
    """The server's executable is not on PATH."""

    def __init__(self, binary: str, hint: str) -> None:
        self.binary = binary
        super().__init__(f"{binary!r} was not found on PATH; {hint}")


def which(binary: str, hint: str) -> str:
    """The path of ``binary`` on PATH, or ``MissingBinaryError`` saying how to install it."""
    path = shutil.which(binary)
    if path is None:
        raise MissingBinaryError(binary, hint)
    return path
