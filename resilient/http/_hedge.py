"""Hedged requests and a per-host concurrency limit, as one aiohttp client middleware.

``session(hedge=..., limit=...)`` puts this middleware outermost. For an
idempotent request without a body (``is_idempotent``; a body may be a stream
that cannot be sent twice), ``hedge`` sends a second request when the first
has not answered after the delay (learned per host for a percentile), within
a per-host ``RetryBudget`` (the hedge's own, or 5% of the requests plus one a
second); the first response wins, the others are cancelled, and a response
that arrived too late is released, so its connection goes back to the pool.
Each hedge is a request of its own through the session's layers (retry,
breaker, timeouts): the breaker sees a cancelled loser as neither success
nor failure, and a loser that answered after the winner is released before
anyone counts it twice (``gate``).

Unlike ``Policy`` (retry > hedge), the hedge here is outside the retry layer:
a hedge is a whole request, retries included. The limit, a
``ConcurrencyLimit`` per host (``limit="gradient2"`` or ``"vegas"``, or a
callable making one), bounds every request to that host, hedges included;
beyond it a request fails at once with ``LimitExceededError``, never sent.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from resilient.budget import RetryBudget
from resilient.errors import ConfigError
from resilient.hedge import Hedge, LearnedDelay, gate, race
from resilient.http._breaker import host_name
from resilient.http._shared import is_idempotent
from resilient.hub import Hub
from resilient.limit import ConcurrencyLimit, verdict

__all__ = ["LimitFactory", "hedge_middleware"]

LimitFactory = Callable[[], ConcurrencyLimit]

# Set in a hedge's own request, so the middleware does not hedge it again.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "resilient.http.hedge.inside", default=False
)


def _limits(value: str | LimitFactory | None) -> LimitFactory | None:
    if value is None:
        return None
    if value in ("gradient2", "vegas"):
        algorithm = value
        return lambda: ConcurrencyLimit(algorithm)  # type: ignore[arg-type]
    if callable(value) and not isinstance(value, ConcurrencyLimit):
        return value
    raise ConfigError(
        f"limit must be 'gradient2', 'vegas' or a callable making a ConcurrencyLimit "
        f"(one per host), got {value!r}",
        field="limit",
        value=value,
    )


def _bodiless(req: ClientRequest) -> bool:
    body: Any = req.body
    if isinstance(body, bytes | bytearray):
        return not body
    return getattr(body, "size", None) == 0


class _Host:
    __slots__ = ("budget", "delay", "limit")

    def __init__(
        self, hedge: Hedge | None, budget: RetryBudget | None, limit: ConcurrencyLimit | None
    ) -> None:
        self.delay: LearnedDelay | None = hedge.learner() if hedge is not None else None
        self.budget = budget
        self.limit = limit


def hedge_middleware(
    hedge: Hedge | None, limit: str | LimitFactory | None = None, hub: Hub | None = None
) -> ClientMiddlewareType:
    """The middleware ``session(hedge=..., limit=...)`` puts first.

    Each host's limit is added to ``hub`` under the host's breaker name, so
    telemetry shows it beside the breaker.
    """
    if hedge is not None and not isinstance(hedge, Hedge):
        raise ConfigError(f"hedge must be a hedge(...), got {hedge!r}", field="hedge", value=hedge)
    make_limit = _limits(limit)
    hosts: dict[tuple[str | None, int | None], _Host] = {}

    def host_of(req: ClientRequest) -> _Host:
        key = (req.url.raw_host, req.url.port)
        host = hosts.get(key)
        if host is None:
            budget = None
            if hedge is not None:
                budget = hedge.budget or RetryBudget(ratio=0.05, min_per_second=1.0)
            made = make_limit() if make_limit else None
            if made is not None and hub is not None:
                hub.add_limit(host_name(*key), made)
            host = hosts[key] = _Host(hedge, budget, made)
        return host

    async def resilient_hedge(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        host = host_of(req)
        limit = host.limit

        async def limited(send: Callable[[], Any]) -> ClientResponse:
            if limit is None:
                response: ClientResponse = await send()
                return response
            started = limit.acquire()
            try:
                response = await send()
            except BaseException as exc:
                limit.release(started, verdict(exc))
                raise
            limit.release(started, "dropped" if response.status >= 500 else "ok")
            return response

        delay = host.delay
        if _inside.get() or delay is None or not (is_idempotent(req) and _bodiless(req)):
            return await limited(lambda: handler(req))
        assert hedge is not None
        first = [True]

        async def attempt() -> ClientResponse:
            if first[0]:
                first[0] = False
                return await limited(lambda: handler(req))
            _inside.set(True)  # (this attempt's own context)
            return await limited(
                lambda: req.session.request(
                    req.method, req.url, headers=req.headers, allow_redirects=False
                )
            )

        if host.budget is not None:
            host.budget.record_request()
        return await race(
            gate(attempt, discard=ClientResponse.release),
            (),
            {},
            delay,
            host.budget,
            hedge.clock,
            hedge.sleep,
            hedge.max_extra,
        )

    return resilient_hedge
