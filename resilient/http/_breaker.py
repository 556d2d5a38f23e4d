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

This module also holds what the layers share, since "a host" is the
breaker's notion first: ``Host`` (one session's state for one ``host:port``,
a slot per layer), ``Hosts`` (the table, filled on first use) and ``chain``
(layers linked into one aiohttp client middleware; each ``*_middleware`` is a
chain of one).

Concurrency: one event loop per session. The host lookup is a dict read; a
breaker is created under the hub's lock on first use, so racing sessions
share one.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from yarl import URL

from resilient.breaker import CircuitBreaker
from resilient.config import BreakerConfig
from resilient.errors import CircuitOpenError, ConfigError
from resilient.hub import Hub, default_hub
from resilient.latency import AutoSlow

if TYPE_CHECKING:
    from resilient.budget import RetryBudget
    from resilient.http._timeouts import _Learned

__all__ = [
    "HTTP_DEFAULTS",
    "BreakerLayer",
    "Host",
    "HostCircuitOpenError",
    "Hosts",
    "Layer",
    "breaker_layer",
    "breaker_middleware",
    "chain",
    "guard",
    "host_key",
    "http_auto_slow",
    "is_failure",
    "route_key",
    "slow_limit",
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


class HostCircuitOpenError(CircuitOpenError, aiohttp.ClientConnectionError):
    """A host's (or route's) breaker refused the request; no connection was opened.

    Attributes:
        name: the breaker's name (``host:port``).
        retry_after: seconds until a probe may be admitted.
    """

    def __init__(self, name: str, retry_after: float, reason: str = "open") -> None:
        CircuitOpenError.__init__(self, name, retry_after, reason)


class _FailedStatus(aiohttp.ClientError):
    """Carries a 5xx/429 response out of the breaker, which counts it as a failure."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response


def is_failure(status: int) -> bool:
    """Whether a response status counts against the host: 5xx and 429."""
    return status >= 500 or status == 429


def host_key(url: URL) -> str:
    """The breaker name of a URL's host: ``host:port`` (IPv6 without brackets)."""
    return _safe(f"{url.raw_host}:{url.port}")


def route_key(url: URL) -> str:
    """The breaker name of a URL's route: ``host:port/path`` (other characters become ``_``)."""
    return _safe(f"{url.raw_host}:{url.port}{url.raw_path}")


class Host:
    """One session's state for one ``host:port``: each layer keeps its slots here.

    The layers of a session share one table of these (``Hosts``), so a
    request looks its host up once, whatever the number of layers.
    """

    __slots__ = ("breaker", "budget", "call", "learned", "streak")

    def __init__(self) -> None:
        self.breaker: CircuitBreaker | None = None  # the breaker layer's (per host)
        self.call: Guarded | None = None  # ... and the call it guards
        self.budget: RetryBudget | None = None  # the retry layer's budget ...
        self.streak = 0  # ... and its count of failed attempts in a row
        self.learned: _Learned | None = None  # the timeout layer's attempt timeout


#: The next layer's call: ``(request, aiohttp's handler, the request's Host)``.
Inner = Callable[[ClientRequest, ClientHandlerType, Host], Awaitable[ClientResponse]]


class Layer(Protocol):
    """One layer of the HTTP stack (retry, breaker, timeout).

    ``inner`` is the next layer (``None``: aiohttp's handler comes next); it is
    set once, by ``chain``. ``adopt`` fills the layer's slots of a new ``Host``.
    """

    inner: Inner | None

    def adopt(self, host: Host, req: ClientRequest) -> None: ...

    def __call__(
        self, req: ClientRequest, handler: ClientHandlerType, host: Host
    ) -> Awaitable[ClientResponse]: ...


class Hosts:
    """The ``Host`` of each ``(host, port)`` a session has sent to, made on first use."""

    __slots__ = ("_by_host", "_layers")

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)
        self._by_host: dict[tuple[str | None, int | None], Host] = {}

    def __call__(self, req: ClientRequest) -> Host:
        url = req.url
        key = (url.raw_host, url.port)
        found = self._by_host.get(key)
        if found is None:
            host = Host()
            for layer in self._layers:
                layer.adopt(host, req)
            found = self._by_host.setdefault(key, host)
        return found


