"""The states of a circuit breaker.

The values are also the spellings used in Redis, etcd and the CLI.
"""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
