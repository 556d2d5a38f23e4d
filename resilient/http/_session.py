"""The session factory: one call for a tuned ``aiohttp.ClientSession``.

``session()`` returns a plain ``aiohttp.ClientSession`` (no subclass) with a
pool profile's connector, the ``Timeouts`` as its ``ClientTimeout``, and the
layers in the documented order, as one client middleware (``chain``: each
layer calls the next directly and the host is looked up once, so the stack
costs about what one middleware costs), then the caller's own middlewares:

    retry > breaker > per-attempt timeout > propagation > the caller's own

(the order of ``resilient.Policy``: deadline > retry > breaker > per-attempt
timeout > call). Each retry attempt goes through the host's breaker, so a
rejection is never retried and a retry storm is visible to the breaker; the
per-attempt timeout sits inside the breaker, so a timed-out attempt counts as
a failure; the propagation middleware runs once per attempt, so the deadline
header carries what is left for *that* attempt. Middlewares passed by the
caller run last, closest to the wire (signing, for instance, is per attempt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp import ClientMiddlewareType

from resilient.config import BreakerConfig
from resilient.errors import ConfigError
from resilient.http._breaker import Key, Layer, breaker_layer, chain
from resilient.http._profiles import Profile
from resilient.http._profiles import profile as _profile
from resilient.http._propagation import propagation as _propagation
from resilient.http._retry import Retries, is_idempotent, retry_layer
from resilient.http._timeouts import Timeouts, attempt_bound, timeout_layer
from resilient.hub import Hub

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
    propagate: bool = True,
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
        propagate: write the gray tag and the deadline header on every attempt.
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
    layers: list[Layer] = []
    plan = _retries(retries)
    if plan is not None:
        layers.append(retry_layer(plan, total=timeouts.total))
    if breaker is not None and breaker is not False:
        defaults = None if breaker is True else breaker
        layers.append(breaker_layer(hub, per=per, defaults=defaults, total=timeouts.total))
    layers.append(timeout_layer(timeouts, applies=is_idempotent if plan is not None else _never))
    tail = _propagation(bound=attempt_bound) if propagate else None
    middlewares: list[ClientMiddlewareType] = [chain(layers, tail)]
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
        timeout=timeouts.client_timeout(),
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


def _never(req: object) -> bool:
    """Without retries an attempt timeout would only cut short the one attempt there is."""
    return False
