"""resilient: resilience middleware for Python services.

The public surface is ``__all__``. Modules that need optional packages
(``resilient.http``, ``resilient.asgi``, ``resilient.aiohttp``,
``resilient.gray``, ``resilient.stores.RedisStore``, ``resilient.config``'s
sources, ``resilient.cli``) are imported only when used, so ``import
resilient`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient import config, events, stores
from resilient.breaker import CircuitBreaker, Permit, Snapshot
from resilient.config import BreakerConfig
from resilient.deadline import deadline, remaining
from resilient.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    RejectedError,
    ResilientError,
)
from resilient.hub import Hub, breaker
from resilient.state import State

if TYPE_CHECKING:
    from resilient.budget import RetryBudget
    from resilient.bulkhead import Bulkhead
    from resilient.policy import Policy
    from resilient.retry import retry

__version__ = "0.1.0.dev0"

__all__ = [
    "BreakerConfig",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "Hub",
    "Permit",
    "Policy",
    "RejectedError",
    "ResilientError",
    "RetryBudget",
    "Snapshot",
    "State",
    "breaker",
    "config",
    "deadline",
    "events",
    "remaining",
    "retry",
    "stores",
]

_LAZY = {
    "retry": ("resilient.retry", "retry"),
    "RetryBudget": ("resilient.budget", "RetryBudget"),
    "Bulkhead": ("resilient.bulkhead", "Bulkhead"),
    "Policy": ("resilient.policy", "Policy"),
}


def __getattr__(name: str) -> Any:
    # retry and policy import tenacity; load them on first use.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resilient' has no attribute {name!r}")
