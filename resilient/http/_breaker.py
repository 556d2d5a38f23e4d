"""Per-host circuit breakers for aiohttp, as a client middleware.

One idea: stop sending to a host that is down, and find out quickly when it is back.

Each request goes through the breaker of its host, named ``host:port`` (the
key an operator writes under ``<prefix>/breakers/`` in etcd), or of its
route (``host:port/path``) with ``per="route"``. The breakers live in a
``Hub`` (the default hub if none is given), so their state can be shared
through Redis and their thresholds steered from etcd like any other.

What counts: connection errors and timeouts are failures;
responses with a 5xx status or 429 are failures but are *returned*, as
aiohttp returns them, never raised; every other response, 4xx included, is a
success (the host answered; the request was wrong). A rejected request
raises ``HostCircuitOpenError``, which is both a ``CircuitOpenError`` and an
``aiohttp.ClientConnectionError`` (so ``except aiohttp.ClientError`` still
catches it), and opens no connection.

The HTTP layer's breakers have defaults of their own (``HTTP_DEFAULTS``),
chosen for the way HTTP dependencies fail; docs/guides/http.md has the
arithmetic. In one sentence: *open when the last 20 calls all failed, or all
were slow*.

- A count window of 20 calls, ``failure_rate_threshold=1.0`` and
  ``slow_call_rate_threshold=1.0``: a host that stops answering is seen after
  20 failed attempts whatever the request rate (with a learned attempt
  timeout of 50 ms, about 0.2 s at 150 requests/s), so few requests go into
  an outage; a brownout, where half the calls fail or hang, never shows 20
  failures in a row (odds of 1 in 2**20 per call), and a healthy but slow API
  never shows 20 slow calls in a row. Retries inside the budget help a
  brownout; a breaker cannot.
- ``slow_call_duration="auto"`` (``http_auto_slow``): 4x the host's healthy
  p99, at least 50 ms, at most half the request's total timeout. The learned
  attempt timeout is never shorter (``guard()``), so an attempt that times
  out is a slow failure, and a host where every call hangs opens on the slow
  rule whether its requests time out (idempotent ones) or hang on
  (the others).
- ``open_duration=0.3`` backing off to at most ``0.6`` s: recovery is seen
  well within a second of the heal, and a long outage costs one probe per
  0.6-0.8 s.
- ``half_open_calls=1``: one request per round reaches a host that may still
  be down.
- ``cancel_on_open=True``: when the breaker opens, requests already past the
  slow limit fail at once instead of waiting out their timeouts.

The pipeline (``resilient.http._pipeline``) admits each attempt through
the breaker ``BreakerLayer.pick`` names and tells it how the attempt ended.

Concurrency: one event loop per session. A per-host breaker lives in the
request's ``Host``, a per-route one in the layer's table; either is created
under the hub's lock on first use, so racing sessions share one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
from aiohttp import ClientRequest
from yarl import URL

from resilient.breaker import CircuitBreaker
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError, ConfigError
from resilient.hub import Hub, default_hub
from resilient.latency import AutoSlow

if TYPE_CHECKING:
    from resilient.http._shared import Host

__all__ = [
    "AIOHTTP",
    "HTTP_DEFAULTS",
    "BreakerLayer",
    "Client",
    "HostCircuitOpenError",
    "breaker_layer",
    "host_key",
    "host_name",
    "http_auto_slow",
    "is_failure",
    "route_key",
    "route_name",
    "settle_error",
]

#: The per-host breaker defaults of the HTTP layer (see the module docstring for why).
HTTP_DEFAULTS: Final = BreakerConfig(
    window="count",
    window_size=20,
    minimum_calls=20,
    failure_rate_threshold=1.0,
    slow_call_rate_threshold=1.0,
    slow_call_duration="auto",
    half_open_calls=1,
    open_duration=0.3,
    open_duration_max=0.6,
    open_backoff=2.0,
    cancel_on_open=True,
)
#: The learned slow limit: this many times the host's healthy p99 ...
SLOW_MULTIPLE: Final = 4.0
#: ... at least this (seconds) ...
SLOW_FLOOR: Final = 0.05
#: ... and at most this share of the request's total timeout.
SLOW_CEILING_SHARE: Final = 0.5

_UNSAFE = re.compile(r"[^A-Za-z0-9._:/-]")

Key = Literal["host", "route"] | Callable[[ClientRequest], str]
#: ``Key`` for any client's requests (the breaker layer reads a request only through it).
AnyKey = Literal["host", "route"] | Callable[[Any], str]


class HostCircuitOpenError(CircuitOpenError, aiohttp.ClientConnectionError):
    """A host's (or route's) breaker refused the request; no connection was opened.

    Attributes:
        name: the breaker's name (``host:port``).
        retry_after: seconds until a probe may be admitted.
    """

    def __init__(self, name: str, retry_after: float, reason: str = "open") -> None:
        CircuitOpenError.__init__(self, name, retry_after, reason)


def is_failure(status: int) -> bool:
    """Whether a response status counts against the host: 5xx and 429."""
    return status >= 500 or status == 429


def host_key(url: URL) -> str:
    """The breaker name of a URL's host: ``host:port`` (IPv6 without brackets)."""
    return host_name(url.raw_host, url.port)


