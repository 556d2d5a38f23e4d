"""Where breaker state lives: ``MemoryStore`` (this process) or ``RedisStore`` (a fleet).

``RedisStore`` needs the ``resilient[redis]`` extra and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from resilient.stores.memory import MemoryStore

__all__ = ["MemoryStore", "RedisStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from resilient.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'resilient.stores' has no attribute {name!r}")
