"""The in-memory store: each breaker keeps its own state, in this process only.

This is the store seam's null object: a hub without a store behaves exactly
like a hub with a ``MemoryStore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilient.breaker import CircuitBreaker
    from resilient.hub import Hub

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps nothing beyond the breakers themselves; needs no server."""

    async def start(self, hub: Hub) -> None:
        """Nothing to load: every breaker starts CLOSED."""

    def attach(self, breaker: CircuitBreaker) -> None:
        """Nothing to share."""

    async def close(self) -> None:
        """Nothing to flush."""

    def __repr__(self) -> str:
        return "MemoryStore()"
