"""Our small interface over aetcd 1.0, so the etcd source and the CLI can swap clients.

One idea: the five things config needs from etcd, with revisions kept honest:

- ``get_prefix`` — one range read, with the store revision it was read at;
- ``watch_prefix`` — events from a start revision, a whole etcd response at a
  time (a transaction's keys arrive together), compaction and cancellation
  raised, progress notifications passed on;
- ``commit`` — puts and deletes in ONE transaction guarded by a range read:
  it fails if any key under the prefix was created, changed or deleted since;
- ``put`` / ``delete`` / ``compact`` — for tests, examples and benchmarks.

aetcd 1.0 opens plaintext channels only, and its watch hides response
headers and progress notifications; so the channel is built here (TLS, user
auth) and the watch and transaction go through aetcd's generated gRPC stubs.
Every backend failure surfaces as ``EtcdError`` (``CompactedError`` for a
compacted revision) with a message that is safe to log: no password, no token.

aetcd and grpc are imported when a client is first connected, never at
``import resilient``. One client serves one event loop.

Layout: over 500 lines so that the interface, its data and its one
implementation are in one file: swapping the client touches nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from resilient.errors import ResilientError

__all__ = [
    "AetcdClient",
    "Change",
    "CompactedError",
    "Connection",
    "Endpoint",
    "EtcdClient",
    "EtcdError",
    "KeyValue",
    "Range",
    "WatchBatch",
    "parse_endpoints",
    "prefix_range_end",
]

DEFAULT_PORT = 2379
# A fresh channel per reconnect is the source's job, and a fresh channel must mean a fresh
# connection: gRPC shares subchannels between channels of one target by default, so a
# new channel would inherit the old one's reconnect backoff (and fail fast with its last
# error); a local pool per channel avoids that. The rest keep one channel honest: notice
# a dead peer within ~15 s, retry a refused connect quickly (gRPC's default backs off to
# 120 s). etcd refuses pings more often than every 5 s.
_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


# -- errors -----------------------------------------------------------------------------------


class EtcdError(ResilientError):
    """etcd could not be reached, or refused a request.

    Attributes:
        code: the gRPC status name (``"UNAVAILABLE"``, ``"UNAUTHENTICATED"``,
            ``"INVALID_ARGUMENT"``, ...) when there is one.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


