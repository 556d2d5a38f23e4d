"""httpx clients with what ``resilient.http.session`` gives aiohttp (extra ``resilient[httpx]``).

``AsyncClient`` and ``Client`` are ``httpx.AsyncClient`` and ``httpx.Client``
whose transport wraps httpx's own with the HTTP layers: a breaker per
``host:port``, budgeted retries of idempotent requests, layered timeouts
clipped by the deadline, the deadline header and the gray tag on every
attempt::

    async with resilient.httpx.AsyncClient(timeouts=Timeouts(total=2.0)) as client:
        response = await client.get(url)

The decisions are ``resilient.http``'s own (one code for both clients); what
is httpx's is here: the errors (``HostCircuitOpenError``,
``AttemptTimeoutError``, which httpx errors count), and how a bound is
enforced (the attempt's httpx timeouts, so the sync client needs no event
loop). See docs/guides/httpx.md.

- ``_errors``: what callers catch, what the breakers count.
- ``_exchange``: one request's steps through the layers, without I/O.
- ``_transports``: the steps carried out, awaited or blocking.
- ``_clients``: the clients and their options.
"""

from __future__ import annotations

from resilient.httpx._clients import AsyncClient, Client
from resilient.httpx._errors import FAILURES, AttemptTimeoutError, HostCircuitOpenError
from resilient.httpx._exchange import Exchange
from resilient.httpx._transports import AsyncTransport, Transport

__all__ = [
    "FAILURES",
    "AsyncClient",
    "AsyncTransport",
    "AttemptTimeoutError",
    "Client",
    "Exchange",
    "HostCircuitOpenError",
    "Transport",
]
