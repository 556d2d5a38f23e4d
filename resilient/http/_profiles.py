"""Connection-pool profiles: tuned ``aiohttp.TCPConnector`` settings for three kinds of traffic.

One idea: the pool is part of the timeout story. A request that waits for a
free connection, a DNS answer or a handshake spends its budget before it is
sent; a pool that lets one host take every connection turns one slow
dependency into an outage of all of them.

Each ``Profile`` sets four things (docs/guides/http.md has the table):

- ``limit``: connections open at once, in all; the most requests in flight
  (Little's law: rate x latency; 100 covers 1,000 requests/s at 100 ms).
- ``limit_per_host``: the most one host may hold, so a host that hangs fills
  its share of the pool and no more (a bulkhead); 0 means no cap.
- ``keepalive_timeout``: how long an idle connection is kept for reuse. A
  client must let go *before* the server does: reusing a connection the
  server is closing loses the request. Common servers close idle connections
  after 5 s (uvicorn, Node.js) to 60-75 s (AWS ALB, nginx).
- ``ttl_dns_cache``: seconds a DNS answer is reused; longer keeps the
  resolver off the request path, shorter follows address changes sooner.

Profiles are frozen; ``connector()`` builds a new connector each time (a
connector belongs to one event loop and one session).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from resilient.errors import ConfigError

__all__ = ["PROFILES", "Profile", "profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    """A connection-pool profile (see the module docstring for each field).

    Args:
        name: how ``session(profile=...)`` names it.
        limit: connections in all.
        limit_per_host: connections per host (0: no cap but ``limit``).
        keepalive_timeout: seconds an idle connection is kept.
        ttl_dns_cache: seconds a DNS answer is kept (``None``: forever).
        read_bufsize: the session's read buffer, bytes (``None``: aiohttp's 64 KiB).
    """

    name: str
    limit: int
    limit_per_host: int
    keepalive_timeout: float
    ttl_dns_cache: int | None
    read_bufsize: int | None = None

    def connector(self, **overrides: Any) -> aiohttp.TCPConnector:
        """A new ``TCPConnector`` with this profile (``overrides`` win)."""
        options: dict[str, Any] = {
            "limit": self.limit,
            "limit_per_host": self.limit_per_host,
            "keepalive_timeout": self.keepalive_timeout,
            "ttl_dns_cache": self.ttl_dns_cache,
            "use_dns_cache": True,
        }
        options.update(overrides)
        return aiohttp.TCPConnector(**options)

    def session_options(self) -> dict[str, Any]:
        """``ClientSession`` options this profile sets besides the connector."""
        return {} if self.read_bufsize is None else {"read_bufsize": self.read_bufsize}


PROFILES: Final[dict[str, Profile]] = {
    # Service-to-service calls of every kind. aiohttp's pool size, but one host
    # may hold only half of it; idle connections are dropped after 4 s, before
    # the 5 s of uvicorn and Node.js, so a reused connection is not one the
    # server is closing; DNS answers for 10 s (aiohttp's default), so a moved
    # service is followed quickly.
    "default": Profile(
        "default", limit=100, limit_per_host=50, keepalive_timeout=4.0, ttl_dns_cache=10
    ),
    # Latency-sensitive calls to servers that keep connections longer (nginx,
    # envoy and cloud load balancers: 60 s and up): a larger pool so no request
    # waits for a free connection, connections kept warm for 30 s so bursts
    # after a pause skip the TCP and TLS handshakes, DNS kept for 60 s so the
    # resolver stays off the request path.
    "low-latency": Profile(
        "low-latency", limit=200, limit_per_host=100, keepalive_timeout=30.0, ttl_dns_cache=60
    ),
    # Bulk traffic to a few big backends (storage, batch APIs): a large pool
    # that one host may fill, long keep-alive and DNS, and a 256 KiB read
    # buffer so large bodies take fewer reads.
    "high-throughput": Profile(
        "high-throughput",
        limit=400,
        limit_per_host=0,
        keepalive_timeout=30.0,
        ttl_dns_cache=300,
        read_bufsize=256 * 1024,
    ),
}


def profile(name: str | Profile) -> Profile:
    """The profile called ``name`` (a ``Profile`` is returned as it is).

    Raises:
        ConfigError: no profile has that name (the message lists them).
    """
    if isinstance(name, Profile):
        return name
    found = PROFILES.get(name) if isinstance(name, str) else None
    if found is None:
        known = ", ".join(repr(n) for n in PROFILES)
        raise ConfigError(
            f"profile must be one of {known}, got {name!r}", field="profile", value=name
        )
    return found
