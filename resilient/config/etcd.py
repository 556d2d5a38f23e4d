"""EtcdSource: breaker config from an etcd key prefix, watched and pushed safely.

One idea: the hub's view of ``<prefix>/defaults`` and ``<prefix>/breakers/<name>``
stays equal to etcd's, revision by revision, whatever etcd does.

- ``start(hub)`` reads the prefix with one range read and applies it, then a
  background task watches the prefix from the revision after the one read.
  Each etcd response (a whole transaction) updates the view and the hub gets
  the whole view again (``hub.apply_config``); a deleted key drops out of the
  view, so its breaker falls back to the defaults.
- A value that is not a JSON object goes to ``hub.reject_config`` and the
  view keeps that key's previous value: the breaker keeps its config. Field
  values are the hub's to judge (it keeps the last good config per breaker).
- etcd away (at start or later): one clear log line per outage, the hub keeps
  what it has, and the task reconnects with jittered exponential backoff on a
  fresh channel, resuming the watch from the last revision seen, so no update
  is missed or applied twice. A compacted revision, or a store that went
  back in time (restored or replaced), forces a full reload.
- ``push(document)`` makes the prefix equal to a document in ONE transaction
  guarded by the read it diffed against: any key created, changed or
  deleted under the prefix in between fails the guard (``PushConflict``) and
  nothing is written. Concurrent pushes are refused, never merged.
- With several endpoints (a cluster), the watch moves to the next member
  when its member dies; a member that loses its leader keeps the watch open
  and resumes once a new leader is elected. A read or a push whose member is
  down or between leaders is sent again to the next member, for up to
  ``timeout`` seconds. A push's write keeps the guard of its first read, so
  a failover never lets it write over a change made since; a write whose
  answer was lost and that was applied shows as the prefix already equal to
  the document, and counts as done.

Runs in one event loop. Secrets (the password, auth tokens) never appear in
``repr()`` or in log lines.

Layout: ``EtcdSource`` is over 300 lines because loading, watching with its
reconnects and pushing share one revision and one connection; the wire is
apart (``_etcd_client.py``), as is the document (``document.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from resilient.config._etcd_client import (
    AetcdClient,
    CompactedError,
    Connection,
    Endpoint,
    EtcdClient,
    EtcdError,
    WatchBatch,
    parse_endpoints,
)
from resilient.config.file import ConfigTarget, ViewCache, apply_values, stop_task
from resilient.errors import ConfigError, ResilientError

if TYPE_CHECKING:
    from resilient.config.document import ConfigDocument, KeyChange
    from resilient.config.schema import Problem

__all__ = ["EtcdError", "EtcdSource", "PushConflict", "PushResult", "Snapshot"]

log = logging.getLogger("resilient.config")

ClientFactory = Callable[[Connection, Endpoint], EtcdClient]
_T = TypeVar("_T")
# What a member says when it is down or between leaders ("etcdserver: no leader",
# "leader changed", "request timed out" are all UNAVAILABLE); None: no gRPC status
# at all (the socket). Anything else (auth, a bad request) is the same on every member.
_FAILOVER = frozenset({None, "UNAVAILABLE", "DEADLINE_EXCEEDED"})
FAILOVER_PAUSE = 0.1  # seconds between rounds over the members, doubled up to 1 s


class PushConflict(ResilientError):
    """The prefix changed between the read a push diffed against and its write."""

    def __init__(self, prefix: str, revision: int) -> None:
        self.prefix = prefix
        self.revision = revision
        super().__init__(
            f"{prefix} changed after revision {revision} was read (a concurrent push or edit); "
            f"nothing was written. Check the new state and push again."
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The prefix as one range read saw it.

    Attributes:
        revision: the store revision of the read.
        document: every key that reads as a config object.
        raw: relative key to the raw value, every key under the prefix.
        problems: keys that are not part of ``document`` and why (path = ``(key,)``).
    """

    revision: int
    document: ConfigDocument
    raw: Mapping[str, bytes]
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push changed (or would change, for a dry run).

    ``read_revision`` is the revision diffed against; ``revision`` is the
    one the transaction wrote (``None`` for a dry run or when nothing changed).
    """

    changes: tuple[KeyChange, ...]
    read_revision: int
    revision: int | None


class EtcdSource:
    """Breaker config from an etcd prefix, hot-reloaded (a hub's ``config=``).

    Args:
        endpoints: ``"http://127.0.0.1:2379"``, a comma-separated list or a
            sequence; ``https://`` for TLS. ``user:password@`` in a URL is
            taken as the credentials (and never shown).
        prefix: keys live at ``<prefix>/defaults`` and ``<prefix>/breakers/<name>``.
        username, password: etcd user auth.
        ca_cert: PEM file of the CA for the server's certificate.
        cert_cert, cert_key: PEM files of a client certificate and key (mutual TLS).
        timeout: seconds for one request, and for the first load at ``start()``.
        cache: a local file that keeps the last view applied; a start with etcd
            away begins on it (and reloads the whole prefix once etcd is back)
            instead of on bare defaults.
        backoff, backoff_max: reconnect delays, doubling from ``backoff`` up to
            ``backoff_max`` seconds, with jitter.
        client_factory: builds the etcd client for an endpoint (tests and other
            clients plug in here; default: aetcd).
        sleep, rng: what the reconnect loop waits with and draws jitter from.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "http://127.0.0.1:2379",
        prefix: str = "/resilient",
        *,
        username: str | None = None,
        password: str | None = None,
        ca_cert: str | None = None,
        cert_cert: str | None = None,
        cert_key: str | None = None,
        timeout: float = 5.0,
        cache: str | os.PathLike[str] | None = None,
        backoff: float = 0.1,
        backoff_max: float = 5.0,
        client_factory: ClientFactory | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        found, url_user, url_password = parse_endpoints(endpoints)
        if username is None and url_user is not None:
            username, password = url_user, url_password
        self._conn = Connection(
            found, username, password, ca_cert, cert_cert, cert_key, timeout=timeout
        )
        if not 0 < backoff <= backoff_max:
            raise ValueError(f"need 0 < backoff <= backoff_max, got {backoff!r}, {backoff_max!r}")
        self._prefix = prefix.rstrip("/")
        self._dir = self._prefix + "/"  # the watched range: never matches "<prefix>2/..."
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._factory: ClientFactory = client_factory or _aetcd_client
        self._sleep = sleep
        self._rng = rng
        self._origin = f"etcd:{self._prefix}"
        self._cache = None if cache is None else ViewCache(cache, self._origin)
        self._cached_revision: int | None = None  # the cached view started on, if any
        # Mutable state, touched only from the event loop (the background task and start/close):
        self._hub: ConfigTarget | None = None
        self._client: EtcdClient | None = None
        self._values: dict[str, dict[str, Any]] = {}  # relative key -> last decodable value
        self._revision: int | None = None  # the last revision applied or known to be seen
        self._needs_load = True
        self._down = False
        self._attempts = 0  # failed attempts since the last success (drives the backoff)
        self._connects = 0  # every client built (drives endpoint rotation)
        self._task: asyncio.Task[None] | None = None

    # -- what a hub sees --------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self._prefix

    def describe(self) -> str:
        """Where this source's etcd is, for messages: endpoints and user, never the password."""
        return self._conn.describe()

    @property
    def revision(self) -> int | None:
        """The last etcd revision this source has caught up to (``None`` before a load)."""
        return self._revision

    @property
    def connected(self) -> bool:
        """True while the watch is established (or the last request succeeded)."""
        return self._revision is not None and not self._down

    async def start(self, hub: ConfigTarget) -> None:
        """Load the prefix into ``hub`` and start watching it; never raises if etcd is away."""
        self._hub = hub
        try:
            async with asyncio.timeout(self._conn.timeout):
                await self._load(self._ensure_client())
        except (EtcdError, TimeoutError) as exc:
            await self._drop_client()
            self._start_from_cache()
            self._report_down(exc)
        except Exception:  # a bug must not fail Hub.start(): log it, the task retries
            log.exception("resilient: etcd source %s failed to load; retrying", self._prefix)
            await self._drop_client()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"resilient-{self._origin}")

    async def close(self) -> None:
        """Stop watching; the hub keeps the config it has."""
        task, self._task = self._task, None
        await stop_task(task)
        await self._drop_client()

    # -- the watch loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                client = self._ensure_client()
                if self._needs_load:
                    await self._load(client)
                await self._follow(client)
            except CompactedError as exc:
                log.warning("resilient: etcd %s: %s; reloading the whole prefix", self._prefix, exc)
                self._needs_load = True
            except EtcdError as exc:
                await self._retry_later(exc)
            except Exception as exc:  # a bug must not end the watch: log it, retry
                log.exception("resilient: etcd source %s failed; retrying", self._prefix)
                await self._retry_later(exc)

    async def _retry_later(self, exc: Exception) -> None:
        self._report_down(exc)
        await self._drop_client()
        ceiling = min(self._backoff_max, self._backoff * 2.0**self._attempts)
        self._attempts += 1
        await self._sleep(ceiling * (0.5 + 0.5 * self._rng()))

    async def _load(self, client: EtcdClient) -> None:
        """One range read of the prefix replaces the whole view."""
        got = await client.get_prefix(self._dir)
        values: dict[str, dict[str, Any]] = {}
        for kv in got.kvs:
            rel = kv.key[len(self._dir) :]
            value = self._decode(kv.key, rel, kv.value, got.revision)
            if value is not None:
                values[rel] = value
            elif rel in self._values:
                values[rel] = self._values[rel]  # undecodable now: keep what it last gave
        self._values = values
        self._needs_load = False
        log.info(
            "resilient: etcd %s loaded at revision %d (%d keys)",
            self._prefix,
            got.revision,
            len(values),
        )
        self._apply(got.revision)
        self._revision = got.revision  # caught up once the hub has it (tests wait on this)
        self._report_up()

    async def _follow(self, client: EtcdClient) -> None:
        assert self._revision is not None
        start = self._revision + 1
        async with contextlib.aclosing(client.watch_prefix(self._dir, start_revision=start)) as it:
            async for batch in it:
                if batch.kind == "created":
                    # A member behind what we saw is one catching up (restarted), whose
                    # watch delivers our next revisions as it gets them, unless the
                    # store itself went back.
                    if batch.revision < self._revision and await self._restored(client):
                        log.warning(
                            "resilient: etcd %s is at revision %d, behind the %d seen "
                            "before (restored or replaced?); reloading the whole prefix",
                            self._prefix, batch.revision, self._revision,
                        )  # fmt: skip
                        self._needs_load = True
                        return
                    self._report_up()
                elif batch.kind == "progress":
                    # Not a revision to resume from: etcd (3.4, etcd-io/etcd#15220) can
                    # send one while the watch is still catching up, ahead of events it
                    # has not delivered yet; a watch resumed after it skipped them.
                    continue
                else:
                    self._on_events(batch)

    async def _restored(self, client: EtcdClient) -> bool:
        """A member answered from behind the revision seen: is the store itself behind?

        A follower catching up (or a member just restarted) is behind too, and
        a watch on it delivers the missed revisions once it has them; only if
        a linearizable read (the cluster's, through the leader) is behind as
        well was the store restored or replaced.
        """
        assert self._revision is not None
        return (await client.get_prefix(self._dir)).revision < self._revision

    def _on_events(self, batch: WatchBatch) -> None:
        """Apply a batch one revision at a time, in order (a watch catching up after
        a failover sends several revisions in one batch: each is applied, once)."""
        changed = False
        for i, change in enumerate(batch.changes):
            rel = change.key[len(self._dir) :]
            if change.value is None:
                changed |= self._values.pop(rel, None) is not None
            else:
                value = self._decode(change.key, rel, change.value, change.revision)
                if value is not None:
                    self._values[rel] = value
                    changed = True
            last = i + 1 == len(batch.changes) or batch.changes[i + 1].revision != change.revision
            if last:  # this revision's changes are all in (one transaction: several keys)
                if changed:
                    self._apply(change.revision)
                    changed = False
                self._revision = change.revision
        self._revision = batch.revision

    def _decode(self, key: str, rel: str, raw: bytes, revision: int) -> dict[str, Any] | None:
        """The value as a config object, or None after telling the hub why not."""
        from resilient.config.document import decode_value, name_of

        try:
            name_of(rel)
            return decode_value(raw)
        except ConfigError as exc:
            self._reject(key, str(exc), revision)
            return None

    def _apply(self, revision: int) -> None:
        if self._hub is None:
            return
        try:
            apply_values(self._hub, self._values, revision=revision, origin=self._origin)
        except Exception:
            log.exception("resilient: the hub failed to apply etcd %s", self._prefix)
        if self._cache is not None:
            self._cache.write(revision, self._values)

    def _start_from_cache(self) -> None:
        """etcd is away at start: begin on the cached view, if there is one."""
        cached = self._cache.read() if self._cache is not None else None
        if cached is None or self._hub is None:
            return
        revision, values = cached
        self._values = values
        self._cached_revision = revision
        try:
            apply_values(self._hub, values, revision=revision, origin=f"{self._origin} (cache)")
        except Exception:
            log.exception("resilient: the hub failed to apply the cached etcd %s", self._prefix)
        self._needs_load = True  # the cluster may have moved on, or been replaced

    def _reject(self, key: str, reason: str, revision: int) -> None:
        if self._hub is None:
            return
        try:
            self._hub.reject_config(key, reason, revision=revision)
        except Exception:
            log.exception("resilient: the hub failed to record a rejected etcd key %s", key)

    # -- connection bookkeeping ---------------------------------------------------------------

    def _ensure_client(self) -> EtcdClient:
        if self._client is None:
            endpoints = self._conn.endpoints
            endpoint = endpoints[self._connects % len(endpoints)]
            self._connects += 1
            self._client = self._factory(self._conn, endpoint)
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _report_down(self, exc: BaseException) -> None:
        if self._down:
            log.debug("resilient: etcd %s still unreachable: %s", self._prefix, exc)
            return
        self._down = True
        if self._revision is not None:
            keeping = f"keeping the config of revision {self._revision}"
        elif self._cached_revision is not None and self._cache is not None:
            keeping = (
                f"starting on the cached config of revision {self._cached_revision} "
                f"({self._cache.path}; the whole prefix is reloaded once etcd is back)"
            )
        else:
            keeping = "starting on the hub's own defaults"
        log.warning(
            "resilient: etcd %s unreachable for %s (%s); %s and retrying in the background",
            self._conn.describe(), self._prefix, _reason(exc), keeping,
        )  # fmt: skip

    def _report_up(self) -> None:
        self._attempts = 0
        if self._down:
            self._down = False
            log.info(
                "resilient: etcd %s reachable again; %s followed from revision %s",
                self._conn.describe(), self._prefix, self._revision,
            )  # fmt: skip

    # -- what the CLI (and scripts) do --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session(self, endpoint: Endpoint | None = None) -> AsyncIterator[EtcdClient]:
        client = self._factory(self._conn, endpoint or self._conn.endpoints[0])
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _on_a_member(self, work: Callable[[EtcdClient], Awaitable[_T]]) -> _T:
        """``work`` on one member's client; again on the next while members fail over.

        One endpoint: one attempt. Several: member after member, each given
        a share of ``timeout`` (a member killed under an open channel can
        leave a request waiting rather than refused), rounds apart by a
        growing pause, until one answers or ``timeout`` has passed (then the
        last member's error is raised).
        """
        endpoints = self._conn.endpoints
        loop = asyncio.get_running_loop()
        until = loop.time() + self._conn.timeout
        share = self._conn.timeout / len(endpoints)
        pause = FAILOVER_PAUSE
        attempt = 0
        while True:
            endpoint = endpoints[attempt % len(endpoints)]
            try:
                async with self._session(endpoint) as client:
                    if len(endpoints) == 1:
                        return await work(client)
                    try:
                        async with asyncio.timeout(share):
                            return await work(client)
                    except TimeoutError:
                        raise EtcdError(
                            f"no answer within {share:.1f} s", code="DEADLINE_EXCEEDED"
                        ) from None
            except EtcdError as exc:
                if len(endpoints) == 1 or exc.code not in _FAILOVER or loop.time() >= until:
                    raise
                log.info("resilient: etcd %s failed (%s); trying the next member", endpoint, exc)
            attempt += 1
            if attempt % len(endpoints) == 0:
                await self._sleep(min(pause, max(0.0, until - loop.time())))
                pause = min(pause * 2, 1.0)

    async def snapshot(self) -> Snapshot:
        """Read the prefix once: the document it holds, and what does not fit it.

        Raises:
            EtcdError: etcd could not be reached or refused the read.
        """
        got = await self._on_a_member(lambda client: client.get_prefix(self._dir))
        return self._snapshot(got.revision, {kv.key[len(self._dir) :]: kv.value for kv in got.kvs})

    def _snapshot(self, revision: int, raw: dict[str, bytes]) -> Snapshot:
        from resilient.config.document import ConfigDocument, decode_value, name_of
        from resilient.config.schema import Problem

        values: dict[str, dict[str, Any]] = {}
        problems: list[Problem] = []
        for rel, value in raw.items():
            try:
                name_of(rel)
                values[rel] = decode_value(value)
            except ConfigError as exc:
                problems.append(Problem((rel,), str(exc)))
        return Snapshot(revision, ConfigDocument.from_values(values), raw, tuple(problems))

    async def push(self, document: ConfigDocument, *, dry_run: bool = False) -> PushResult:
        """Make the prefix hold exactly ``document``, in one guarded transaction.

        Keys not in the document (other breakers, stray keys) are deleted;
        values equal as JSON are left alone. With ``dry_run`` nothing is written.

        Raises:
            PushConflict: the prefix changed between the read and the write.
            EtcdError: etcd could not be reached or refused the transaction.
        """
        from resilient.config.document import diff

        desired = document.to_keys()
        current = await self._on_a_member(lambda client: client.get_prefix(self._dir))
        raw = {kv.key[len(self._dir) :]: kv.value for kv in current.kvs}
        changes = tuple(diff(raw, desired))
        if dry_run or not changes:
            return PushResult(changes, current.revision, None)
        puts = {self._dir + c.key: desired[c.key] for c in changes if c.new is not None}
        deletes = [self._dir + c.key for c in changes if c.new is None]
        tries = 0

        async def write(client: EtcdClient) -> int | None:
            nonlocal tries
            tries += 1
            return await client.commit(self._dir, puts, deletes, guard=current)

        # Again on the next member if this one fails, always with the guard of
        # the first read: a change made since by anyone is never written over.
        written = await self._on_a_member(write)
        if written is None and tries > 1:
            # An earlier try may have been applied with its answer lost: the
            # guard then fails on our own write. The prefix equal to the
            # document says so (or that someone pushed the same): done.
            after = await self._on_a_member(lambda client: client.get_prefix(self._dir))
            now = {kv.key[len(self._dir) :]: kv.value for kv in after.kvs}
            if not tuple(diff(now, desired)):
                mine = [kv.mod_revision for kv in after.kvs if kv.key in puts]
                return PushResult(changes, current.revision, max(mine, default=after.revision))
        if written is None:
            raise PushConflict(self._prefix, current.revision)
        return PushResult(changes, current.revision, written)

    async def watch(self, *, start_revision: int | None = None) -> AsyncGenerator[WatchBatch, None]:
        """Yield watch batches for the prefix, from ``start_revision`` (default: now).

        The first batch is ``created`` (its revision is where the watch
        starts from); keys in changes are relative to the prefix.

        Raises:
            EtcdError: etcd could not be reached, or the stream broke.
        """
        async with self._session() as client:
            if start_revision is None:
                start_revision = (await client.get_prefix(self._dir)).revision + 1
            stream = client.watch_prefix(self._dir, start_revision=start_revision)
            async with contextlib.aclosing(stream) as batches:
                async for batch in batches:
                    if batch.kind == "created":
                        yield WatchBatch("created", start_revision - 1)
                    elif batch.kind == "events":
                        yield _relative(batch, len(self._dir))

    def __repr__(self) -> str:
        return f"EtcdSource({self._conn.describe()!r}, prefix={self._prefix!r})"


def _relative(batch: WatchBatch, cut: int) -> WatchBatch:
    from dataclasses import replace

    changes = tuple(replace(c, key=c.key[cut:]) for c in batch.changes)
    return WatchBatch(batch.kind, batch.revision, changes)


def _aetcd_client(connection: Connection, endpoint: Endpoint) -> EtcdClient:
    return AetcdClient(connection, endpoint=endpoint)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__
