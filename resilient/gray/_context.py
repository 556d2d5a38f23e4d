"""The per-request gray context: one ``ContextVar`` for the request's task tree.

An inbound middleware recognises a request once and publishes what it found
as one immutable ``Inbound`` record: the gray tag (or ``None``) and the
inbound trace context, already validated, kept byte for byte for a
pass-through. Everything beneath reads it: ``current()`` in handlers, the
outbound client middleware and ``inject()`` when they forward the request.

Concurrency: a ContextVar is per task and copied into tasks the handler
starts, so the record follows the request's whole task tree and never leaks
into a concurrent request. The record is frozen; nobody mutates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import NamedTuple

from resilient.gray._tag import GrayTag

__all__ = ["Inbound", "current", "enter", "leave", "record", "use"]


class Inbound(NamedTuple):
    """What an inbound middleware learned about one request (immutable).

    A named tuple rather than a frozen dataclass: one is built per gray or
    traced request, and a tuple is built in a third of the time.

    Attributes:
        tag: the gray tag, or ``None`` for stable traffic.
        traceparent: the inbound traceparent as received, only if valid.
        parent_id: its parent-id (to tell whether a later hop changed it).
        tracestate: the inbound tracestate fields joined by ``,`` as
            received, only if the traceparent and the tracestate are valid
            and it has at least one member.
    """

    tag: GrayTag | None
    traceparent: str | None = None
    parent_id: str | None = None
    tracestate: str | None = None


_record: ContextVar[Inbound | None] = ContextVar("resilient.gray", default=None)


def current() -> GrayTag | None:
    """The gray tag of the request being handled, or ``None`` (stable traffic)."""
    found = _record.get()
    return None if found is None else found.tag


#: The whole inbound record, for the outbound layers (the variable's own
#: ``get``: stable traffic's outbound path pays no Python call for it).
record: Callable[[], Inbound | None] = _record.get


#: Publish an ``Inbound`` for the current task tree; pass the token to ``leave``
#: (the variable's own ``set``, as ``record`` is its ``get``).
enter: Callable[[Inbound], Token[Inbound | None]] = _record.set

#: Undo ``enter``.
leave: Callable[[Token[Inbound | None]], None] = _record.reset


@contextmanager
def use(tag: GrayTag | None) -> Iterator[None]:
    """Treat the block as gray traffic (or, with ``None``, as stable traffic).

    ``with use(GrayTag("canary", "header")):`` ...

    For work that starts outside any request (a scheduled job, a queue
    consumer, a test). Inside a request it keeps the inbound trace context
    and replaces only the tag.
    """
    outer = _record.get()
    if outer is None:
        token = _record.set(Inbound(tag))
    else:
        token = _record.set(Inbound(tag, outer.traceparent, outer.parent_id, outer.tracestate))
    try:
        yield
    finally:
        _record.reset(token)
