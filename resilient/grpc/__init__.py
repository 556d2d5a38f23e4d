"""gRPC (grpc.aio) with the guarantees of ``resilient.http``: client and server interceptors.

Client side, ``client_interceptors(hub, target=...)`` (or ``channel(target)``,
an insecure channel with them installed): a breaker per target, the ambient
deadline as each call's gRPC deadline (never longer than the caller's own
timeout), the gray tag and trace context in the metadata, budgeted retries of
``UNAVAILABLE`` for methods marked idempotent, and a rejection that is both a
``CircuitOpenError`` and a ``grpc.aio.AioRpcError`` (``UNAVAILABLE``):
``GrpcCircuitOpenError``. Which statuses count against a target is
``FAILURE_CODES`` (the table is in ``resilient.grpc._status`` and
docs/guides/grpc.md).

Server side, ``server_interceptor()``: the inbound deadline becomes
``resilient.remaining()`` and the inbound tag ``resilient.gray.current()``,
both forwarded by the client interceptors and the HTTP layers.

Needs the ``grpc`` extra (grpcio); the gRPC layer shares the HTTP layer's
breaker defaults, retry and attempt-timeout rules, so ``aiohttp`` too.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from resilient.grpc._client import (
    DEFAULT_TIMEOUT,
    AttemptDeadlineError,
    client_interceptors,
    method_name,
)
from resilient.grpc._server import ResilientServerInterceptor, server_interceptor
from resilient.grpc._status import FAILURE_CODES, RETRY_CODES, GrpcCircuitOpenError, is_failure
from resilient.hub import Hub

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAILURE_CODES",
    "RETRY_CODES",
    "AttemptDeadlineError",
    "GrpcCircuitOpenError",
    "ResilientServerInterceptor",
    "channel",
    "client_interceptors",
    "is_failure",
    "method_name",
    "server_interceptor",
]


def channel(target: str, hub: Hub | None = None, **options: Any) -> grpc.aio.Channel:
    """``grpc.aio.insecure_channel(target)`` with ``client_interceptors`` installed.

    ``options`` go to ``client_interceptors`` (``idempotent=``, ``timeout=``, ...).
    """
    return grpc.aio.insecure_channel(
        target, interceptors=client_interceptors(hub, target=target, **options)
    )
