"""A real HTTP upstream whose latency and faults a test steers at run time.

One idea: a dependency that misbehaves on demand. ``Upstream`` is an aiohttp
server on ``127.0.0.1`` (an OS-chosen free port) that answers every path
except its two control routes according to one frozen ``Behaviour``: a
latency profile plus a share of each fault (an error status with an optional
``Retry-After``, a hang, a connection closed mid-body, slow headers, a slow
body, a TCP reset). Each request draws its fate from the injected ``rng``, so
a seeded run gives the same sequence of outcomes for the same requests.

The same server runs in its own process for benchmarks and the demo
(``python -m resilient.testing.upstream --port N``, or ``spawn_upstream()``),
steered over HTTP:

- ``POST /_control`` with a JSON object of ``Behaviour`` fields installs it
  (strictly validated: unknown fields, wrong types and out-of-range values get
  a 400 naming the field; nothing is evaluated); ``GET /_control`` reads it.
- ``GET /_stats`` returns the hit counts; ``DELETE /_stats`` zeroes them.

Invariants: a behaviour is replaced whole, never mutated; a request keeps the
behaviour it arrived under, except that a hang ends when a behaviour without
hangs is installed (the held requests then answer 200). Hung and sleeping
requests end when the client goes away (aiohttp's handler cancellation) or
the server closes, so closing never waits on them and leaks no task.

Concurrency: one event loop; counters are plain ints touched only by it.

Layout: over 500 lines because the behaviour, the server that plays it and
the process that hosts it are one fixture, read and changed together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import random
import re
import signal
import socket
import struct
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final, Self

from aiohttp import web

from resilient.testing.servers import HOST, START_TIMEOUT, _Server

if TYPE_CHECKING:
    from mirakuru import Executor

__all__ = [
    "FAULTS",
    "Behaviour",
    "Upstream",
    "UpstreamProcess",
    "UpstreamStats",
    "main",
    "spawn_upstream",
]

FAULTS: Final = ("error", "hang", "close_mid_body", "slow_headers", "slow_body", "reset")
"""Fault modes, in the order a request's draw walks their shares."""

CONTROL_PATH: Final = "/_control"
STATS_PATH: Final = "/_stats"
MAX_CONTROL_BODY: Final = 64 * 1024  # bytes; a behaviour is a few hundred
PARTIAL_BODY: Final = b"x" * 100  # what close_mid_body sends of its promised 1 KiB
PROMISED_LENGTH: Final = 1024
DROP_BACKSTOP: Final = 5.0  # seconds a dropped request waits for aiohttp to cancel it

_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,200}")
_DISTRIBUTIONS = ("uniform", "exponential")


