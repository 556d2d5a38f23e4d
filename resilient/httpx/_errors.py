"""What httpx callers catch from the resilient transports, and what the layers count.

- ``HostCircuitOpenError``: the host's breaker refused the request; no
  connection was opened. A ``CircuitOpenError`` and an ``httpx.TransportError``
  (so ``except httpx.HTTPError`` and ``except httpx.TransportError`` still
  catch it); never retried, never counted.
- ``AttemptTimeoutError``: an attempt ran out of its own bound (the attempt
  timeout, or what was left of ``Timeouts.total``): an
  ``httpx.TimeoutException``, counted by the breaker and retried like any other.
- ``FAILURES``: the httpx errors the breakers count and the retry layer
  retries: timeouts, network errors, a server that closed the connection
  without an answer. Not the caller's own mistakes (``UnsupportedProtocol``,
  ``LocalProtocolError``, an invalid URL): the host did nothing wrong there.
- ``HTTPX``: how the breaker layer names an httpx request's host or route.
"""

from __future__ import annotations

from typing import Final

import httpx

from resilient.errors import CircuitOpenError
from resilient.http._breaker import Client, host_name, route_name
from resilient.http._timeouts import TimedOut

__all__ = [
    "FAILURES",
    "HTTPX",
    "AttemptTimeoutError",
    "HostCircuitOpenError",
    "origin_of",
    "port_of",
]

#: The errors of an attempt that count against the host and are worth a retry.
FAILURES: Final = (
    OSError,
    TimeoutError,
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class HostCircuitOpenError(CircuitOpenError, httpx.TransportError):
    """A host's (or route's) breaker refused the request; no connection was opened.

    Attributes:
        name: the breaker's name (``host:port``).
        retry_after: seconds until a probe may be admitted.
    """

    def __init__(self, name: str, retry_after: float, reason: str = "open") -> None:
        # httpx's __init__ takes the message (CircuitOpenError's would pass three
        # arguments on to it); the sentence is still CircuitOpenError's __str__.
        httpx.TransportError.__init__(self, name)
        self.name = name
        self.retry_after = retry_after
        self.reason = reason


class AttemptTimeoutError(TimedOut, httpx.TimeoutException):
    """httpx's ``TimedOut`` (``.seconds``, ``.bound``): an ``httpx.TimeoutException``."""


def port_of(url: httpx.URL) -> int | None:
    """The URL's port, the scheme's default when it names none (as aiohttp's URLs give it)."""
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


def origin_of(url: httpx.URL) -> str:
    """``scheme://host:port``, as the timeout errors name what they waited for."""
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _host_of(request: httpx.Request) -> str:
    return host_name(request.url.host, port_of(request.url))


def _route_of(request: httpx.Request) -> str:
    url = request.url
    return route_name(url.host, port_of(url), url.raw_path.partition(b"?")[0].decode("ascii"))


#: httpx's requests, for the breaker layer.
HTTPX: Final = Client(FAILURES, _host_of, _route_of)
