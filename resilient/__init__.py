"""resilient: resilience middleware for Python services.

The public surface is ``__all__``. Modules that need optional packages
(``resilient.http``, ``resilient.asgi``, ``resilient.aiohttp``,
``resilient.gray``, ``resilient.stores.RedisStore``, ``resilient.config``'s
sources, ``resilient.cli``) are imported only when used, so ``import
resilient`` stays light: it loads no third-party package (tenacity is needed
only when its strategies are passed to ``retry``).
"""

from __future__ import annotations

from resilient import config, events, stores
from resilient.breaker import CircuitBreaker, Permit, Snapshot
from resilient.budget import RetryBudget
from resilient.bulkhead import Bulkhead
from resilient.config import BreakerConfig
from resilient.deadline import deadline, remaining
from resilient.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    LimitExceededError,
    RejectedError,
    ResilientError,
)
from resilient.hedge import Hedge, hedge
from resilient.hub import Hub, breaker
from resilient.limit import ConcurrencyLimit
from resilient.policy import Policy
from resilient.retry import retry
from resilient.state import State

__version__ = "0.1.0.dev0"

__all__ = [
    "BreakerConfig",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConcurrencyLimit",
    "ConfigError",
    "DeadlineExceeded",
    "Hedge",
    "Hub",
    "LimitExceededError",
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
    "hedge",
    "remaining",
    "retry",
    "stores",
]
