"""The HTTP layers as client middlewares of their own, each a pipeline of one layer.

For an ``aiohttp.ClientSession(middlewares=...)`` stacked by hand, in the
order ``retry_middleware`` (outermost), ``breaker_middleware``,
``timeout_middleware``, then the propagation middlewares. What one
publishes for the next is in ``_shared``; ``session()`` runs all the layers
as one pipeline instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import ClientMiddlewareType, ClientRequest

from resilient.config import BreakerConfig
from resilient.http._breaker import Key, breaker_layer
from resilient.http._pipeline import pipeline
from resilient.http._retry import Retries, retry_layer
from resilient.http._shared import is_idempotent
from resilient.http._timeouts import Timeouts, timeout_layer
from resilient.hub import Hub

__all__ = ["breaker_middleware", "retry_middleware", "timeout_middleware"]


def retry_middleware(
    retries: Retries | None = None, *, total: float | None = None
) -> ClientMiddlewareType:
    """A client middleware that retries idempotent requests within a per-host budget.

    Put it before (outside) the breaker middleware, so every attempt goes
    through the breaker and a rejection is never retried.

    Args:
        retries: what to retry and how (``Retries()`` if omitted).
        total: seconds the whole request may take, retries included; defaults
            to the session's ``ClientTimeout.total``.

    Raises:
        ConfigError: ``retries`` or ``total`` is invalid.
    """
    return pipeline(retry=retry_layer(retries, total=total))


def breaker_middleware(
    hub: Hub | None = None,
    *,
    per: Key = "host",
    defaults: BreakerConfig | Mapping[str, Any] | None = None,
    total: float = 10.0,
) -> ClientMiddlewareType:
    """A client middleware that sends each request through its host's breaker.

    Put it after (inside) the retry middleware, so each attempt is counted.

    Args:
        hub: where the breakers live (``resilient.hub.default_hub()`` if omitted).
        per: ``"host"`` (a breaker per ``host:port``), ``"route"`` (per
            ``host:port/path``; a path with ids in it makes a breaker per id,
            so prefer a callable there), or a callable giving the breaker
            name of a request.
        defaults: the breakers' creator defaults: a ``BreakerConfig``, or a
            mapping of fields over ``HTTP_DEFAULTS`` (the default).
        total: the request timeout the learned slow limit must stay under
            (the ceiling of ``slow_call_duration="auto"`` is half of it).

    Raises:
        ConfigError: an option is invalid (the message names it).
    """
    return pipeline(breaker=breaker_layer(hub, per=per, defaults=defaults, total=total))


def timeout_middleware(
    timeouts: Timeouts | None = None,
    *,
    applies: Callable[[ClientRequest], bool] = is_idempotent,
) -> ClientMiddlewareType:
    """A client middleware that bounds each attempt (the layers: ``_timeouts``).

    Put it after (inside) the breaker middleware, so a timed-out attempt is
    counted as a failure.

    Args:
        timeouts: the layers; ``Timeouts()`` if omitted. Without a retry
            middleware before it, the total is counted from this middleware.
        applies: which requests get the attempt timeout (idempotent ones by
            default; the others are bounded by the total and the deadline).

    Raises:
        ConfigError: ``timeouts`` is not a ``Timeouts``.
    """
    return pipeline(timeout=timeout_layer(timeouts, applies=applies))