class CompactedError(EtcdError):
    """The revision asked for was compacted away: only a full reload can catch up."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            f"etcd compacted the history up to revision {compact_revision}", code="OUT_OF_RANGE"
        )


# -- where etcd is --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd member's client URL: ``http://host:port`` or ``https://host:port``."""

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False

    @property
    def target(self) -> str:
        """The gRPC target, ``host:port`` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.target}"


def parse_endpoints(
    spec: str | Sequence[str],
) -> tuple[tuple[Endpoint, ...], str | None, str | None]:
    """Parse ``"http://a:2379,https://b:2379"`` (or a list) into endpoints.

    A URL may carry ``user:password@``; they are returned apart (and never
    kept in the endpoint), so they can be used for auth and left out of
    every message.

    Returns:
        ``(endpoints, username, password)``.

    Raises:
        ValueError: an endpoint that is not ``[http[s]://]host[:port]``.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints: list[Endpoint] = []
    username = password = None
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            shown = url._replace(netloc=url.hostname or "").geturl()
            raise ValueError(f"etcd endpoint must be http(s)://host[:port], got {shown!r}")
        if url.path not in ("", "/") or url.query or url.fragment:
            raise ValueError(f"etcd endpoint takes no path, got {url.hostname}{url.path!r}")
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"etcd endpoint {url.hostname!r} has an invalid port") from None
        if url.username is not None:
            username, password = unquote(url.username), unquote(url.password or "")
        endpoints.append(Endpoint(url.hostname, port, url.scheme == "https"))
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    return tuple(endpoints), username, password


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach etcd; ``repr()`` never shows the password.

    Args:
        endpoints: members to try, in turn.
        username, password: etcd user auth (both or neither).
        ca_cert: PEM file of the CA that signed the server's certificate
            (``None`` with an ``https`` endpoint: the system's roots).
        cert_cert, cert_key: PEM files of a client certificate and its key.
        timeout: seconds for one request (not for a watch, which is long-lived).
    """

    endpoints: tuple[Endpoint, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    cert_cert: str | None = None
    cert_key: str | None = None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("no etcd endpoint given")
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd user auth needs both username and password")
        if (self.cert_cert is None) != (self.cert_key is None):
            raise ValueError("a client certificate needs both cert_cert and cert_key")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        tls = {e.tls for e in self.endpoints}
        if len(tls) > 1:
            raise ValueError("etcd endpoints must all be http:// or all be https://")
        if self.uses_certificates and tls == {False}:
            raise ValueError("TLS certificates were given for an http:// endpoint; use https://")

    @property
    def uses_certificates(self) -> bool:
        return self.ca_cert is not None or self.cert_cert is not None

    @property
    def tls(self) -> bool:
        return self.endpoints[0].tls

    def describe(self) -> str:
        """Where etcd is, for messages: endpoints and user, no secrets."""
        where = ",".join(str(e) for e in self.endpoints)
        return f"{where} (user {self.username})" if self.username else where


# -- what comes back -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key (text), its value and the revision that last modified it."""

    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Range:
    """The keys under a prefix as of store revision ``revision`` (one consistent read)."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """A put (``value`` is the new value) or delete (``value`` is None) at ``revision``."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One etcd watch response.

    ``kind`` is ``created`` (the watch is set up; ``revision`` is the store's
    current revision, events up to it may still follow), ``events`` (the
    ``changes``, a whole transaction at a time; ``revision`` is the last one)
    or ``progress`` (nothing changed under the prefix up to ``revision``).
    """

    kind: Literal["created", "events", "progress"]
    revision: int
    changes: tuple[Change, ...] = ()


class EtcdClient(Protocol):
    """What config needs from etcd (``AetcdClient`` is the real one)."""

    async def get_prefix(self, prefix: str) -> Range: ...

    def watch_prefix(
        self, prefix: str, *, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]: ...

    async def commit(
        self,
        prefix: str,
        puts: Mapping[str, bytes],
        deletes: Iterable[str],
        *,
        guard: Range,
    ) -> int | None: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def delete(self, key: str) -> int: ...

    async def compact(self, revision: int) -> None: ...

    async def close(self) -> None: ...


# -- the aetcd client ---------------------------------------------------------------------------


def _grpc() -> Any:
    """The grpc module (installed with aetcd; it has no type stubs)."""
    import grpc

    return grpc


def _key(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff: to the end of the keyspace


class AetcdClient:
    """``EtcdClient`` over aetcd 1.0 and its gRPC stubs; connects on first use.

    Args:
        connection: where etcd is and how to authenticate.
        endpoint: which of ``connection.endpoints`` to use (default: the first).
    """

    def __init__(self, connection: Connection, *, endpoint: Endpoint | None = None) -> None:
        self._conn = connection
        self._endpoint = endpoint or connection.endpoints[0]
        self._client: Any = None

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    async def _connected(self) -> Any:
        if self._client is None:
            self._client = _build_client(self._conn, self._endpoint)
        with _translated():
            await self._client.connect()
        return self._client

    async def get_prefix(self, prefix: str) -> Range:
        client = await self._connected()
        with _translated():
            got = await client.get_prefix(_key(prefix))
        kvs = tuple(KeyValue(_text(kv.key), kv.value, kv.mod_revision) for kv in got)
        return Range(got.header.revision, kvs)

    async def watch_prefix(
        self, prefix: str, *, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """Yield watch responses for ``prefix`` from ``start_revision`` (inclusive).

        Raises:
            CompactedError: ``start_revision`` (or a later one) was compacted.
            EtcdError: the stream broke or etcd cancelled the watch.
        """
        from aetcd import rpc

        client = await self._connected()
        key = _key(prefix)
        create = rpc.WatchCreateRequest(
            key=key,
            range_end=prefix_range_end(key),
            start_revision=start_revision,
            progress_notify=True,
        )
        grpc = _grpc()
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        try:
            with _translated():
                await call.write(rpc.WatchRequest(create_request=create))
            while True:
                with _translated():
                    resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdError("etcd closed the watch stream", code="UNAVAILABLE")
                batch = _batch(resp, rpc.Event.DELETE)
                if batch is not None:
                    yield batch
        finally:
            call.cancel()

    async def commit(
        self,
        prefix: str,
        puts: Mapping[str, bytes],
        deletes: Iterable[str],
        *,
        guard: Range,
    ) -> int | None:
        """Apply puts and deletes in one transaction, only if ``prefix`` is as ``guard`` read it.

        The guard compares every key ``guard`` saw (same ``mod_revision``:
        not changed, not deleted) and the whole prefix range (every key's
        ``mod_revision`` <= ``guard.revision``: nothing created or changed).

        Returns:
            The revision the transaction wrote, or ``None`` if the guard failed
            (a concurrent writer got there first); nothing was written then.
        """
        from aetcd import rpc

        key = _key(prefix)
        compare = [
            rpc.Compare(
                key=key,
                range_end=prefix_range_end(key),
                target=rpc.Compare.MOD,
                result=rpc.Compare.LESS,
                mod_revision=guard.revision + 1,
            )
        ]
        compare += [
            rpc.Compare(
                key=_key(kv.key),
                target=rpc.Compare.MOD,
                result=rpc.Compare.EQUAL,
                mod_revision=kv.mod_revision,
            )
            for kv in guard.kvs
        ]
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=_key(k), value=v)) for k, v in puts.items()
        ]
        ops += [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_key(k))) for k in deletes
        ]
        client = await self._connected()
        with _translated():
            resp = await client.kvstub.Txn(
                rpc.TxnRequest(compare=compare, success=ops, failure=[]),
                timeout=self._conn.timeout,
                metadata=client.metadata,
            )
        return int(resp.header.revision) if resp.succeeded else None

    async def put(self, key: str, value: bytes) -> int:
        client = await self._connected()
        with _translated():
            done = await client.put(_key(key), value)
        return int(done.header.revision)

    async def delete(self, key: str) -> int:
        """Delete ``key``; returns the store revision after (unchanged if it did not exist)."""
        client = await self._connected()
        with _translated():  # the range [key, key + NUL) is exactly the key
            done = await client.delete_range(_key(key), _key(key) + b"\0")
        return int(done.header.revision)

    async def compact(self, revision: int) -> None:
        client = await self._connected()
        with _translated():
            await client.compact(revision, physical=True)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> AetcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AetcdClient({self._endpoint}, user={self._conn.username!r})"


def _batch(resp: Any, delete_type: int) -> WatchBatch | None:
    if resp.compact_revision:
        raise CompactedError(int(resp.compact_revision))
    if resp.canceled:
        reason = resp.cancel_reason or "no reason given"
        raise EtcdError(f"etcd cancelled the watch: {reason}", code="CANCELLED")
    if resp.created:
        return WatchBatch("created", int(resp.header.revision))
    if not resp.events:
        return WatchBatch("progress", int(resp.header.revision))
    changes = tuple(
        Change(
            _text(ev.kv.key),
            None if ev.type == delete_type else bytes(ev.kv.value),
            int(ev.kv.mod_revision),
        )
        for ev in resp.events
    )
    return WatchBatch("events", max(c.revision for c in changes), changes)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn whatever aetcd, grpc or the socket raised into an ``EtcdError``."""
    import aetcd

    grpc = _grpc()

    try:
        yield
    except EtcdError:
        raise
    except (aetcd.ClientError, grpc.RpcError, TimeoutError, OSError) as exc:
        raise _error(exc) from exc


def _error(exc: BaseException) -> EtcdError:
    grpc = _grpc()

    rpc_error = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    if isinstance(rpc_error, grpc.aio.AioRpcError):
        code = rpc_error.code().name
        return EtcdError(f"{code}: {rpc_error.details() or 'no details'}", code=code)
    if isinstance(exc, TimeoutError):
        return EtcdError("timed out", code="DEADLINE_EXCEEDED")
    return EtcdError(f"{type(exc).__name__}: {exc}")


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EtcdError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None


def _build_client(conn: Connection, endpoint: Endpoint) -> Any:
    """An aetcd.Client whose ``connect()`` also speaks TLS (aetcd 1.0 only has plaintext)."""
    import aetcd

    grpc = _grpc()
    from aetcd import rpc

    credentials = None
    if endpoint.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(conn.ca_cert, "CA certificate"),
            private_key=_read_pem(conn.cert_key, "client key"),
            certificate_chain=_read_pem(conn.cert_cert, "client certificate"),
        )

    class Client(aetcd.Client):  # type: ignore[misc]
        _is_connecting: bool

        async def connect(self) -> None:
            if self._connected.is_set():
                return
            if self._is_connecting:  # another task is connecting: wait for it
                await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
                return
            self._is_connecting = True
            try:
                options = list(_CHANNEL_OPTIONS)
                if credentials is None:
                    channel = rpc.insecure_channel(endpoint.target, options=options)
                else:
                    channel = rpc.secure_channel(endpoint.target, credentials, options=options)
                try:
                    if conn.username is not None:
                        request = rpc.AuthenticateRequest(
                            name=conn.username, password=conn.password
                        )
                        resp = await rpc.AuthStub(channel).Authenticate(
                            request, timeout=conn.timeout
                        )
                        self.metadata = (("token", resp.token),)
                except BaseException:
                    await channel.close()
                    raise
                self.channel = channel
                self.kvstub = rpc.KVStub(channel)
                self.clusterstub = rpc.ClusterStub(channel)
                self.leasestub = rpc.LeaseStub(channel)
                self.maintenancestub = rpc.MaintenanceStub(channel)
                self._connected.set()
            finally:
                self._is_connecting = False

    return Client(host=endpoint.host, port=endpoint.port, timeout=conn.timeout)
