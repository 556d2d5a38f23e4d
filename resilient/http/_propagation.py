"""aiohttp client middlewares that forward the gray tag and the deadline on every request.

For ``aiohttp.ClientSession(middlewares=...)`` (aiohttp >= 3.12). A client
middleware runs for each request the session sends (and again for each
attempt when a retry middleware wraps it), just before it goes out, so the
values it writes are computed per attempt:

* ``gray_propagation()`` writes the current gray tag as a header and, where
  this process takes part in the trace, as the first tracestate member; with
  no local span it passes the inbound traceparent and tracestate through byte
  for byte; with no trace context it writes the header only. The rules are in
  ``resilient.gray._outbound``.
* ``deadline_propagation()`` writes ``x-request-timeout-ms``: the floor, in
  whole milliseconds, of the tightest bound on the attempt: ``remaining()``
  of the current deadline, a per-attempt ``bound`` given by the HTTP layer,
  and a value the caller set on the request itself. With no bound at all it
  writes nothing.
* ``propagation()`` does both in one middleware (one call less per request).

``Propagation`` is the same step for the HTTP pipeline, which hands it the
attempt's bound. Options are validated when a middleware is built
(``ValueError`` naming the option); the middlewares hold no state and are
safe to share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from multidict import CIMultiDict, istr

from resilient._deadline_header import DEFAULT_HEADER as DEFAULT_DEADLINE_HEADER
from resilient._deadline_header import check_name, format_ms, parse_ms
from resilient.deadline import remaining
from resilient.gray._context import published
from resilient.gray._otel import current_context
from resilient.gray._outbound import DEFAULT_HEADER, DEFAULT_KEY, apply
from resilient.gray._rules import check_key
from resilient.http._shared import Outgoing

__all__ = ["Bound", "Propagation", "deadline_propagation", "gray_propagation", "propagation"]

#: A per-attempt bound in seconds for a request (or ``None`` for no bound of its own).
Bound = Callable[[ClientRequest], "float | None"]


def _check_bound(bound: object) -> Bound | None:
    if bound is not None and not callable(bound):
        raise ValueError(f"bound must be a callable taking the request, got {bound!r}")
    return bound


def _write_deadline(req: ClientRequest, header: str, bound: Bound | None) -> None:
    left = remaining()
    if bound is not None:
        own = bound(req)
        if own is not None and (left is None or own < left):
            left = own
    if left is not None and not math.isinf(left):
        _put_deadline(req.headers, header, left, format_ms)


def _put_deadline(
    headers: MutableMapping[str, str], header: str, left: float, text: Callable[[float], str]
) -> None:
    """Write ``left`` seconds as ``header``, unless the caller already wrote a tighter one."""
    if header in headers:
        theirs = parse_ms(_fields(headers, header))
        if theirs is not None and theirs <= left:
            return
    headers[header] = text(left)


def _fields(headers: MutableMapping[str, str], header: str) -> list[str]:
    """Every field of ``header``: aiohttp's multidict and httpx's ``Headers`` both keep them."""
    if isinstance(headers, CIMultiDict):
        return headers.getall(header)
    get_list: Callable[[str], list[str]] | None = getattr(headers, "get_list", None)
    return [headers[header]] if get_list is None else get_list(header)


class Propagation:
    """What ``session(propagate=...)`` writes on every attempt: the gray tag and the deadline.

    ``Propagation(deadline_header="x-budget-ms")`` renames a header; the
    defaults are ``propagation()``'s. It is the propagation step of the HTTP
    pipeline, which hands it the attempt's bound.

    Raises:
        ValueError: (``ConfigError``) a header name or the key is not valid.
    """

    __slots__ = ("_deadline", "_gray", "_key")

    def __init__(
        self,
        *,
        gray_header: str = DEFAULT_HEADER,
        key: str = DEFAULT_KEY,
        deadline_header: str = DEFAULT_DEADLINE_HEADER,
    ) -> None:
        self._gray = check_name("gray_header", gray_header)
        self._key = check_key("key", key)
        # An istr is matched without being case-folded again on every lookup.
        self._deadline = istr(check_name("deadline_header", deadline_header))

    def write(self, req: Outgoing, bound: float | None, text: Callable[[float], str]) -> None:
        """Write the gray tag and the deadline header onto the attempt.

        Args:
            bound: seconds the attempt is bounded by, the tightest bound there
                is; None if the timeout layer bounds it not (then what is
                left of the current deadline, if any).
            text: formats the header value (``format_ms``, or a memo of it).
        """
        headers = req.headers
        if published() is not None or current_context():  # else nothing to forward (stable traffic)
            apply(headers, self._gray, self._key)
        if bound is None:
            bound = remaining()
            if bound is None or math.isinf(bound):
                return
        deadline = self._deadline
        if deadline in headers:  # the caller's own: kept if it is tighter
            _put_deadline(headers, deadline, bound, text)
        else:
            headers[deadline] = text(bound)


def gray_propagation(
    *, header: str = DEFAULT_HEADER, key: str = DEFAULT_KEY
) -> ClientMiddlewareType:
    """A client middleware that forwards the current gray tag and trace context.

    Args:
        header: the gray header (default ``x-gray``).
        key: the tracestate key of the gray member (default ``gray``).

    Raises:
        ValueError: (``ConfigError``) ``header`` or ``key`` is not valid.
    """
    name = check_name("header", header)
    member = check_key("key", key)

    async def gray(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        apply(req.headers, name, member)
        return await handler(req)

    return gray


def deadline_propagation(
    *, header: str = DEFAULT_DEADLINE_HEADER, bound: Bound | None = None
) -> ClientMiddlewareType:
    """A client middleware that writes the remaining budget as ``x-request-timeout-ms``.

    Args:
        header: the header name.
        bound: called with each request, returns a tighter per-attempt bound
            in seconds (or ``None``); the HTTP layer passes its attempt timeout.

    Raises:
        ValueError: an option is invalid; the message names it.
    """
    name = check_name("header", header)
    checked = _check_bound(bound)

    async def deadline(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        _write_deadline(req, name, checked)
        return await handler(req)

    return deadline


def propagation(
    *,
    gray_header: str = DEFAULT_HEADER,
    key: str = DEFAULT_KEY,
    deadline_header: str = DEFAULT_DEADLINE_HEADER,
    bound: Bound | None = None,
) -> ClientMiddlewareType:
    """``gray_propagation`` and ``deadline_propagation`` in one middleware.

    Args:
        gray_header: the gray header (default ``x-gray``).
        key: the tracestate key of the gray member (default ``gray``).
        deadline_header: the deadline header (default ``x-request-timeout-ms``).
        bound: a per-attempt bound, as for ``deadline_propagation``.

    Raises:
        ValueError: an option is invalid; the message names it.
    """
    name = check_name("gray_header", gray_header)
    member = check_key("key", key)
    budget_header = check_name("deadline_header", deadline_header)
    checked = _check_bound(bound)

    async def propagate(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        apply(req.headers, name, member)
        _write_deadline(req, budget_header, checked)
        return await handler(req)

    return propagate