def _number(name: str, value: object, low: float, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (low <= value <= high) or math.isnan(value):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the upstream answers: a latency profile plus a share of each fault.

    Attributes:
        latency: seconds every answer waits before it starts (all modes but hang).
        jitter: extra seconds drawn per request on top of ``latency``.
        distribution: how ``jitter`` is drawn: ``"uniform"`` in ``[0, jitter]``
            or ``"exponential"`` with mean ``jitter`` (a long tail).
        error: share of requests answered with ``status``.
        status: the error status (400-599).
        retry_after: ``Retry-After`` value sent with errors (seconds or text),
            or ``None`` for no header.
        hang: share of requests held until a behaviour without hangs is
            installed, the client goes away, or the server closes.
        close_mid_body: share that promise 1 KiB, send 100 bytes and close.
        slow_headers: share that wait ``header_delay`` more before answering.
        header_delay: seconds, for ``slow_headers``.
        slow_body: share that send headers at once, then ``chunks`` chunks
            ``chunk_delay`` seconds apart.
        chunks: chunk count, for ``slow_body``.
        chunk_delay: seconds between chunks, for ``slow_body``.
        reset: share whose connection is reset (RST) without an answer.
        capacity: requests per path answered at ``latency`` at once (0: no
            limit). Past it the latency grows with the load, as on a saturated
            server: a request arriving as the ``n``-th in flight on its path
            waits ``n / capacity`` times as long (so at most ``capacity /
            latency`` answers a second, however many are sent).

    Shares are in ``[0, 1]`` and sum to at most 1; the rest answer 200.

    Raises:
        ValueError: a field has the wrong type or range; the message names it.
    """

    latency: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    error: float = 0.0
    status: int = 503
    retry_after: str | None = None
    hang: float = 0.0
    close_mid_body: float = 0.0
    slow_headers: float = 0.0
    header_delay: float = 1.0
    slow_body: float = 0.0
    chunks: int = 4
    chunk_delay: float = 0.25
    reset: float = 0.0
    capacity: int = 0

    _shares: tuple[tuple[float, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "header_delay", "chunk_delay"):
            _number(name, getattr(self, name), 0.0, 3600.0)
        for name in FAULTS:
            _number(name, getattr(self, name), 0.0, 1.0)
        _integer("status", self.status, 400, 599)
        _integer("chunks", self.chunks, 1, 1000)
        _integer("capacity", self.capacity, 0, 1_000_000)
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {_DISTRIBUTIONS}, got {self.distribution!r}"
            )
        retry_after: object = self.retry_after
        if isinstance(retry_after, int) and not isinstance(retry_after, bool) and retry_after >= 0:
            object.__setattr__(self, "retry_after", str(retry_after))
        elif retry_after is not None and (
            not isinstance(retry_after, str) or not _HEADER_VALUE.fullmatch(retry_after)
        ):
            raise ValueError(
                "retry_after must be a non-negative integer or printable ASCII text "
                f"(at most 200 characters), got {retry_after!r}"
            )
        total = 0.0
        shares = []
        for name in FAULTS:
            share = float(getattr(self, name))
            if share > 0:
                total += share
                shares.append((total, name))
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault shares must sum to at most 1, got {total:.6g}")
        if shares and total > 1.0 - 1e-9:
            shares[-1] = (1.0, shares[-1][1])  # shares meant to cover every request do
        object.__setattr__(self, "_shares", tuple(shares))

    @classmethod
    def from_mapping(cls, data: object) -> Behaviour:
        """Build from decoded JSON, refusing anything but known fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"behaviour must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(unknown)}")
        return cls(**{str(key): value for key, value in data.items()})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["_shares"]
        return data

    @property
    def healthy(self) -> Behaviour:
        """This latency profile (capacity included) with every fault cleared."""
        return Behaviour(
            latency=self.latency,
            jitter=self.jitter,
            distribution=self.distribution,
            capacity=self.capacity,
        )

    def pick(self, u: float) -> str:
        """The mode for a request whose uniform draw is ``u`` in ``[0, 1)``."""
        for upper, name in self._shares:
            if u < upper:
                return name
        return "ok"

    def delay(self, rng: random.Random, in_flight: int = 1) -> float:
        """Seconds before a request starts answering, arriving as the ``in_flight``-th."""
        seconds = self.latency
        if self.jitter > 0:
            if self.distribution == "exponential":
                seconds += rng.expovariate(1.0 / self.jitter)
            else:
                seconds += rng.uniform(0.0, self.jitter)
        if self.capacity and in_flight > self.capacity:
            seconds *= in_flight / self.capacity
        return seconds


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """Hit counts: every request to a non-control path, counted on arrival.

    Attributes:
        total: requests received.
        by_path: requests per URL path (no query string).
        by_mode: requests per outcome drawn (``"ok"`` or a name in ``FAULTS``).
        active: requests being handled right now (hung ones included).
    """

    total: int
    by_path: Mapping[str, int]
    by_mode: Mapping[str, int]
    active: int

    @classmethod
    def from_mapping(cls, data: object) -> UpstreamStats:
        if not isinstance(data, Mapping):
            raise ValueError("stats must be a JSON object")
        try:
            return cls(
                total=int(data["total"]),
                by_path={str(k): int(v) for k, v in dict(data["by_path"]).items()},
                by_mode={str(k): int(v) for k, v in dict(data["by_mode"]).items()},
                active=int(data["active"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed stats: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "by_mode": dict(self.by_mode),
            "active": self.active,
        }


class _Stopping(Exception):
    """Raised inside a handler when the server closes under it."""


class Upstream:
    """The steerable HTTP upstream, in this process's event loop.

    Args:
        behaviour: the initial behaviour (default: healthy, no latency).
        host: a loopback address to bind.
        port: the port; 0 (default) lets the OS pick a free one.
        rng: the source of every draw (fault picks, jitter); seed it for
            reproducible shares.

    Use as ``async with Upstream() as up:``, or ``await start()`` and
    ``await close()``.
    """

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        host: str = HOST,
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        _require_loopback(host)
        self._behaviour = behaviour if behaviour is not None else Behaviour()
        self._host = host
        self._port = port
        self._rng = rng if rng is not None else random.Random()
        self._runner: web.AppRunner | None = None
        # Mutable state, touched only from the event loop:
        self._by_path: Counter[str] = Counter()
        self._by_mode: Counter[str] = Counter()
        self._active = 0
        self._serving: Counter[str] = Counter()  # requests in flight per path
        self._stopped = asyncio.Event()
        self._released = asyncio.Event()  # set: hung requests may answer
        if self._behaviour.hang == 0:
            self._released.set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application(client_max_size=MAX_CONTROL_BODY)
        app.router.add_post(CONTROL_PATH, self._post_control)
        app.router.add_get(CONTROL_PATH, self._get_control)
        app.router.add_get(STATS_PATH, self._get_stats)
        app.router.add_delete(STATS_PATH, self._delete_stats)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=DROP_BACKSTOP
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        """Stop serving; held and sleeping requests are dropped, not awaited."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopped.set()
        self._released.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def listening(self) -> str:
        """Where it serves, as the process prints it when it is ready."""
        return self.url

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    # -- steering ------------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    def apply(self, behaviour: Behaviour) -> Behaviour:
        """Install ``behaviour``; a behaviour without hangs releases held requests."""
        if behaviour.hang == 0:
            self._released.set()
        elif self._released.is_set():
            self._released = asyncio.Event()
        self._behaviour = behaviour
        return behaviour

    def set(self, **fields: Any) -> Behaviour:
        """Replace the behaviour with ``Behaviour(**fields)`` (unnamed fields default)."""
        return self.apply(Behaviour(**fields))

    def recover(self) -> Behaviour:
        """Clear every fault, keep the latency profile, release held requests."""
        return self.apply(self._behaviour.healthy)

    # -- counting ------------------------------------------------------------------

    @property
    def hits(self) -> int:
        """Requests received so far (control routes excluded)."""
        return self._by_path.total()

    def stats(self) -> UpstreamStats:
        return UpstreamStats(
            total=self._by_path.total(),
            by_path=dict(self._by_path),
            by_mode=dict(self._by_mode),
            active=self._active,
        )

    def reset_stats(self) -> None:
        self._by_path.clear()
        self._by_mode.clear()

    # -- serving -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        behaviour = self._behaviour
        mode = behaviour.pick(self._rng.random())
        path = request.path
        self._by_path[path] += 1
        self._by_mode[mode] += 1
        self._active += 1
        self._serving[path] += 1
        try:
            return await self._answer(request, behaviour, mode, self._serving[path])
        except _Stopping:
            return await self._drop(request, rst=False)
        finally:
            self._active -= 1
            self._serving[path] -= 1

    async def _answer(
        self, request: web.Request, behaviour: Behaviour, mode: str, in_flight: int
    ) -> web.StreamResponse:
        if mode == "hang":
            await self._released.wait()
            if self._stopped.is_set():
                raise _Stopping
            return web.Response(text="ok")
        await self._pause(behaviour.delay(self._rng, in_flight))
        if mode == "ok":
            return web.Response(text="ok")
        if mode == "error":
            headers = (
                {} if behaviour.retry_after is None else {"Retry-After": behaviour.retry_after}
            )
            return web.Response(status=behaviour.status, text="upstream error", headers=headers)
        if mode == "slow_headers":
            await self._pause(behaviour.header_delay)
            return web.Response(text="ok")
        if mode == "slow_body":
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(behaviour.chunks):
                await self._pause(behaviour.chunk_delay)
                await response.write(b"chunk %d\n" % i)
            await response.write_eof()
            return response
        if mode == "close_mid_body":
            response = web.StreamResponse()
            response.content_length = PROMISED_LENGTH
            await response.prepare(request)
            await response.write(PARTIAL_BODY)
            return await self._drop(request, rst=False)
        return await self._drop(request, rst=True)  # reset

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise ``_Stopping`` as soon as the server closes."""
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._stopped.wait()
        except TimeoutError:
            return
        raise _Stopping

    async def _drop(self, request: web.Request, *, rst: bool) -> web.StreamResponse:
        """Close the connection (with a RST if asked) and wait to be cancelled.

        Losing the connection makes aiohttp cancel this handler; the backstop
        only bounds the wait should that ever not happen.
        """
        transport = request.transport
        if transport is not None:
            if rst:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        await asyncio.sleep(DROP_BACKSTOP)
        return web.Response(status=499)

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            data = json.loads(await request.read())
            behaviour = Behaviour.from_mapping(data)
        except (ValueError, UnicodeDecodeError) as exc:
            # JSONDecodeError is a ValueError; no value is ever evaluated.
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.apply(behaviour).to_dict())

    async def _get_control(self, request: web.Request) -> web.Response:
        return web.json_response(self._behaviour.to_dict())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().to_dict())

    async def _delete_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats().to_dict())


