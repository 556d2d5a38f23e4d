"""The per-request gray context: one ``ContextVar`` for the request's task tree.

An inbound middleware recognises a request once and publishes what it found
as one immutable ``Inbound`` record: the gray tag (or ``None``) and the
inbound trace context, already validated, kept byte for byte for a
pass-through. Everything beneath reads it: ``current()`` in handlers, the
outbound client middleware and ``inject()`` when they forward the request.

Recognition is lazy: the middleware publishes a ``Pending`` (the headers it
found and the recogniser) and the first reader, ``current()`` or an outbound
layer through ``record()``, turns it into the ``Inbound`` once, for every
later reader. A handler that never asks (a leaf endpoint, a health check)
never pays for W3C parsing. (The middleware recognises at once when
something must happen at once: baggage, or a span to tag.)

Concurrency: a ContextVar is per task and copied into tasks the handler
starts, so the record follows the request's whole task tree and never leaks
into a concurrent request. The record is frozen; nobody mutates it. A
``Pending`` read from two threads at once may be recognised twice, to the
same result (recognition is a pure function of the headers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import NamedTuple, Protocol, TypeAlias

from resilient.gray._tag import GrayTag

__all__ = ["Inbound", "Pending", "current", "enter", "leave", "published", "record", "use"]

#: Header fields by lower-case name, each with every value received, in order.
Found: TypeAlias = Mapping[str, Sequence[str]]


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


class Inspector(Protocol):
    """What turns found headers into a record (``resilient.gray._rules.Recognizer``)."""

    def inspect(self, found: Found, /) -> Inbound | None: ...


class Pending(dict[str, list[str]]):
    """The headers a middleware found, published as they are: a record recognised on first read.

    The middleware fills it (header name -> every field) as it reads the
    request, and ``open_found`` names the ``inspector`` and publishes it; the
    found headers are the pending record, so a request whose record nobody
    reads costs no object more than the headers it carried.
    """

    __slots__ = ("_inbound", "inspector")

    #: recognises the headers (``inspect`` never raises); None once it has
    inspector: Inspector | None
    _inbound: Inbound | None

    def resolve(self) -> Inbound | None:
        """The record (``None``: neither a tag nor a valid trace context); recognised once."""
        inspector = self.inspector
        if inspector is not None:
            self._inbound = inspector.inspect(self)
            self.inspector = None
        return self._inbound

    def __repr__(self) -> str:
        if self.inspector is None:
            return f"<Pending recognised: {self._inbound!r}>"
        return f"<Pending {dict.__repr__(self)}>"


_record: ContextVar[Inbound | Pending | None] = ContextVar("resilient.gray", default=None)


def record() -> Inbound | None:
    """The whole inbound record of the request being handled, or ``None``."""
    found = _record.get()
    return found.resolve() if isinstance(found, Pending) else found


def current() -> GrayTag | None:
    """The gray tag of the request being handled, or ``None`` (stable traffic)."""
    found = record()
    return None if found is None else found.tag


#: Whether anything may have been published, recognised or not (the variable's
#: own ``get``: stable traffic's outbound path pays no Python call to learn
#: that there is nothing to forward).
published: Callable[[], Inbound | Pending | None] = _record.get

#: Publish an ``Inbound`` or a ``Pending`` for the current task tree; pass the
#: token to ``leave`` (the variable's own ``set``).
enter: Callable[[Inbound | Pending], Token[Inbound | Pending | None]] = _record.set

#: Undo ``enter``.
leave: Callable[[Token[Inbound | Pending | None]], None] = _record.reset


@contextmanager
def use(tag: GrayTag | None) -> Iterator[None]:
    """Treat the block as gray traffic (or, with ``None``, as stable traffic).

    ``with use(GrayTag("canary", "header")):`` ...

    For work that starts outside any request (a scheduled job, a queue
    consumer, a test). Inside a request it keeps the inbound trace context
    and replaces only the tag.
    """
    outer = record()
    if outer is None:
        token = _record.set(Inbound(tag))
    else:
        token = _record.set(Inbound(tag, outer.traceparent, outer.parent_id, outer.tracestate))
    try:
        yield
    finally:
        _record.reset(token)
