"""The session factory: one call for a tuned ``aiohttp.ClientSession``.

``session()`` returns a plain ``aiohttp.ClientSession`` (no subclass) with a
pool profile's connector, the ``Timeouts`` as its ``ClientTimeout`` but for
``total``, and the layers as one client middleware
(``resilient.http._pipeline``, which has the order and why), then the
caller's own middlewares:

    retry > breaker > per-attempt timeout > propagation > the caller's own

Middlewares passed by the caller run last, closest to the wire (signing,
for instance, is per attempt).

The total is kept by the pipeline, the body included, on the one timer it
keeps for every attempt: aiohttp's own total would cost a timer per request,
about 8% of a request's CPU (docs/benchmarks.md). So ``session.timeout.total``
reads None; ``Timeouts.total`` is in force all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import ClientMiddlewareType

from resilient.config import BreakerConfig
from resilient.errors import ConfigError
from resilient.http._breaker import Key, breaker_layer
from resilient.http._hedge import LimitFactory, hedge_middleware
from resilient.http._pipeline import pipeline
from resilient.http._profiles import Profile
from resilient.http._profiles import profile as _profile
from resilient.http._propagation import Propagation
from resilient.http._retry import Retries, retry_layer
from resilient.http._shared import is_idempotent
from resilient.http._timeouts import Timeouts, timeout_layer
from resilient.hub import Hub, default_hub

if TYPE_CHECKING:
    from resilient.hedge import Hedge
    from resilient.shadow._http import HttpShadow

__all__ = ["session"]

_DEFAULT_TIMEOUTS = Timeouts()


def session(
    hub: Hub | None = None,
    profile: str | Profile = "default",
    timeouts: Timeouts = _DEFAULT_TIMEOUTS,
    retries: Retries | int | bool | None = True,
    breaker: BreakerConfig | Mapping[str, Any] | bool | None = True,
    *,
    per: Key = "host",
    propagate: bool | Propagation = True,
    shadow: HttpShadow | None = None,
    hedge: Hedge | None = None,
    limit: str | LimitFactory | None = None,
    **client_session_kwargs: Any,
) -> aiohttp.ClientSession:
    """A tuned ``aiohttp.ClientSession``: pool profile, layered timeouts, client middlewares.

    Call it inside a running event loop; use the result as ``async with``.

    Args:
        hub: where the per-host breakers live (the default hub if omitted).
        profile: ``"default"``, ``"low-latency"``, ``"high-throughput"`` or a ``Profile``.
        timeouts: the timeout layers; ``total`` bounds each request, retries
            included, and ``attempt`` ("auto" by default) each attempt.
        retries: ``True`` (``Retries()``), a ``Retries``, a number of
            attempts, or ``False``/``None`` for no retries.
        breaker: ``True`` (per-host breakers with ``HTTP_DEFAULTS``), a
            ``BreakerConfig`` or mapping of fields over them (the breakers'
            creator defaults), or ``False``/``None`` for no breaker.
        per: ``"host"``, ``"route"`` or a callable naming a request's breaker.
        shadow: an ``resilient.shadow.HttpShadow`` mirroring a sample of the
            requests to a candidate (outermost: one mirror per request).
        hedge: a ``resilient.hedge(...)``: idempotent requests without a body
            get a budgeted hedge when slow (``resilient.http._hedge``).
        limit: a ``ConcurrencyLimit`` per host: ``"gradient2"``, ``"vegas"``
            or a callable making one; beyond it ``LimitExceededError``.
        propagate: write the gray tag and the deadline header on every attempt
            (``True``), with other header names (a ``Propagation``), or not.
        client_session_kwargs: passed to ``aiohttp.ClientSession``;
            ``middlewares`` run after this layer's, ``connector`` replaces the
            profile's (then ``profile`` must be left at its default), and
            ``timeout`` is refused: use ``timeouts``.

    Raises:
        ConfigError: an option is invalid (the message names it).
    """
    if not isinstance(timeouts, Timeouts):
        raise ConfigError(
            f"timeouts must be a Timeouts, got {timeouts!r}", field="timeouts", value=timeouts
        )
    if "timeout" in client_session_kwargs:
        raise ConfigError(
            "pass timeouts=resilient.http.Timeouts(...), not timeout=", field="timeout"
        )
    chosen = _profile(profile)
    plan = _retries(retries)
    guarded = None
    if breaker is not None and breaker is not False:
        defaults = None if breaker is True else breaker
        guarded = breaker_layer(hub, per=per, defaults=defaults, total=timeouts.total)
    middleware = pipeline(
        retry=None if plan is None else retry_layer(plan, total=timeouts.total),
        breaker=guarded,
        timeout=timeout_layer(
            timeouts, applies=is_idempotent if plan is not None else _never, bounds_body=True
        ),
        propagation=_propagation(propagate),
    )
    middlewares: list[ClientMiddlewareType] = [middleware]
    if hedge is not None or limit is not None:
        limits_hub = hub if hub is not None else default_hub()
        middlewares.insert(0, hedge_middleware(hedge, limit, limits_hub))
    if shadow is not None:
        if not callable(getattr(shadow, "middleware", None)):
            raise ConfigError(f"shadow must be an HttpShadow, got {shadow!r}", field="shadow")
        middlewares.insert(0, shadow.middleware)
    extra: Sequence[ClientMiddlewareType] = client_session_kwargs.pop("middlewares", ())
    middlewares.extend(extra)
    connector = client_session_kwargs.pop("connector", None)
    if connector is None:
        connector = chosen.connector()
    elif profile != "default":
        raise ConfigError(
            "pass either connector= or profile=, not both", field="connector", value=connector
        )
    options = {**chosen.session_options(), **client_session_kwargs}
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeouts.client_timeout(total=False),  # the pipeline keeps it, body included
        middlewares=tuple(middlewares),
        **options,
    )


def _retries(value: Retries | int | bool | None) -> Retries | None:
    if value is None or value is False:
        return None
    if value is True:
        return Retries()
    if isinstance(value, Retries):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Retries(attempts=value)
    raise ConfigError(
        f"retries must be a Retries, a number of attempts, True or False, got {value!r}",
        field="retries",
        value=value,
    )


def _propagation(value: bool | Propagation) -> Propagation | None:
    if isinstance(value, Propagation):
        return value
    if value is True:
        return Propagation()
    if value is False:
        return None
    raise ConfigError(
        f"propagate must be True, False or a Propagation, got {value!r}",
        field="propagate",
        value=value,
    )


def _never(req: object) -> bool:
    """Without retries an attempt timeout would only cut short the one attempt there is."""
    return False