def _require_loopback(host: str) -> None:
    """The control routes steer the server: never expose them beyond this host."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host must be a loopback address, got {host!r}")


class UpstreamProcess(_Server):
    """An ``Upstream`` in its own process, steered over its control routes.

    Args:
        seed: seeds the child's ``rng`` (``None``: unseeded).
        start_timeout: seconds to wait for ``/_stats`` to answer.

    Methods mirror ``Upstream`` (``set``, ``apply``, ``recover``, ``stats``,
    ``reset_stats``) but are blocking HTTP calls on loopback (about a
    millisecond); from async code, wrap them in ``asyncio.to_thread`` if that
    matters. ``kill()`` crashes the child; ``close()`` stops it.
    """

    _name: ClassVar[str] = "upstream"

    def __init__(self, *, seed: int | None = None, start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(start_timeout)
        self._seed = seed

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import HTTPExecutor

        command = [sys.executable, "-m", __name__, "--port", str(self.port)]
        if self._seed is not None:
            command += ["--seed", str(self._seed)]
        # The child must import this same package, installed or not.
        source = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        return HTTPExecutor(
            command,
            url=f"{self.url}{STATS_PATH}",
            method="GET",
            status=200,
            request_timeout=2.0,
            envvars={"PYTHONPATH": pythonpath},
            **self._executor_options(log),
        )

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            exc.close()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                detail = str(json.loads(detail)["error"])
            raise ValueError(f"upstream refused {method} {path}: {detail}") from None

    def apply(self, behaviour: Behaviour) -> Behaviour:
        return Behaviour.from_mapping(self._call("POST", CONTROL_PATH, behaviour.to_dict()))

    def set(self, **fields: Any) -> Behaviour:
        return self.apply(Behaviour(**fields))

    @property
    def behaviour(self) -> Behaviour:
        return Behaviour.from_mapping(self._call("GET", CONTROL_PATH))

    def recover(self) -> Behaviour:
        return self.apply(self.behaviour.healthy)

    def stats(self) -> UpstreamStats:
        return UpstreamStats.from_mapping(self._call("GET", STATS_PATH))

    @property
    def hits(self) -> int:
        return self.stats().total

    def reset_stats(self) -> None:
        self._call("DELETE", STATS_PATH)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port, counts zeroed."""
        self.stop()
        return self.start()

    def __repr__(self) -> str:
        return f"UpstreamProcess(url={self.url!r}, running={self.running})"