def route_key(url: URL) -> str:
    """The breaker name of a URL's route: ``host:port/path`` (other characters become ``_``)."""
    return route_name(url.raw_host, url.port, url.raw_path)


def host_name(host: str | None, port: int | None) -> str:
    """The breaker name of a host, for any client: ``host:port`` (IPv6 without brackets)."""
    return _safe(f"{host}:{port}")


def route_name(host: str | None, port: int | None, path: str) -> str:
    """The breaker name of a route, for any client: ``host:port/path``."""
    return _safe(f"{host}:{port}{path}")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)[:200]


def http_auto_slow(total: float) -> AutoSlow:
    """How the HTTP breakers learn ``slow_call_duration="auto"`` for a request timeout."""
    ceiling = SLOW_CEILING_SHARE * total
    return AutoSlow(multiple=SLOW_MULTIPLE, floor=min(SLOW_FLOOR, ceiling), ceiling=ceiling)


def _defaults(value: BreakerConfig | Mapping[str, Any] | None) -> BreakerConfig:
    if value is None:
        return HTTP_DEFAULTS
    if isinstance(value, BreakerConfig):
        return value
    if isinstance(value, Mapping):
        return BreakerConfig.from_mapping(value, base=HTTP_DEFAULTS)
    raise ConfigError(
        f"breaker defaults must be a BreakerConfig or a mapping of its fields, got {value!r}",
        field="breaker",
        value=value,
    )


#: What the HTTP breakers count as failures (anything else the call raises is an answer).
RECORDED: Final = (OSError, asyncio.TimeoutError, aiohttp.ClientError)


@dataclass(frozen=True, slots=True)
class Client:
    """What the breaker layer needs to know of an HTTP client library.

    Attributes:
        recorded: the exceptions its breakers count as failures.
        host_of: a request's ``host_name``.
        route_of: a request's ``route_name``.
    """

    recorded: tuple[type[BaseException], ...]
    host_of: Callable[[Any], str]
    route_of: Callable[[Any], str]


def _host_of(req: ClientRequest) -> str:
    return host_key(req.url)


def _route_of(req: ClientRequest) -> str:
    return route_key(req.url)


#: aiohttp's requests: ``ClientRequest``.
AIOHTTP: Final = Client(RECORDED, _host_of, _route_of)


