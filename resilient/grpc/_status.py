"""What a gRPC status says about the server: a failure of the dependency, or an answer.

One idea: the breaker judges a target only on what the target did. A status
that says the server (or the way to it) is unwell counts against the target;
a status that says the *request* was wrong, or that the caller gave up, is
an answer like any other and never opens a breaker.

=====================  ========  =====================================================
status                 counted   why
=====================  ========  =====================================================
OK                     success   the server answered
CANCELLED              never     the caller (or its channel) gave up; not the server's fault
UNKNOWN                failure   an unhandled exception in the server
INVALID_ARGUMENT       never     the request was wrong; the server answered
DEADLINE_EXCEEDED      failure   too slow for the attempt's bound or the call's timeout;
                                 for the caller's ``resilient.deadline``, the fair-budget
                                 rule decides (counted only if the call started with at
                                 least ``slow_call_duration`` left)
NOT_FOUND              never     an answer about the request
ALREADY_EXISTS         never     an answer about the request
PERMISSION_DENIED      never     an answer about the caller
RESOURCE_EXHAUSTED     failure   the server is out of capacity (or rate limits: as HTTP 429)
FAILED_PRECONDITION    never     an answer about the system's state, not its health
ABORTED                never     a concurrency conflict the caller resolves
OUT_OF_RANGE           never     an answer about the request
UNIMPLEMENTED          never     a wrong method or version: no breaker can help
INTERNAL               failure   the server broke an invariant
UNAVAILABLE            failure   the server is down or unreachable; retried (idempotent
                                 methods, within the budget)
DATA_LOSS              failure   unrecoverable data loss on the server
UNAUTHENTICATED        never     an answer about the caller's credentials
=====================  ========  =====================================================

What is retried is narrower than what counts: ``UNAVAILABLE`` (gRPC's own
"safe to retry" status) and an attempt cut by its learned attempt timeout,
and only for methods marked idempotent (``client_interceptors(idempotent=...)``).
A rejection (``GrpcCircuitOpenError``), the caller's deadline and cancellation
are never retried.
"""

from __future__ import annotations

from typing import Final

import grpc
import grpc.aio

from resilient.errors import CircuitOpenError

__all__ = ["FAILURE_CODES", "RETRY_CODES", "GrpcCircuitOpenError", "is_failure"]

_S = grpc.StatusCode

#: The statuses that count against the target (see the module docstring's table).
FAILURE_CODES: Final = frozenset(
    {
        _S.UNKNOWN,
        _S.DEADLINE_EXCEEDED,
        _S.RESOURCE_EXHAUSTED,
        _S.INTERNAL,
        _S.UNAVAILABLE,
        _S.DATA_LOSS,
    }
)
#: The statuses retried for idempotent methods.
RETRY_CODES: Final = frozenset({_S.UNAVAILABLE})


def is_failure(code: grpc.StatusCode) -> bool:
    """Whether a call that ended with ``code`` counts as a failure of its target."""
    return code in FAILURE_CODES


class GrpcCircuitOpenError(CircuitOpenError, grpc.aio.AioRpcError):  # type: ignore[misc]
    """A target's breaker refused the call; nothing was sent.

    Both a ``CircuitOpenError`` and a ``grpc.aio.AioRpcError`` with status
    ``UNAVAILABLE``, so code written for gRPC (``except grpc.aio.AioRpcError``,
    ``err.code()``) handles it as it handles an unreachable server.

    Attributes:
        name: the breaker's name (the target).
        retry_after: seconds until a probe may be admitted.
    """

    def __init__(self, name: str, retry_after: float, reason: str = "open") -> None:
        # Not CircuitOpenError.__init__: through the MRO its super() call would
        # reach AioRpcError's with the wrong arguments.
        grpc.aio.AioRpcError.__init__(
            self, _S.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=None
        )
        self.args = (name, retry_after, reason)
        self.name = name
        self.retry_after = retry_after
        self.reason = reason

    def details(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"GrpcCircuitOpenError({self.name!r}, {self.retry_after!r}, {self.reason!r})"
