"""How a command ends: its exit codes, and ``fail`` with a message on stderr."""

from __future__ import annotations

from typing import NoReturn

import typer

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_GATE",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "fail",
]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CONFLICT = 4
EXIT_GATE = 5  # a gate failed (reconcile --fail-above)


def fail(code: int, message: str) -> NoReturn:
    """Print ``resilient: error: <message>`` on stderr and exit with ``code``."""
    typer.echo(f"resilient: error: {message}", err=True)
    raise typer.Exit(code)