def chain(
    layers: Sequence[Layer], tail: ClientMiddlewareType | None = None
) -> ClientMiddlewareType:
    """One aiohttp client middleware that runs ``layers`` in order, then ``tail``.

    Each layer calls the next directly (no aiohttp wrapper in between), and
    the request's host is looked up once for all of them: the stack costs
    about what one middleware costs. The layers are linked here, once; a
    layer belongs to one chain.
    """
    if not layers:
        raise ValueError("chain needs at least one layer")
    for outer, nested in itertools.pairwise(layers):
        outer.inner = nested
    if tail is not None:
        last = tail

        def run_tail(
            req: ClientRequest, handler: ClientHandlerType, host: Host
        ) -> Awaitable[ClientResponse]:
            return last(req, handler)

        layers[-1].inner = run_tail
    hosts = Hosts(layers)
    first = layers[0]

    async def resilient(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        return await first(req, handler, hosts(req))

    return resilient


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


#: The breaker guarding the attempt being sent (see ``guard``).
_guard_var: ContextVar[CircuitBreaker | None] = ContextVar("resilient.http.guard", default=None)


def guard() -> CircuitBreaker | None:
    """The breaker the attempt being sent goes through, or None (no breaker layer).

    The timeout layer beneath reads its slow limit (``slow_limit``): an attempt
    timeout is never shorter, so a timed-out attempt also counts as a slow
    call, and a host whose requests all time out opens the breaker even while
    other requests to it hang.
    """
    return _guard_var.get()


def slow_limit(br: CircuitBreaker) -> float:
    """Seconds after which ``br`` judges a call slow now (learned, with "auto")."""
    return br.slow_call_seconds


#: An attempt through a breaker: ``(request, handler, host) -> response``.
Guarded = Callable[[ClientRequest, ClientHandlerType, Host], Awaitable[ClientResponse]]

#: What the HTTP breakers count as failures (anything else the call raises is an answer).
RECORDED: Final = (OSError, asyncio.TimeoutError, aiohttp.ClientError)


class BreakerLayer:
    """The breaker layer: each attempt through its host's (or route's) breaker.

    Built by ``breaker_middleware`` (alone) or ``resilient.http.session``.
    """

    __slots__ = ("_auto_slow", "_defaults", "_hub", "_name", "_routes", "inner")

    def __init__(self, hub: Hub, per: Key, defaults: BreakerConfig, auto_slow: AutoSlow) -> None:
        self._hub = hub
        self._defaults = defaults
        self._auto_slow = auto_slow
        self.inner: Inner | None = None
        # Per host, the breaker lives in the request's Host; otherwise here, by name.
        self._name: Callable[[ClientRequest], str] | None
        if per == "host":
            self._name = None
        elif per == "route":
            self._name = _route_of
        else:
            self._name = per
        self._routes: dict[str, tuple[CircuitBreaker, Guarded]] = {}

    def adopt(self, host: Host, req: ClientRequest) -> None:
        if self._name is None:
            br = _create(self._hub, host_key(req.url), self._defaults, self._auto_slow)
            host.breaker, host.call = br, self._guard(br)

    def _route(self, req: ClientRequest) -> tuple[CircuitBreaker, Guarded]:
        assert self._name is not None
        name = self._name(req)
        found = self._routes.get(name)
        if found is None:
            br = _create(self._hub, name, self._defaults, self._auto_slow)
            found = self._routes.setdefault(name, (br, self._guard(br)))
        return found

    def _guard(self, br: CircuitBreaker) -> Guarded:
        """The call ``br`` guards: the inner layers, a failing status raised for it to count."""
        layer = self

        async def send(
            req: ClientRequest, handler: ClientHandlerType, host: Host
        ) -> ClientResponse:
            token = _guard_var.set(br)
            try:
                inner = layer.inner
                response = await (handler(req) if inner is None else inner(req, handler, host))
            finally:
                _guard_var.reset(token)
            if is_failure(response.status):
                raise _FailedStatus(response)
            return response

        return br(send)

    async def __call__(
        self, req: ClientRequest, handler: ClientHandlerType, host: Host
    ) -> ClientResponse:
        if self._name is None:
            br, call = host.breaker, host.call
            assert br is not None and call is not None  # adopted
        else:
            br, call = self._route(req)
        try:
            return await call(req, handler, host)
        except _FailedStatus as failed:
            return failed.response
        except CircuitOpenError as exc:
            if exc.name != br.name or isinstance(exc, HostCircuitOpenError):
                raise
            raise HostCircuitOpenError(exc.name, exc.retry_after, exc.reason) from None


def _create(hub: Hub, name: str, defaults: BreakerConfig, auto_slow: AutoSlow) -> CircuitBreaker:
    """The hub's breaker ``name``, created with the HTTP layer's defaults if it is new.

    They are the creator's defaults: BreakerConfig() < the HTTP defaults <
    the config source's defaults < the breaker's own key, at every reload.
    """
    return hub.breaker(name, defaults=defaults, record_exceptions=RECORDED, auto_slow=auto_slow)


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
    return chain([breaker_layer(hub, per=per, defaults=defaults, total=total)])


def breaker_layer(
    hub: Hub | None = None,
    *,
    per: Key = "host",
    defaults: BreakerConfig | Mapping[str, Any] | None = None,
    total: float = 10.0,
) -> BreakerLayer:
    """The breaker layer, for ``chain`` (see ``breaker_middleware`` for the arguments)."""
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
    return BreakerLayer(hub, per, _defaults(defaults), http_auto_slow(total))


def _route_of(req: ClientRequest) -> str:
    return route_key(req.url)
