"""grpc.aio client interceptors: a breaker per target, the deadline, budgeted retries, gray.

One idea: a gRPC call gets what ``resilient.http.session`` gives an HTTP
request, from the same parts. Per target (one ``client_interceptors`` call,
one channel) there is one ``resilient.http._shared.Host``: the hub's breaker
named after the target with the HTTP layer's defaults (``HTTP_DEFAULTS``:
open when the last 20 calls all failed or were all slow), the target's
``RetryBudget`` and retry streak (``RetryLayer``), and its learned attempt
timeout (``TimeoutLayer`` and its ``Watchdog``). Each attempt:

1. is bounded by the tightest of: the call's own timeout (or, if it names
   none, the interceptors' ``timeout``; it bounds the whole call, retries
   included),
   the current ``resilient.deadline``, and, for idempotent methods, the
   learned attempt timeout. That bound is also the call's gRPC deadline, so
   the server sees it (``resilient.grpc.server_interceptor`` makes it
   ``remaining()`` there) and it is never longer than the caller's timeout;
2. carries the gray tag and the trace context in its metadata
   (``_metadata.with_gray``, the HTTP layer's outbound rules);
3. goes through the target's breaker, which counts it by its status
   (``_status``: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL ... are failures;
   CANCELLED, INVALID_ARGUMENT, NOT_FOUND ... never are); a rejection raises
   ``GrpcCircuitOpenError`` and sends nothing;
4. if it failed with UNAVAILABLE or its attempt timeout cut it, and the
   method is idempotent, is retried when ``RetryLayer.plan`` agrees (the
   attempts, the streak, the time left, the budget).

Unary-stream calls get the same admission, deadline and metadata; their
breaker verdict is the time to the first message (a healthy stream may be
long), and they are retried only before a message arrived.

Concurrency: one event loop per channel, as grpc.aio requires.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Collection
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, cast

import grpc
import grpc.aio

from resilient._deadline_header import check_name
from resilient.deadline import _current
from resilient.errors import CircuitOpenError, ConfigError, DeadlineExceeded
from resilient.gray._outbound import DEFAULT_HEADER, DEFAULT_KEY
from resilient.gray._rules import check_key
from resilient.grpc._metadata import with_gray
from resilient.grpc._status import RETRY_CODES, GrpcCircuitOpenError, is_failure
from resilient.http._breaker import HTTP_DEFAULTS, RECORDED, _safe, http_auto_slow
from resilient.http._retry import Retries, RetryLayer, retry_layer
from resilient.http._shared import Host, loop_clock
from resilient.http._timeouts import AttemptTimeoutError, TimeoutLayer, Timeouts, timeout_layer
from resilient.hub import Hub, default_hub
from resilient.retry import RetryState

if TYPE_CHECKING:
    from aiohttp import ClientRequest

    from resilient.breaker import CircuitBreaker

__all__ = ["AttemptDeadlineError", "client_interceptors", "method_name"]

_S = grpc.StatusCode
#: The call's timeout when it names none (seconds; as ``Timeouts.total``).
DEFAULT_TIMEOUT: Final = 10.0
_ATTEMPT, _DEADLINE = "attempt", "deadline"

Idempotent = Collection[str] | Callable[[str], bool]


class AttemptDeadlineError(grpc.aio.AioRpcError):  # type: ignore[misc]
    """An attempt ran out of its own bound (the learned attempt timeout or the call's timeout).

    A ``grpc.aio.AioRpcError`` with status ``DEADLINE_EXCEEDED``, as gRPC's
    own deadline would end the call.

    Attributes:
        seconds: the bound that ran out.
        bound: ``"attempt"`` or ``"total"`` (the call's timeout).
    """

    def __init__(self, target: str, seconds: float, bound: str) -> None:
        what = "attempt timeout" if bound == _ATTEMPT else "call timeout"
        super().__init__(
            _S.DEADLINE_EXCEEDED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=f"{what} of {seconds:.3f}s exceeded waiting for {target}",
        )
        self.seconds = seconds
        self.bound = bound


def method_name(method: object) -> str:
    """A call's method as text (``/package.Service/Method``); grpc.aio passes bytes."""
    return method.decode() if isinstance(method, bytes) else str(method)


def _idempotent_check(idempotent: object) -> Callable[[str], bool]:
    if callable(idempotent):
        return cast("Callable[[str], bool]", idempotent)
    if isinstance(idempotent, str) or not isinstance(idempotent, Collection):
        raise ConfigError(
            "idempotent must be a collection of method names (/pkg.Service/Method) or "
            f"service prefixes (/pkg.Service/), or a callable; got {idempotent!r}",
            field="idempotent",
            value=idempotent,
        )
    names = frozenset(idempotent)
    for name in names:
        if not isinstance(name, str) or not name.startswith("/"):
            raise ConfigError(
                f"idempotent names start with '/' (/pkg.Service/Method), got {name!r}",
                field="idempotent",
                value=name,
            )
    methods = frozenset(n for n in names if not n.endswith("/"))
    services = tuple(n for n in names if n.endswith("/"))
    return lambda method: method in methods or (bool(services) and method.startswith(services))


class _Key:
    """One call's key on the watchdog, shaped as the timeout layer reads a request."""

    __slots__ = ("loop", "url")

    def __init__(self, loop: asyncio.AbstractEventLoop, url: _Origin) -> None:
        self.loop = loop
        self.url = url


class _Origin:
    """The target, shaped as the timeout layer names a request's origin in its errors."""

    __slots__ = ("host",)

    def __init__(self, target: str) -> None:
        self.host = target

    def origin(self) -> str:
        return self.host

    def __str__(self) -> str:
        return self.host


class _Core:
    """What the interceptors of one target share: its ``Host`` and the layers."""

    def __init__(
        self,
        hub: Hub,
        target: str,
        idempotent: Callable[[str], bool],
        timeout: float,
        retries: Retries,
        attempt: float | Literal["auto"] | None,
        gray_header: str,
        key: str,
    ) -> None:
        self.name = _safe(target)
        self._origin = _Origin(target)
        self._idempotent = idempotent
        self.timeout = timeout
        self._retry: RetryLayer = retry_layer(retries, total=timeout)
        self._budget = retries.budget
        self._timeouts: TimeoutLayer = timeout_layer(Timeouts(total=timeout, attempt=attempt))
        self._gray_header = gray_header
        self._key = key
        self._host: Host | None = None
        self.breaker: CircuitBreaker = hub.breaker(
            self.name,
            defaults=HTTP_DEFAULTS,
            record_exceptions=RECORDED,
            auto_slow=http_auto_slow(timeout),
        )

    def host(self, loop: asyncio.AbstractEventLoop) -> Host:
        host = self._host
        if host is None:
            host = Host(loop_clock(loop))
            host.breaker = self.breaker
            host.budget = None if self._budget is None else self._budget()
            self._timeouts.adopt(host, self._origin)  # (it reads nothing of the request)
            self._host = host
        return host

    def _start(self, details: Any) -> tuple[Host, float, float, bool, asyncio.Task[Any]]:
        """A call begins: its host, now, its expiry, whether it is idempotent, its task."""
        loop = asyncio.get_running_loop()
        host = self.host(loop)
        now = host.clock()
        own = details.timeout  # the caller's own: it replaces the default, never stretched
        total = self.timeout if own is None else float(own)
        retry = self._retry
        if now >= host.deposit_at:  # the batch so far goes into the target's budget
            retry.deposit(host, now)
        host.pending += 1
        task = asyncio.current_task(loop)
        assert task is not None
        return host, now, now + total, self._idempotent(method_name(details.method)), task

    def _metadata(self, details: Any) -> Any:
        metadata = with_gray(details.metadata, self._gray_header, self._key)
        return details.metadata if metadata is None else metadata

    def _bound(
        self,
        key: _Key,
        idempotent: bool,
        host: Host,
        task: asyncio.Task[Any],
        now: float,
        expiry: float,
    ) -> tuple[float | None, float | None]:
        """The attempt's watched bound (or None) and its gRPC timeout (or None)."""
        try:
            bound = self._timeouts.arm(
                cast("ClientRequest", key), idempotent, host, task, now, expiry, self.breaker
            )
        except AttemptTimeoutError as exc:
            raise AttemptDeadlineError(self.name, 0.0, exc.bound) from None
        if bound is not None:
            return bound, bound
        scope = _current()  # an armed deadline is the tightest, or nothing bounds it
        return None, None if scope is None else scope.remaining()

    def _after(
        self,
        state: RetryState | None,
        error: BaseException,
        kind: str | None,
        idempotent: bool,
        expiry: float,
        host: Host,
    ) -> tuple[RetryState | None, float | None]:
        """After a failed attempt: the retry state and the wait before the next one (or None)."""
        if not _worth_retrying(error, kind):
            return state, None
        host.streak += 1  # (the streak counts every target's failure, retried or not)
        if not idempotent:
            return state, None
        now = host.clock()
        if state is None:
            state = RetryState(None, (), {}, now)
        state.record(now, None, error)
        return state, self._retry.plan(state, None, now, expiry, host)

    def _settle_error(
        self,
        br: CircuitBreaker,
        ticket: int,
        began: float,
        error: BaseException,
        kind: str | None,
        task: asyncio.Task[Any] | None,
    ) -> BaseException:
        """Tell the breaker how the attempt failed; what the caller should get."""
        if isinstance(error, grpc.aio.AioRpcError):
            code = error.code()
            if code is _S.DEADLINE_EXCEEDED and kind == _DEADLINE:
                # The caller's own deadline: the fair-budget rule decides.
                error = DeadlineExceeded(f"deadline exceeded waiting for {self.name}")
            else:
                br._end(ticket, began, br._clock(), is_failure(code), task)
                return cast("BaseException", error)
        rejection = br._end_error(ticket, began, error, task)
        if rejection is not None:
            return GrpcCircuitOpenError(rejection.name, rejection.retry_after, rejection.reason)
        return error

    def _release(
        self, key: _Key, task: asyncio.Task[Any], cancelling: int
    ) -> tuple[str, float, bool]:
        """End the attempt's watch: the bound in force (kind, seconds), and whether it cut it.

        gRPC's own deadline, set to the same bound, may end the call a hair
        before the watchdog would: the kind in force names that one too.
        """
        watchdog = self._timeouts.watchdog
        assert watchdog is not None
        entry = watchdog.entries[key]
        cut = watchdog.release(key)
        if cut is not None:
            return str(cut[2]), float(cut[3]), task.uncancel() <= cancelling
        return str(entry[2]), float(entry[3]), False

    def _expired(self, kind: str, seconds: float) -> BaseException:
        """The error an attempt its bound cut fails with."""
        if kind == _DEADLINE:
            return DeadlineExceeded(f"deadline exceeded waiting for {self.name}")
        return AttemptDeadlineError(self.name, seconds, kind)

    # ------------------------------------------------------------------ unary-unary

    async def unary(self, continuation: Any, details: Any, request: Any) -> Any:
        host, now, expiry, idempotent, task = self._start(details)
        loop = task.get_loop()
        key = _Key(loop, self._origin)
        metadata = self._metadata(details)
        br = self.breaker
        clock = host.clock
        state: RetryState | None = None
        while True:
            cancelling = task.cancelling()
            bound, timeout = self._bound(key, idempotent, host, task, now, expiry)
            try:
                began = now if br._clock is clock else br._clock()
                ticket = br._begin(began, task)
            except CircuitOpenError as exc:
                if bound is not None:
                    assert self._timeouts.watchdog is not None
                    self._timeouts.watchdog.withdraw(key)
                raise GrpcCircuitOpenError(exc.name, exc.retry_after, exc.reason) from None
            try:
                call = await continuation(
                    details._replace(timeout=timeout, metadata=metadata), request
                )
                response = await call
            except BaseException as raised:
                error: BaseException = raised
                kind = _DEADLINE  # no bound of ours: an armed deadline's timer serves
                if bound is not None:
                    kind, seconds, cut = self._release(key, task, cancelling)
                    if cut and isinstance(raised, asyncio.CancelledError):
                        error = self._expired(kind, seconds)
                error = self._settle_error(br, ticket, began, error, kind, task)
                state, wait = self._after(state, error, kind, idempotent, expiry, host)
                if wait is None:
                    _raise(error, raised)
                del raised, error
            else:
                if bound is not None:
                    watchdog = self._timeouts.watchdog
                    assert watchdog is not None
                    del watchdog.entries[key]
                    if watchdog.cut and key in watchdog.cut:
                        watchdog.cut.discard(key)
                        task.uncancel()  # it was cut, but the answer came first
                ended = clock()
                br._end(ticket, began, ended if br._clock is clock else br._clock(), False, task)
                learned = host.learned
                if idempotent and learned is not None and ended >= learned.next_at:
                    learned.observe(ended - now, ended)
                host.streak = 0
                return response
            now = await _wait(state, wait, host)

    # ------------------------------------------------------------------ unary-stream

    async def stream(self, continuation: Any, details: Any, request: Any) -> Any:
        host, now, expiry, idempotent, _ = self._start(details)
        metadata = self._metadata(details)
        br = self.breaker

        def timeout_at(now: float) -> tuple[float, str]:
            """The attempt's gRPC timeout and which bound it is."""
            left, kind = expiry - now, "total"
            scope = _current()
            if scope is not None and scope.remaining() <= left:
                left, kind = scope.remaining(), _DEADLINE
            if left <= 0.0:
                raise self._expired(kind, 0.0)
            return left, kind

        def admit(now: float) -> int:
            try:
                return br._begin(now, None)
            except CircuitOpenError as exc:
                raise GrpcCircuitOpenError(exc.name, exc.retry_after, exc.reason) from None

        timeout, kind = timeout_at(now)
        began = now
        ticket = admit(began)
        try:
            call = await continuation(details._replace(timeout=timeout, metadata=metadata), request)
        except BaseException as exc:
            _raise(self._settle_error(br, ticket, began, exc, kind, None), exc)
        return self._responses(
            call, continuation, details, request, metadata, host, expiry, idempotent,
            ticket, began, kind, timeout_at, admit,
        )  # fmt: skip

    async def _responses(
        self,
        call: Any,
        continuation: Any,
        details: Any,
        request: Any,
        metadata: Any,
        host: Host,
        expiry: float,
        idempotent: bool,
        ticket: int,
        began: float,
        kind: str,
        timeout_at: Callable[[float], tuple[float, str]],
        admit: Callable[[float], int],
    ) -> AsyncIterator[Any]:
        br = self.breaker
        state: RetryState | None = None
        while True:
            settled = False
            try:
                async for message in call:
                    if not settled:
                        settled = True
                        br._end(ticket, began, br._clock(), False, None)
                        host.streak = 0
                    yield message
                if not settled:
                    settled = True
                    br._end(ticket, began, br._clock(), False, None)
                    host.streak = 0
                return
            except BaseException as raised:
                if settled:
                    raise  # the verdict was the first message; later errors are the stream's
                error = self._settle_error(br, ticket, began, raised, kind, None)
                state, wait = self._after(state, error, kind, idempotent, expiry, host)
                if wait is None:
                    _raise(error, raised)
                del raised, error
            now = await _wait(state, wait, host)
            timeout, kind = timeout_at(now)
            began = now
            ticket = admit(began)
            try:
                call = await continuation(
                    details._replace(timeout=timeout, metadata=metadata), request
                )
            except BaseException as exc:
                _raise(self._settle_error(br, ticket, began, exc, kind, None), exc)


async def _wait(state: RetryState | None, wait: float, host: Host) -> float:
    """Wait before the next attempt; the time it starts."""
    if wait > 0.0:
        await asyncio.sleep(wait)
    assert state is not None  # a retry follows a recorded failure
    state.advance(wait)
    return host.clock()


def _worth_retrying(error: BaseException, kind: str | None) -> bool:
    """UNAVAILABLE, or an attempt its own learned bound cut; never a rejection or a deadline."""
    if isinstance(error, GrpcCircuitOpenError):
        return False
    if isinstance(error, AttemptDeadlineError):
        return error.bound == _ATTEMPT
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        return code in RETRY_CODES or (code is _S.DEADLINE_EXCEEDED and kind == _ATTEMPT)
    return False


def _raise(error: BaseException, raised: BaseException) -> NoReturn:
    if error is raised:
        raise raised
    raise error from raised


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._core.unary(continuation, details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, core: _Core) -> None:
        self._core = core

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._core.stream(continuation, details, request)


def client_interceptors(
    hub: Hub | None = None,
    *,
    target: str,
    idempotent: Idempotent = (),
    timeout: float = DEFAULT_TIMEOUT,
    retries: Retries | None = None,
    attempt: float | Literal["auto"] | None = "auto",
    gray_header: str = DEFAULT_HEADER,
    key: str = DEFAULT_KEY,
) -> list[grpc.aio.ClientInterceptor]:
    """The grpc.aio client interceptors for the channel to ``target``.

    ``grpc.aio.insecure_channel(target, interceptors=client_interceptors(target=target))``
    (or ``resilient.grpc.channel(target)``).

    Args:
        hub: where the target's breaker lives (default: the default hub);
            it is named after ``target`` (``host:port``), the key an operator
            writes in etcd.
        target: the channel's target, as given to the channel.
        idempotent: the methods that may be retried: full names
            (``/pkg.Service/Method``), service prefixes ending in ``/``
            (``/pkg.Service/``), or a callable taking the method name.
        timeout: a call's timeout when it names none (seconds; it bounds the
            call, retries included, as ``Timeouts.total``); a call's own
            ``timeout=`` replaces it.
        retries: attempts, waits and the budget (``resilient.http.Retries``;
            its ``statuses`` are HTTP's and unused here).
        attempt: one attempt's bound for idempotent methods: ``"auto"``
            (learned from the target's healthy latency), seconds, or None.
        gray_header: the metadata key carrying the gray tag (default ``x-gray``).
        key: the tracestate key of the gray member (default ``gray``).

    Returns:
        A unary-unary and a unary-stream interceptor sharing one target state.

    Raises:
        ConfigError: an option is invalid; the message names it.
    """
    if hub is None:
        hub = default_hub()
    elif not isinstance(hub, Hub):
        raise ConfigError(f"hub must be a Hub, got {hub!r}", field="hub", value=hub)
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"target must be the channel's target (host:port), got {target!r}",
            field="target",
            value=target,
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ConfigError(
            f"timeout must be a finite number > 0, got {timeout!r}", field="timeout", value=timeout
        )
    if retries is None:
        retries = Retries()
    header = check_name("gray_header", gray_header)  # lower-cased, as metadata keys are
    core = _Core(
        hub,
        target,
        _idempotent_check(idempotent),
        float(timeout),
        retries,
        attempt,
        header,
        check_key("key", key),
    )
    return [_UnaryUnary(core), _UnaryStream(core)]
