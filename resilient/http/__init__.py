"""HTTP layer for aiohttp clients: a tuned session, layered timeouts, per-host breakers,
budgeted retries and propagation, as client middlewares (aiohttp >= 3.12).

``session()`` is the one call most code needs::

    async with resilient.http.session(timeouts=Timeouts(total=2.0)) as s:
        async with s.get(url) as resp: ...

Each middleware is usable alone in any ``aiohttp.ClientSession(middlewares=...)``:
``retry_middleware`` (outermost), ``breaker_middleware``, ``timeout_middleware``
and the propagation middlewares (innermost); ``session()`` runs them all as
one middleware, in that order. See docs/guides/http.md.
"""

from __future__ import annotations

from resilient.http._breaker import (
    HTTP_DEFAULTS,
    HostCircuitOpenError,
    host_key,
    http_auto_slow,
    is_failure,
    route_key,
)
from resilient.http._middleware import breaker_middleware, retry_middleware, timeout_middleware
from resilient.http._profiles import PROFILES, Profile, profile
from resilient.http._propagation import (
    Propagation,
    deadline_propagation,
    gray_propagation,
    propagation,
)
from resilient.http._retry import RETRY_STATUSES, Retries, parse_retry_after
from resilient.http._session import session
from resilient.http._shared import IDEMPOTENT_METHODS, attempt_bound, is_idempotent
from resilient.http._timeouts import AttemptTimeoutError, Timeouts

__all__ = [
    "HTTP_DEFAULTS",
    "IDEMPOTENT_METHODS",
    "PROFILES",
    "RETRY_STATUSES",
    "AttemptTimeoutError",
    "HostCircuitOpenError",
    "Profile",
    "Propagation",
    "Retries",
    "Timeouts",
    "attempt_bound",
    "breaker_middleware",
    "deadline_propagation",
    "gray_propagation",
    "host_key",
    "http_auto_slow",
    "is_failure",
    "is_idempotent",
    "parse_retry_after",
    "profile",
    "propagation",
    "retry_middleware",
    "route_key",
    "session",
    "timeout_middleware",
]