class BreakerLayer:
    """The breaker layer: each attempt through its host's (or route's) breaker.

    Built by ``breaker_middleware`` (alone) or ``resilient.http.session``.
    """

    __slots__ = (
        "_auto_slow",
        "_defaults",
        "_host_of",
        "_hub",
        "_name",
        "_recorded",
        "_routes",
        "per_host",
    )

    def __init__(
        self,
        hub: Hub,
        per: AnyKey,
        defaults: BreakerConfig,
        auto_slow: AutoSlow,
        *,
        client: Client | None = None,
    ) -> None:
        self._hub = hub
        self._defaults = defaults
        self._auto_slow = auto_slow
        client = AIOHTTP if client is None else client
        self._recorded = client.recorded
        self._host_of = client.host_of
        # Per host, the breaker lives in the request's Host; otherwise here, by name.
        self._name: Callable[[Any], str] | None
        if per == "host":
            self._name = None
        elif per == "route":
            self._name = client.route_of
        else:
            self._name = per
        self.per_host = self._name is None  # then the breaker is the Host's own
        self._routes: dict[str, CircuitBreaker] = {}

    def adopt(self, host: Host, req: Any) -> None:
        if self._name is None:
            host.breaker = self._create(self._host_of(req))

    def pick(self, req: Any, host: Host) -> CircuitBreaker:
        """The breaker the attempt goes through."""
        if self._name is None:
            br = host.breaker
            assert br is not None  # adopted
            return br
        name = self._name(req)
        found = self._routes.get(name)
        if found is None:
            found = self._routes.setdefault(name, self._create(name))
        return found

    def _create(self, name: str) -> CircuitBreaker:
        return _create(self._hub, name, self._defaults, self._auto_slow, self._recorded)


def settle_error(
    br: CircuitBreaker,
    ticket: int,
    began: float,
    error: BaseException,
    task: asyncio.Task[Any] | None,
    rejected: Callable[[str, float, str], CircuitOpenError],
) -> BaseException:
    """Settle an attempt admitted by ``br`` that raised ``error``: what it fails with.

    ``error`` itself, unless the breaker cut the attempt when it opened
    (``cancel_on_open``): then the client's rejection, ``rejected(name,
    retry_after, reason)``, raised without the cancellation as its context.
    """
    rejection = br._end_error(ticket, began, error, task)
    if rejection is None:
        return error
    cut = rejected(rejection.name, rejection.retry_after, rejection.reason)
    cut.__suppress_context__ = True
    return cut


def _create(
    hub: Hub,
    name: str,
    defaults: BreakerConfig,
    auto_slow: AutoSlow,
    recorded: tuple[type[BaseException], ...] = RECORDED,
) -> CircuitBreaker:
    """The hub's breaker ``name``, created with the HTTP layer's defaults if it is new.

    They are the creator's defaults: BreakerConfig() < the HTTP defaults <
    the config source's defaults < the breaker's own key, at every reload.
    """
    return hub.breaker(name, defaults=defaults, record_exceptions=recorded, auto_slow=auto_slow)


def breaker_layer(
    hub: Hub | None = None,
    *,
    per: AnyKey = "host",
    defaults: BreakerConfig | Mapping[str, Any] | None = None,
    total: float = 10.0,
    client: Client | None = None,
) -> BreakerLayer:
    """The breaker layer, for ``pipeline`` (see ``breaker_middleware`` for the arguments).

    ``client``: the HTTP client library's errors and names (aiohttp's by default).
    """
    if hub is None:
        hub = default_hub()
    elif not isinstance(hub, Hub):
        raise ConfigError(f"hub must be a Hub, got {hub!r}", field="hub", value=hub)
    if isinstance(total, bool) or not isinstance(total, int | float) or not total > 0:
        raise ConfigError(f"total must be a number > 0, got {total!r}", field="total", value=total)
    if per not in ("host", "route") and not callable(per):
        raise ConfigError(
            f'per must be "host", "route" or a callable, got {per!r}', field="per", value=per
        )
    return BreakerLayer(hub, per, _defaults(defaults), http_auto_slow(total), client=client)
