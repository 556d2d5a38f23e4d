"""The gRPC contenders of the chaos demo and benchmark: a bare channel, and one with resilient.

Both call the gRPC twin of the demo's upstream
(``resilient.testing.grpc_upstream``, started by ``run(..., grpc=True)``),
which hands each contender ``grpc://HOST:PORT/<name>``: the contender calls
the unary method ``/<name>/Get`` of that target (bytes in, bytes out; hits
are counted per service, so per contender). A call that answers is ``200``;
one that fails raises, and is recorded under its exception's name.

- ``grpc_baseline()``: ``grpc.aio.insecure_channel(target)``, each call
  with ``timeout=2``: what most code does today.
- ``grpc_contender()``: the same channel with ``resilient.grpc``'s client
  interceptors (a fresh in-memory hub, the method marked idempotent as an
  HTTP GET is), each call with ``timeout=2``; every other setting default.

grpcio is imported when a contender opens, so the demo runs without it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from resilient.demo._run import Contender, Fetch, StateSink

if TYPE_CHECKING:
    from resilient.hub import Hub

__all__ = ["grpc_baseline", "grpc_contender", "split"]

_REQUEST = b"x"


def split(url: str) -> tuple[str, str]:
    """``grpc://HOST:PORT/<name>`` -> (``HOST:PORT``, ``/<name>/Get``)."""
    if not url.startswith("grpc://"):
        raise ValueError(f"a gRPC contender needs a grpc:// URL (run(..., grpc=True)), got {url!r}")
    target, _, name = url[len("grpc://") :].partition("/")
    return target, f"/{name}/Get"


def _opener(
    make_channel: Callable[[str], Any], total: float
) -> Callable[[], contextlib.AbstractAsyncContextManager[Fetch]]:
    @contextlib.asynccontextmanager
    async def open_() -> AsyncIterator[Fetch]:
        channels: dict[str, Any] = {}  # made on first use: the target comes with the URL
        calls: dict[str, Any] = {}

        async def fetch(url: str) -> int:
            call = calls.get(url)
            if call is None:
                target, method = split(url)
                channel = channels.get(target)
                if channel is None:
                    channel = channels[target] = make_channel(target)
                call = calls[url] = channel.unary_unary(method)
            await call(_REQUEST, timeout=total)
            return 200

        try:
            yield fetch
        finally:
            for channel in channels.values():
                await channel.close()

    return open_


def _quiet() -> None:
    """Keep grpc core's INFO lines (a GOAWAY when the upstream stops) out of the demo's output.

    Read once, when grpc is first imported; a setting of the user's wins.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def grpc_baseline(total: float = 2.0) -> Contender:
    """A bare ``grpc.aio`` channel, each call with ``timeout=total``."""

    def make(target: str) -> Any:
        _quiet()
        import grpc.aio

        return grpc.aio.insecure_channel(target)

    opener = _opener(make, total)
    return Contender("grpc", lambda state: opener())


def grpc_contender(
    total: float = 2.0, *, hub: Hub | None = None, name: str = "resilient-grpc"
) -> Contender:
    """The channel with ``resilient.grpc.client_interceptors``, each call with ``timeout=total``.

    With ``hub=None`` a fresh in-memory hub per run, as ``contender()`` does.
    """

    @contextlib.asynccontextmanager
    async def open_(state: StateSink) -> AsyncIterator[Fetch]:
        _quiet()
        from resilient.events import StateChanged
        from resilient.grpc import channel
        from resilient.hub import Hub

        own = hub if hub is not None else Hub(namespace="demo")

        def listen(event: object) -> None:
            if isinstance(event, StateChanged):
                state(event.new.value)

        own.add_listener(listen)

        def make(target: str) -> Any:
            return channel(target, own, idempotent=lambda method: method.endswith("/Get"))

        async with _opener(make, total)() as fetch:
            yield fetch

    return Contender(name, open_)
