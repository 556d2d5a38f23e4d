"""Test helpers for code that uses `resilient`: real servers on loopback.

``RedisServer`` and ``EtcdServer`` run the real binaries on free loopback
ports. Importing this package loads only the standard library; redis-py and
mirakuru are imported by the pieces that use them.
"""

from __future__ import annotations

from resilient.testing.servers import (
    EtcdServer,
    MissingBinaryError,
    RedisServer,
    ServerStartError,
)

__all__ = ["EtcdServer", "MissingBinaryError", "RedisServer", "ServerStartError"]
