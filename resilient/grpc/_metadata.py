"""The gray tag and the trace context in gRPC metadata, both ways.

gRPC metadata keys are lower-case ASCII, so the HTTP rules apply unchanged:
outbound, ``with_gray`` runs ``resilient.gray``'s one outbound function
(``_outbound.apply``: the gray header whenever there is a tag, the tracestate
member only where this process takes part in the trace, a pass-through
otherwise) on the few keys it reads and writes, and puts them back into the
call's metadata; inbound, ``found`` collects the keys the recognizer reads,
in the shape the server middlewares hand it. Binary (``-bin``) values are
never read: a tag is text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import grpc.aio

from resilient.gray._context import record
from resilient.gray._otel import current_context
from resilient.gray._outbound import apply

__all__ = ["found", "with_gray"]

_TRACE_KEYS = ("traceparent", "tracestate")


def with_gray(metadata: object, header: str, key: str) -> grpc.aio.Metadata | None:
    """The call's metadata with the current gray tag and trace context written in.

    Returns ``None`` when there is nothing to forward (stable traffic, no
    trace context): the call's metadata is then used as it is.
    """
    if record() is None and not current_context():
        return None
    names = (*_TRACE_KEYS, header)
    pairs = list(_pairs(metadata))
    headers: dict[str, str] = {}
    for name, value in pairs:
        if name in names and isinstance(value, str) and name not in headers:
            headers[name] = value
    apply(headers, header, key)
    kept = [(name, value) for name, value in pairs if name not in headers]
    return grpc.aio.Metadata(*kept, *headers.items())


def _pairs(metadata: object) -> Iterable[tuple[str, str | bytes]]:
    if metadata is None:
        return ()
    if isinstance(metadata, grpc.aio.Metadata):
        return cast("Iterable[tuple[str, str | bytes]]", metadata)
    return ((str(k).lower(), v) for k, v in metadata)  # type: ignore[attr-defined]


def found(metadata: object, names: frozenset[str]) -> dict[str, list[str]] | None:
    """The text values of the keys in ``names``, by key, or ``None`` if there are none."""
    out: dict[str, list[str]] | None = None
    for name, value in _pairs(metadata):
        if name in names and isinstance(value, str):
            if out is None:
                out = {}
            out.setdefault(name, []).append(value)
    return out