def spawn_upstream(
    *, seed: int | None = None, start_timeout: float = START_TIMEOUT
) -> UpstreamProcess:
    """Start an ``Upstream`` in a child process and return its handle (already running).

    Use as ``with spawn_upstream(seed=1) as up: up.set(hang=1.0)``.
    """
    handle = UpstreamProcess(seed=seed, start_timeout=start_timeout)
    try:
        return handle.start()
    except BaseException:
        handle.close()
        raise


async def _serve_until_signalled(upstream: Upstream) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with upstream:
        print(f"upstream listening on {upstream.listening}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resilient.testing.upstream``: serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m resilient.testing.upstream",
        description="A steerable HTTP upstream on loopback (POST /_control, GET /_stats).",
    )
    parser.add_argument("--host", default=HOST, help="a loopback address (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible shares")
    parser.add_argument(
        "--behaviour", default=None, help="initial behaviour as a JSON object of its fields"
    )
    args = parser.parse_args(argv)
    try:
        behaviour = None
        if args.behaviour is not None:
            behaviour = Behaviour.from_mapping(json.loads(args.behaviour))
        upstream = Upstream(behaviour, host=args.host, port=args.port, rng=random.Random(args.seed))
        asyncio.run(_serve_until_signalled(upstream))
    except (ValueError, OSError) as exc:
        print(f"upstream: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
