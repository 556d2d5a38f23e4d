"""The httpx contenders of the chaos demo and benchmark: a bare client, and resilient's.

- ``httpx_baseline()``: ``httpx.AsyncClient(timeout=2.0)``, httpx's default
  pool: what most httpx code does today. (httpx's timeout is per phase, so a
  request may take longer than 2 s in all: a pool wait, then a read, each up to 2 s.)
  ``pool_limit=False`` lifts the pool's limit of 100 connections.
- ``httpx_contender()``: ``resilient.httpx.AsyncClient(timeouts=Timeouts(total=2.0))``,
  every other setting at its default (a fresh in-memory hub unless one is given).

A response (its body read) is its status; a failure raises and is recorded
under its exception's name. httpx is imported when a contender opens, so the
demo runs without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from resilient.demo._run import Contender, Fetch, StateSink, listened

if TYPE_CHECKING:
    from resilient.hub import Hub

__all__ = ["httpx_baseline", "httpx_contender"]


def _fetch(client: Any) -> Fetch:
    async def fetch(url: str) -> int:
        response = await client.get(url)  # the body is read before get() returns
        return int(response.status_code)

    return fetch


def httpx_baseline(total: float = 2.0, *, pool_limit: bool = True) -> Contender:
    """A bare ``httpx.AsyncClient(timeout=total)``.

    ``pool_limit=False``: with ``limits=httpx.Limits(max_connections=None)``
    (named ``httpx-unlimited``): no request waits in httpx's pool, whose
    queue costs CPU quadratic in its length (hundreds wait in an outage).
    """

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        import httpx

        options: dict[str, Any] = {}
        if not pool_limit:
            options["limits"] = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=total, **options) as client:
            yield _fetch(client)

    return Contender("httpx" if pool_limit else "httpx-unlimited", open_)


def httpx_contender(
    total: float = 2.0, *, hub: Hub | None = None, name: str = "resilient-httpx"
) -> Contender:
    """``resilient.httpx.AsyncClient(timeouts=Timeouts(total=total))``, other settings default."""

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        from resilient.http import Timeouts
        from resilient.httpx import AsyncClient

        own = listened(hub, state)
        async with AsyncClient(hub=own, timeouts=Timeouts(total=total)) as client:
            yield _fetch(client)

    return Contender(name, open_)
