"""``AsyncClient`` and ``Client``: httpx clients whose transport carries the HTTP layers.

Each is the httpx client itself (a subclass, so ``isinstance(c,
httpx.AsyncClient)`` holds and every httpx method works) with one change:
its transport is an ``AsyncTransport`` / ``Transport`` wrapping httpx's own
(or the one passed as ``transport=``). The options are
``resilient.http.session``'s, read by the same code; httpx's own options
(``base_url``, ``headers``, ``follow_redirects``, ``event_hooks``, ...) pass
through. ``Timeouts`` become the client's ``httpx.Timeout``:

    connect -> pool (waiting for a free connection)   sock_connect -> connect
    sock_read -> read                                 total -> every attempt, retries included

each clipped to ``total``; per attempt the layers clip them again to the
attempt's bound (``resilient.httpx._exchange``). ``timeout=`` is refused: use
``timeouts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from resilient.config import BreakerConfig
from resilient.errors import ConfigError
from resilient.http._breaker import AnyKey, breaker_layer
from resilient.http._profiles import Profile
from resilient.http._profiles import profile as _profile
from resilient.http._propagation import Propagation
from resilient.http._retry import Retries, retry_layer
from resilient.http._session import _propagation, _retries
from resilient.http._timeouts import Timeouts, timeout_layer
from resilient.httpx._errors import FAILURES, HTTPX
from resilient.httpx._exchange import Exchange
from resilient.httpx._transports import AsyncTransport, Transport
from resilient.hub import Hub

__all__ = ["AsyncClient", "Client"]

_DEFAULT_TIMEOUTS = Timeouts()
#: Client options that belong to the transport httpx would build; they build ours.
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits")


def _exchange(
    hub: Hub | None,
    timeouts: Timeouts,
    retries: Retries | int | bool | None,
    breaker: BreakerConfig | Mapping[str, Any] | bool | None,
    per: AnyKey,
    propagate: bool | Propagation,
    *,
    threaded: bool,
) -> Exchange:
    if not isinstance(timeouts, Timeouts):
        raise ConfigError(
            f"timeouts must be a Timeouts, got {timeouts!r}", field="timeouts", value=timeouts
        )
    plan = _retries(retries)
    guarded = None
    if breaker is not None and breaker is not False:
        defaults = None if breaker is True else breaker
        guarded = breaker_layer(hub, per=per, defaults=defaults, total=timeouts.total, client=HTTPX)
    return Exchange(
        retry=None if plan is None else retry_layer(plan, total=timeouts.total, retryable=FAILURES),
        breaker=guarded,
        timeout=timeout_layer(timeouts),
        propagation=_propagation(propagate),
        threaded=threaded,
    )


def _check(profile: str | Profile, transport: object, kwargs: dict[str, Any]) -> Profile:
    """The chosen profile, once the options agree with each other."""
    if "timeout" in kwargs:
        raise ConfigError(
            "pass timeouts=resilient.http.Timeouts(...), not timeout=", field="timeout"
        )
    chosen = _profile(profile)
    if transport is not None and profile != "default":
        raise ConfigError(
            "pass either transport= or profile=, not both", field="transport", value=transport
        )
    return chosen


def _options(chosen: Profile, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of the transport to build, taken out of the client's."""
    options = {name: kwargs.pop(name) for name in _TRANSPORT_OPTIONS if name in kwargs}
    options.setdefault(
        "limits",
        httpx.Limits(
            max_connections=chosen.limit,
            max_keepalive_connections=chosen.limit,
            keepalive_expiry=chosen.keepalive_timeout,
        ),
    )
    return options


def _timeout(timeouts: Timeouts) -> httpx.Timeout:
    """The client's ``httpx.Timeout``: the layers, each clipped to ``total``."""
    total = timeouts.total

    def clip(value: float | None) -> float:
        return total if value is None else min(value, total)

    return httpx.Timeout(
        connect=clip(timeouts.sock_connect),
        read=clip(timeouts.sock_read),
        write=total,
        pool=clip(timeouts.connect),
    )


class _Layered:
    """The one ``__init__`` of both clients: the layers' options, then httpx's own.

    Each client names its transports and whether threads share it.
    """

    _threaded: ClassVar[bool]
    _inner: ClassVar[Any]  # the class of httpx's transport, built when none is passed
    _outer: ClassVar[Any]  # the class of ours, around it: (inner, exchange)

    def __init__(
        self,
        *,
        hub: Hub | None = None,
        profile: str | Profile = "default",
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        retries: Retries | int | bool | None = True,
        breaker: BreakerConfig | Mapping[str, Any] | bool | None = True,
        per: AnyKey = "host",
        propagate: bool | Propagation = True,
        transport: httpx.AsyncBaseTransport | httpx.BaseTransport | None = None,
        **httpx_options: Any,
    ) -> None:
        exchange = _exchange(
            hub, timeouts, retries, breaker, per, propagate, threaded=self._threaded
        )
        chosen = _check(profile, transport, httpx_options)
        inner = transport or self._inner(**_options(chosen, httpx_options))
        super().__init__(  # httpx's client, next in the subclass's MRO
            transport=self._outer(inner, exchange),  # type: ignore[call-arg]
            timeout=_timeout(timeouts),
            **httpx_options,
        )


class AsyncClient(_Layered, httpx.AsyncClient):
    """An ``httpx.AsyncClient`` with per-host breakers, budgeted retries, layered timeouts
    under the deadline, and the deadline header and gray tag on every attempt.

    Args:
        hub: where the per-host breakers live (the default hub if omitted).
        profile: the pool profile (``resilient.http.PROFILES``): its
            ``limit`` and ``keepalive_timeout`` become the ``httpx.Limits``.
        timeouts: the timeout layers; ``total`` bounds each request, retries
            included, and ``attempt`` ("auto" by default) each attempt.
        retries: ``True`` (``Retries()``), a ``Retries``, a number of
            attempts, or ``False``/``None`` for no retries.
        breaker: ``True`` (per-host breakers with ``HTTP_DEFAULTS``), a
            ``BreakerConfig`` or mapping of fields over them, or
            ``False``/``None`` for no breaker.
        per: ``"host"``, ``"route"`` or a callable naming an
            ``httpx.Request``'s breaker.
        propagate: write the gray tag and the deadline header on every
            attempt (``True``), with other header names (a ``Propagation``), or not.
        transport: the ``httpx.AsyncBaseTransport`` that sends
            (``httpx.AsyncHTTPTransport`` built from ``verify``, ``cert``,
            ``http1``, ``http2``, ``limits`` and the profile if omitted).
        httpx_options: passed to ``httpx.AsyncClient``; ``timeout`` is refused.

    Raises:
        ConfigError: an option is invalid (the message names it).
    """

    _threaded = False
    _inner = httpx.AsyncHTTPTransport
    _outer = AsyncTransport


class Client(_Layered, httpx.Client):
    """An ``httpx.Client`` with the layers of ``AsyncClient``; safe to share by threads.

    The arguments are ``AsyncClient``'s (``transport``: an
    ``httpx.BaseTransport``, ``httpx.HTTPTransport`` if omitted). Without an
    event loop a request cannot be cut short: every bound (the attempt's,
    the total, the deadline's ``remaining()``) is enforced through the
    attempt's httpx timeouts.

    Raises:
        ConfigError: an option is invalid (the message names it).
    """

    _threaded = True
    _inner = httpx.HTTPTransport
    _outer = Transport
