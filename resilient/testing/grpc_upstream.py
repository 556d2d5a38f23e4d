"""A real grpc.aio upstream whose latency and faults a test steers at run time.

One idea: ``resilient.testing.upstream``'s misbehaving dependency, spoken
over gRPC. ``GrpcUpstream`` *is* an ``Upstream`` (the same ``Behaviour``,
the same seeded draws, the same hit counts and the same HTTP control routes
for a process steered from outside) that also serves every gRPC method on
``127.0.0.1`` (an OS-chosen free port), with bytes in and bytes out
(``grpc.method_handlers_generic_handler``'s way, no generated code):

- unary-unary: the request comes back as the answer after the behaviour's
  latency; ``error`` aborts with the gRPC status of the behaviour's HTTP
  ``status`` (``STATUS_CODES``: 503 is ``UNAVAILABLE``); ``hang`` holds the
  call until a behaviour without hangs is installed, the client goes away
  or the server closes; ``slow_headers`` waits ``header_delay`` more;
  ``slow_body`` waits ``chunks * chunk_delay``; ``reset`` and
  ``close_mid_body`` abort with ``UNAVAILABLE`` (what a client sees of a
  reset stream);
- unary-stream: the same, each answer sent ``chunks`` times, the
  ``slow_body`` mode ``chunk_delay`` apart.

Hits are counted per service (``/pkg.Service/Method`` counts as
``/pkg.Service``), so contenders using their own service name are counted
apart, as the HTTP upstream counts paths. A server interceptor given to
``GrpcUpstream(interceptors=...)`` runs in front of every method.

``python -m resilient.testing.grpc_upstream --port 0`` serves it in a
process of its own and prints ``upstream listening on http://… grpc://…``
(the control URL and the gRPC target).

Concurrency: one event loop; counters are plain ints touched only by it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, Self

import grpc
import grpc.aio

from resilient.testing.servers import HOST
from resilient.testing.upstream import (
    Behaviour,
    Upstream,
    _serve_until_signalled,
    _Stopping,
)

__all__ = ["STATUS_CODES", "GrpcUpstream", "main"]

_S = grpc.StatusCode
#: The gRPC status an ``error`` answer with this HTTP status aborts with
#: (google.rpc.Code's HTTP mapping); any other status is ``UNKNOWN``.
STATUS_CODES: Final[Mapping[int, grpc.StatusCode]] = {
    400: _S.INVALID_ARGUMENT,
    401: _S.UNAUTHENTICATED,
    403: _S.PERMISSION_DENIED,
    404: _S.NOT_FOUND,
    409: _S.ABORTED,
    429: _S.RESOURCE_EXHAUSTED,
    499: _S.CANCELLED,
    500: _S.INTERNAL,
    501: _S.UNIMPLEMENTED,
    503: _S.UNAVAILABLE,
    504: _S.DEADLINE_EXCEEDED,
}


def _service(method: str) -> str:
    """``/pkg.Service/Method`` -> ``/pkg.Service`` (what hits are counted by)."""
    head, _, _ = method.rpartition("/")
    return head or method


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, upstream: GrpcUpstream) -> None:
        self._upstream = upstream

    def service(self, details: Any) -> Any:
        method = details.method
        if isinstance(method, bytes):
            method = method.decode()
        up = self._upstream

        async def unary(request: bytes, context: Any) -> bytes:
            return await up._unary(_service(method), request, context)

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            async for item in up._stream(_service(method), request, context):
                yield item

        if method.endswith("Stream"):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


class GrpcUpstream(Upstream):
    """The steerable upstream, over gRPC as well as HTTP (see the module docstring).

    Args:
        behaviour, host, rng: as for ``Upstream``.
        port: the HTTP control port (0: a free one).
        grpc_port: the gRPC port (0: a free one).
        interceptors: grpc.aio server interceptors in front of every method.

    Methods ending in ``Stream`` are unary-stream, all others unary-unary.
    """

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        host: str = HOST,
        port: int = 0,
        grpc_port: int = 0,
        rng: random.Random | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        super().__init__(behaviour, host=host, port=port, rng=rng)
        self._grpc_port = grpc_port
        self._interceptors = tuple(interceptors)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> Self:
        await super().start()
        server = grpc.aio.server(interceptors=self._interceptors)
        server.add_generic_rpc_handlers((_Handler(self),))
        try:
            self._grpc_port = server.add_insecure_port(f"{self.host}:{self._grpc_port}")
            await server.start()
        except BaseException:
            await super().close()
            raise
        self._server = server
        return self

    async def close(self) -> None:
        """Stop serving at once: calls in progress end (the clients see UNAVAILABLE)."""
        server, self._server = self._server, None
        self._stopped.set()
        self._released.set()
        if server is not None:
            await server.stop(0)
        await super().close()

    @property
    def listening(self) -> str:
        return f"{self.url} grpc://{self.target}"

    @property
    def target(self) -> str:
        """``HOST:PORT`` of the gRPC server, for ``grpc.aio.insecure_channel``."""
        return f"{self.host}:{self._grpc_port}"

    # -- serving -------------------------------------------------------------------

    def _draw(self, service: str) -> tuple[Behaviour, str]:
        behaviour = self._behaviour
        mode = behaviour.pick(self._rng.random())
        self._by_path[service] += 1
        self._by_mode[mode] += 1
        return behaviour, mode

    async def _fate(self, behaviour: Behaviour, mode: str, context: Any) -> None:
        """Play ``mode`` up to the answer (or abort the call)."""
        if mode == "hang":
            await self._released.wait()
            if self._stopped.is_set():
                await context.abort(_S.UNAVAILABLE, "upstream closing")
            return
        await self._sleep(behaviour.delay(self._rng), context)
        if mode == "error":
            code = STATUS_CODES.get(behaviour.status, _S.UNKNOWN)
            await context.abort(code, "upstream error")
        elif mode == "slow_headers":
            await self._sleep(behaviour.header_delay, context)
        elif mode in ("reset", "close_mid_body"):
            await context.abort(_S.UNAVAILABLE, f"upstream {mode}")

    async def _sleep(self, seconds: float, context: Any) -> None:
        """``Upstream._pause``: the call ends with UNAVAILABLE if the server closes meanwhile."""
        try:
            await self._pause(seconds)
        except _Stopping:
            await context.abort(_S.UNAVAILABLE, "upstream closing")

    async def _unary(self, service: str, request: bytes, context: Any) -> bytes:
        behaviour, mode = self._draw(service)
        self._active += 1
        try:
            await self._fate(behaviour, "ok" if mode == "slow_body" else mode, context)
            if mode == "slow_body":
                await self._sleep(behaviour.chunks * behaviour.chunk_delay, context)
            return request
        finally:
            self._active -= 1

    async def _stream(self, service: str, request: bytes, context: Any) -> AsyncIterator[bytes]:
        behaviour, mode = self._draw(service)
        self._active += 1
        try:
            await self._fate(behaviour, "ok" if mode == "slow_body" else mode, context)
            for i in range(behaviour.chunks):
                if i and mode == "slow_body":
                    await self._sleep(behaviour.chunk_delay, context)
                yield request
        finally:
            self._active -= 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resilient.testing.grpc_upstream``: serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m resilient.testing.grpc_upstream",
        description="A steerable gRPC upstream on loopback, steered over HTTP (POST /_control).",
    )
    parser.add_argument("--host", default=HOST, help="a loopback address (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="the HTTP control port; 0: free")
    parser.add_argument("--grpc-port", type=int, default=0, help="the gRPC port; 0: free")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible shares")
    args = parser.parse_args(argv)
    try:
        upstream = GrpcUpstream(
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            rng=random.Random(args.seed),
        )
        asyncio.run(_serve_until_signalled(upstream))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"upstream: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
