"""Test helpers for code that uses `resilient`: real servers and a steerable upstream.

``RedisServer`` and ``EtcdServer`` run the real binaries on free loopback
ports (``RedisServer(tls=make_certificates(dir))`` speaks TLS only, with
certificates a strict verifier accepts); ``Upstream`` is an aiohttp server
whose latency and faults a test sets at run time (in-process, or in its own
process with ``spawn_upstream``). ``RedisCluster`` (3 masters, 3 replicas) and
``EtcdCluster`` (3 members) run clusters of them for failover tests.

Importing this package loads only the standard library; aiohttp, redis-py and
mirakuru are imported by the pieces that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.testing.certs import Certificates, make_certificates
from resilient.testing.clusters import EtcdCluster, RedisCluster
from resilient.testing.servers import (
    EtcdServer,
    MissingBinaryError,
    RedisServer,
    ServerStartError,
)

if TYPE_CHECKING:
    from resilient.testing.upstream import Upstream, UpstreamProcess, spawn_upstream

__all__ = [
    "Certificates",
    "EtcdCluster",
    "EtcdServer",
    "MissingBinaryError",
    "RedisCluster",
    "RedisServer",
    "ServerStartError",
    "Upstream",
    "UpstreamProcess",
    "make_certificates",
    "spawn_upstream",
]

_LAZY = frozenset({"Upstream", "UpstreamProcess", "spawn_upstream"})


def __getattr__(name: str) -> Any:
    # The upstream needs aiohttp; load it on first use only.
    if name in _LAZY:
        from resilient.testing import upstream

        return getattr(upstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
