"""``HttpShadow``: mirror a sample of a ``resilient.http.session``'s requests to a candidate.

One idea: an aiohttp client middleware, outermost in the session (one mirror
per request, not per retry), that sends a sampled request's copy to the
candidate's base URL (same method, path, query, headers and body) on a
session of its own, and compares the two responses as ``{"status",
"headers", "body"}`` (``http_value``: the chosen headers only; a JSON body
as JSON). Everything else is ``Shadow``'s: the draw by trace id, the
candidate's own timeout, bulkhead and breaker, dropped-not-queued, records.

What changes for a sampled request: the primary's body is read before the
response is returned (``await resp.read()``), so the caller's own read
returns it at once; the time to the last byte is unchanged. Shadow only
requests whose bodies are small. Requests with a streamed body (which
cannot be sent twice) are never mirrored. By default only idempotent
requests (``GET``, ``HEAD``, ``OPTIONS``, ``PUT``, ``DELETE``, or one with an
idempotency key) are mirrored: the candidate usually shares nothing with the
primary's stores, but a second POST is the user's decision (``methods=``).

aiohttp itself sends an idempotent request again when its connection
breaks (a stale keep-alive), running the middlewares again: that attempt
takes over the first one's mirror (a context variable of the caller's
task), so a call is still mirrored once and the broken first attempt is
not compared.

Noise: a ``noise`` share of mirrored requests is also sent again to the
primary's own origin, on the shadow's session, to learn noisy paths.

The candidate's session is made on first use in the running loop; close it
with ``await shadow.aclose()`` (or ``async with HttpShadow(...)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, NamedTuple

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from yarl import URL

from resilient.breaker import CircuitBreaker
from resilient.bulkhead import Bulkhead
from resilient.config import BreakerConfig
from resilient.errors import ConfigError
from resilient.gray import inject
from resilient.http._shared import is_idempotent, replayable
from resilient.shadow._compare import Compare
from resilient.shadow._mirror import Mirror
from resilient.shadow._normalize import JSONValue, http_value
from resilient.shadow._shadow import Shadow, primary_async
from resilient.shadow._sinks import Sink

__all__ = ["HttpShadow"]

#: Response headers compared by default.
DEFAULT_HEADERS: Final = ("content-type",)
#: Request headers never copied to the mirror (the candidate's own, or hop-by-hop).
_NOT_COPIED: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)


class HttpShadow:
    """Mirror sampled requests of a session to ``url``; ``session(shadow=HttpShadow(...))``.

    Args:
        url: the candidate's origin (``http://127.0.0.1:8081``); a mirror
            goes there with the request's path and query.
        sample, sink, ignore, compare, noise, timeout, bulkhead, breaker: as
            ``Shadow`` (paths are into ``{"status", "headers", "body"}``,
            e.g. ``$.body.items[0].price``).
        operation: the records' operation (default ``http:<host:port of url>``).
        headers: the response headers compared (lower-case names).
        methods: the methods mirrored (default: idempotent requests only).
        session_options: more keyword arguments for the shadow's own
            ``aiohttp.ClientSession``.

    Raises:
        ConfigError: an option is invalid (named in the message).
    """

    def __init__(
        self,
        url: str,
        *,
        sample: float = 0.1,
        sink: Sink | None = None,
        ignore: Iterable[str] = (),
        compare: Compare | None = None,
        noise: float = 0.05,
        timeout: float = 1.0,
        bulkhead: int | Bulkhead = 16,
        breaker: bool | BreakerConfig | CircuitBreaker | None = True,
        operation: str | None = None,
        headers: Iterable[str] = DEFAULT_HEADERS,
        methods: Iterable[str] | None = None,
        **session_options: Any,
    ) -> None:
        base = URL(url) if isinstance(url, str) else None
        if base is None or base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"url must be an http(s) URL, got {url!r}", field="url", value=url)
        self.url = base
        self.headers = tuple(h.lower() for h in headers)
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        self._session_options = session_options
        self._session: aiohttp.ClientSession | None = None
        self.shadow = Shadow(
            operation or f"http:{base.host}:{base.explicit_port or base.port}",
            self._send_candidate,
            sample=sample,
            sink=sink,
            ignore=ignore,
            compare=compare,
            noise=noise,
            timeout=timeout,
            bulkhead=bulkhead,
            breaker=breaker,
            _secondary=self._send_again,
        )

    # ------------------------------------------------------------------ the middleware

    async def middleware(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """The aiohttp client middleware (``session()`` puts it first)."""
        shadow = self.shadow
        carried = _carried.get()
        if carried is not None:
            _carried.set(None)
            if carried.owner is self and carried.key == (req.method, req.url):
                # aiohttp sends the same request again: the first attempt's mirror, not a second
                return await primary_async(
                    carried.mirror, self._primary(req, handler), shadow._clock, self._keep,
                    started=carried.started,
                )  # fmt: skip
        if not shadow._threshold or not self._mirrored(req):
            return await handler(req)
        mirror = shadow._admit(handler, (req,), {}, True)
        if mirror is None:
            return await handler(req)
        started = shadow._clock()

        def again(exc: BaseException) -> bool:
            if not _resent(req, exc):
                return False
            _carried.set(_Carried(self, (req.method, req.url), mirror, started))
            return True

        return await primary_async(
            mirror, self._primary(req, handler), shadow._clock, self._keep,
            started=started, again=again,
        )  # fmt: skip

    def _mirrored(self, req: ClientRequest) -> bool:
        allowed = is_idempotent(req) if self.methods is None else req.method in self.methods
        return allowed and replayable(req) and _body_bytes(req) is not None

    async def _primary(self, req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        resp = await handler(req)
        await resp.read()  # sampled requests only: buffered, so both bodies can be compared
        return resp

    def _keep(self, resp: ClientResponse) -> JSONValue:
        return self._value(resp.status, resp.headers, resp._body)

    def _value(self, status: int, headers: Any, body: bytes | None) -> JSONValue:
        return http_value(status, headers, body or b"", self.headers)

    # ------------------------------------------------------------------ the mirror requests

    async def _send_candidate(self, req: ClientRequest) -> JSONValue:
        return await self._send(req, self.url.join(URL(req.url.raw_path_qs)))

    async def _send_again(self, req: ClientRequest, *_: object) -> JSONValue:
        return await self._send(req, req.url)

    async def _send(self, req: ClientRequest, url: URL) -> JSONValue:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(**self._session_options)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _NOT_COPIED}
        inject(headers)  # the gray tag and the trace context, as the session's own layer would
        async with self._session.request(
            req.method, url, headers=headers, data=_body_bytes(req) or None,  # no body: none sent
            allow_redirects=False,
        ) as resp:  # fmt: skip
            body = await resp.read()
            return self._value(resp.status, resp.headers, body)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the candidate's session (mirrors still running fail as errors)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpShadow:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aflush(self, within: float = 10.0) -> bool:
        """Wait until every mirror started has been recorded (``Shadow.aflush``)."""
        return await self.shadow.aflush(within)

    def __repr__(self) -> str:
        return f"<HttpShadow {str(self.url)!r} {self.shadow!r}>"


class _Carried(NamedTuple):
    """A mirror whose primary attempt aiohttp is about to send again."""

    owner: HttpShadow
    key: tuple[str, URL]
    mirror: Mirror
    started: float


#: Set by an attempt that aiohttp will resend, taken by the resent attempt (same task).
_carried: ContextVar[_Carried | None] = ContextVar("resilient.shadow.carried", default=None)

#: aiohttp resends these on a fresh connection when the first one fails ...
_RESENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: ... with one of these errors, but never with a connection error of these kinds.
_RESENT_ERRORS: Final = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)
_NOT_RESENT: Final = (
    aiohttp.ConnectionTimeoutError,
    aiohttp.ClientConnectorError,
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientConnectorSSLError,
)


def _resent(req: ClientRequest, exc: BaseException) -> bool:
    """Will aiohttp send ``req`` again after its first attempt failed with ``exc``?

    It does once, for an idempotent method, when a connection breaks
    (``ClientSession._request``, RFC 9112 section 9.3.1); a mirrored
    request's body is bytes, so it can always be sent again.
    """
    return (
        isinstance(exc, _RESENT_ERRORS)
        and not isinstance(exc, _NOT_RESENT)
        and req.method in _RESENT_METHODS
        and getattr(req.session, "_retry_connection", False) is True
    )


def _body_bytes(req: ClientRequest) -> bytes | None:
    """The request body as bytes, or None when it is streamed (not mirrored)."""
    body: object = req.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    value = getattr(body, "_value", None)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return None
