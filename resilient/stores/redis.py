"""Breaker state shared by a fleet of processes through Redis.

One idea: the hot path never waits on Redis. Each breaker counts locally;
a background task flushes what changed at most once per ``sync_interval``
(and at once when a breaker asks, through ``link.wake()``: a fleet trip, a
half-open breaker wanting probe tokens), in one pipelined round trip with one
``EVALSHA`` per breaker that has something to send. The script
(``_lua.FLUSH``) decides every fleet transition atomically and answers with
the fleet's view, which the breaker applies (``sync_in``). Transitions are
also PUBLISHed; a listener applies them within milliseconds.

Operators' fleet-wide states (``resilient breaker force-open``, the
dashboard) come the same way, with a record the store holds and writes back
when Redis returns from an outage, so they survive a Redis restarted empty
(``_control.py``).

Concurrency: everything here runs on the event loop that ran ``start()``
(the hub's, or the hub's own thread under ``with Hub(...)``). ``attach`` and
``wake`` may be called from any thread: they touch only a dict, a set and
the loop's thread-safe callback queue. The breaker methods of the seam are
thread-safe and never block.

Faults: nothing raised by Redis or the network reaches a caller. A flush that
fails hands its outboxes back (``sync_failed``: the breakers run on local
state, marked degraded) and the store retries with a backoff capped at
``RETRY_MAX`` seconds, so it re-syncs within a second of Redis returning.
An outage is logged once when it starts and once when it ends. Redis
restarted empty is an outage followed by a fleet state rebuilt from what the
processes send; a script missing after a restart is loaded again.

Secrets: a URL's password is never logged nor shown in ``repr``.

Layout: over 500 lines, one class, on purpose. The connection, the flush
loop, the listener and the outage bookkeeping share one reconnect state and
one loop, and are read together; the fleet rules are apart (``_lua.py``), as
is the breaker's side of a sync (``fleet_sync.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resilient.sketch import LatencySketch
from resilient.stores import _control, _lua, _presence
from resilient.stores._redis_url import (
    CLUSTER_SCHEMES,
    async_client,
    is_cluster_url,
    parse_cluster_url,
    redact_cluster_url,
    subscribed_node,
    subscriber,
)

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from resilient.breaker import CircuitBreaker
    from resilient.fleet import FleetView, Outbox
    from resilient.hub import Hub

__all__ = ["RedisStore", "redact_url", "scrub", "url_secrets"]

log = logging.getLogger("resilient.redis")

RETRY_MAX: Final = 0.5  # seconds between attempts while Redis is unreachable
AUTH_RETRY: Final = 5.0  # ... when it refuses our credentials (it will not change its mind soon)
LISTEN_POLL: Final = 1.0  # seconds a listener waits for a message before looking at `closing`
SCAN_COUNT: Final = 1000
#: Durations bucketed per breaker per flush at most (a stride sample beyond, weighted).
LATENCY_SAMPLE: Final = 8192
STALE_HORIZON: Final = 10.0  # seconds: how much older (Redis clock) a late reply can be
PRESENCE_SOON: Final = 1.0  # seconds: a changed presence entry is written this soon at most
SCHEMES: Final = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)

Client = aioredis.Redis | RedisCluster
_Call = tuple[str, _lua.Keys, str, list[Any]]  # (breaker name, its keys, script sha, ARGV)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# OpenSSL's X509_V_ERR_CA_CERT_MISSING_KEY_USAGE: raised only under strict verification.
_CA_MISSING_KEY_USAGE: Final = 92
_KEY_USAGE_HINT: Final = (
    "; likely cause: the CA certificate has no key usage extension, which strict "
    "X.509 verification refuses (ssl.VERIFY_X509_STRICT, on by default since Python "
    "3.13): reissue the CA with keyUsage=critical,keyCertSign,cRLSign "
    "(see docs/operations/redis.md)"
)


class RedisStore:
    """Share breaker windows and states with every process using the same Redis.

    Args:
        url_or_client: ``redis://[user:password@]host:port/db``, ``rediss://``
            (TLS) or ``unix://``; ``redis+cluster://host:port,host:port``
            (``rediss+cluster://``) for a Redis Cluster; or a ``redis.asyncio.Redis`` /
            ``redis.asyncio.cluster.RedisCluster`` client (the caller keeps
            it: ``close()`` leaves it open; give it short timeouts and no
            retries, as the store does for the clients it makes).
        namespace: the key namespace; None takes the hub's.
        sync_interval: seconds between flushes of a breaker's counts.
        timeout: seconds a connect, a command or a flush may take before the
            store treats Redis as unreachable for now.
        client_options: more keyword arguments for ``redis.asyncio.Redis.from_url``
            (``ssl_ca_certs=...`` for ``rediss://``, ``username=``, ...).

    Raises:
        ValueError: a bad option, named (the URL is quoted without its password).
    """

    def __init__(
        self,
        url_or_client: str | Client,
        *,
        namespace: str | None = None,
        sync_interval: float = 0.1,
        timeout: float = 0.25,
        **client_options: Any,
    ) -> None:
        for what, value in (("sync_interval", sync_interval), ("timeout", timeout)):
            if not isinstance(value, int | float) or not (0 < value < math.inf):
                raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
        if namespace is not None:
            _lua.keys_for(namespace, "x")  # checks the namespace against the name rule
        self._secrets: tuple[str, ...] = ()
        if isinstance(url_or_client, str):
            self._where = redact_url(url_or_client)
            if urlsplit(url_or_client).scheme not in SCHEMES:
                raise ValueError(
                    "url must start with redis://, rediss://, unix://, redis+cluster:// or "
                    f"rediss+cluster://, got {self._where!r}"
                )
            if is_cluster_url(url_or_client):
                parse_cluster_url(url_or_client)  # a bad one is named now
            self._secrets = url_secrets(url_or_client, client_options)
            self._url: str | None = url_or_client
            self._client: Client | None = None
        elif isinstance(url_or_client, aioredis.Redis | RedisCluster):
            self._where = _describe(url_or_client)
            self._url = None
            self._client = url_or_client
        else:
            raise ValueError(
                "url_or_client must be a redis:// URL or a redis.asyncio client, "
                f"got {type(url_or_client).__name__}"
            )
        self._options = client_options
        self._namespace = namespace
        self.sync_interval = float(sync_interval)
        self.timeout = float(timeout)
        # Shared with other threads (attach, wake): a dict and a set, changed atomically.
        self._breakers: dict[str, CircuitBreaker] = {}
        self._keys: dict[str, _lua.Keys] = {}
        self._args: dict[str, _lua.FlushArgs] = {}  # per breaker: its FLUSH ARGV, config encoded
        self._refresh: set[str] = set()  # names to READ at the next flush
        self._holds: set[str] = set()  # names whose operator's record to read (HOLD)
        # Loop-side state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake = asyncio.Event()
        # Breakers that asked to be synced at once (a fleet transition to write, a
        # first read): a flush woken before the interval is up sends only theirs.
        self._asked: set[str] = set()
        self._asked_all = False  # someone asked for a whole flush soon
        self._views: dict[str, tuple[FleetView, float]] = {}  # last view and when (monotonic)
        # Operators' states seen: name -> (generation, record; None if set in code).
        self._manual: dict[str, tuple[int, _control.Manual | None]] = {}
        # Latency not yet sent, per breaker, and when each last sent (monotonic).
        self._latency: dict[str, LatencySketch] = {}
        self._latency_sent: dict[str, float] = {}
        self._ns = namespace or "default"
        self._connected = False
        self._down_since: float | None = None
        self._recoveries = 0  # outages ended: tells a late failure of the last one from a new one
        self._refused = False  # the outage is Redis refusing our credentials
        self._errors_logged: set[str] = set()
        # Presence (_presence.py): our entry, when last written (monotonic), what it said.
        self._process_id = _presence.process_id()
        self._presence_at = -math.inf
        self._presence_said: tuple[int, frozenset[str]] = (0, frozenset())
        # Our names record: the id Redis holds ('' none, or not known), when last sent.
        self._names_held = ""
        self._names_at = -math.inf
        self._degraded: set[str] = set()  # breakers deciding on local state (as sync_failed)
        self._last_outage: tuple[float, float] | None = None  # (seconds, ended at, monotonic)
        self._runner: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ the seam

    async def start(self, hub: Hub) -> None:
        """Connect, load every breaker state of the namespace, start syncing.

        Never raises for an unreachable Redis: it logs once and keeps trying
        in the background; breakers run on local state meanwhile.
        """
        if self._runner is not None:
            return
        self._ns = self._namespace or hub.namespace
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._closing = False
        if self._client is None:
            assert self._url is not None
            self._client = async_client(  # a RedisCluster for +cluster
                self._url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # a refused call is an outage, not a 3 s wait
                client_name="resilient",
                **self._options,
            )
        await self._connect()
        self._runner = asyncio.create_task(self._run(), name="resilient-redis-sync")

    def attach(self, breaker: CircuitBreaker) -> None:
        """Share ``breaker``: link it, give it the fleet's state if known, sync it soon."""
        name = breaker.name
        namespace = self._namespace or breaker.namespace or self._ns
        self._keys[name] = keys = _lua.keys_for(namespace, name)
        self._args[name] = _lua.FlushArgs(keys.channel)
        breaker.link_store(_Link(self, name))
        breaker.record_durations()  # for the fleet's latency percentiles
        self._breakers[name] = breaker
        known = self._views.get(name)
        if known is not None:
            breaker.sync_in(_aged(*known))
        self._refresh.add(name)
        self._request_flush(name)

    async def close(self) -> None:
        """Flush a last time, stop listening and close the connections the store made."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # ends with a final flush (bounded by the timeouts)
        await self._stop_listener()
        client = self._client
        if client is not None and self._connected:  # gone now, not silent for 6 s
            with contextlib.suppress(Exception):
                await client.hdel(_presence.presence_key(self._ns), self._process_id)
        if client is not None and self._url is not None:
            self._client = None
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisStore({self._where!r}, namespace={self._namespace!r}, "
            f"sync_interval={self.sync_interval}, breakers={len(self._breakers)})"
        )

    # ------------------------------------------------------------------ waking

    def _request_flush(self, name: str | None = None) -> None:
        """Thread-safe: have the loop flush soon (a no-op before ``start``).

        With ``name``, only that breaker's sync is due now (the others keep
        their interval); without, the whole flush.
        """
        loop = self._loop
        if loop is None or self._closing:
            return
        if name is None:
            self._asked_all = True
        else:
            self._asked.add(name)  # (set.add is atomic: callers may be on other threads)
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> bool:
        """Load the scripts and the namespace's states, and listen. False if unreachable."""
        client = self._client
        assert client is not None
        if self._down_since is not None and isinstance(client, aioredis.Redis):
            # Idle connections from before the outage are dead: drop them, not a call.
            await client.connection_pool.disconnect(inuse_connections=False)
        try:
            await self._load_scripts(client)
            await self._write_back(client)  # first: a Redis restarted empty gets them again
            views = await self._load_namespace(client)
        except Exception as exc:  # whatever it is, callers must not see it
            self._went_down(exc)
            return False
        now = time.monotonic()
        for name, view in views.items():
            self._apply(name, view, now)
        self._refresh.update(self._breakers)  # those with no state yet, and any missed
        self._presence_at = -math.inf  # say we are here (again) in the next flush
        self._names_held = ""  # and send our names record with it, if we have one
        self._connected = True
        self._start_listener()
        return True

    async def _load_scripts(self, client: Client) -> None:
        for source in (_lua.FLUSH, _lua.READ, _lua.LATENCY, _control.HOLD, _presence.WRITE):
            await client.script_load(source)

    async def _write_back(self, client: Client) -> None:
        """Write back the operators' states held here (``HOLD`` takes only those
        Redis has no newer decision for)."""
        calls = [
            (name, keys, _control.HOLD_SHA, ["", keys.channel, *record.args()])
            for name, (_, record) in list(self._manual.items())
            if record is not None
            for keys in [self._keys.get(name) or _lua.Keys(self._ns, name)]
        ]
        if calls:
            self._take(calls, await self._execute(client, calls), time.monotonic())

    async def _load_namespace(self, client: Client) -> dict[str, FleetView]:
        """Every breaker state of the namespace (SCAN, then one pipelined READ)."""
        names = []
        async for key in client.scan_iter(match=_lua.state_pattern(self._ns), count=SCAN_COUNT):
            name = _lua.name_from_key(self._ns, _text(key), "state")
            if name is not None:
                names.append(name)
        calls = [(name, _lua.Keys(self._ns, name), _lua.READ_SHA, [""]) for name in names]
        views = {}
        for name, reply in zip(names, await self._execute(client, calls), strict=True):
            view = None if isinstance(reply, Exception) else _lua.parse_reply(reply)
            if view is not None:
                views[name] = view
        return views

    # ------------------------------------------------------------------ flushing

    async def _run(self) -> None:
        """Flush every ``sync_interval``; when woken sooner, only the breakers that
        asked (so the others still send at most once an interval); back off while
        Redis is away."""
        backoff = self.sync_interval
        due = time.monotonic()  # the next whole flush
        while True:
            if self._connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - time.monotonic())):
                        await self._wake.wait()
            elif not self._closing:
                await asyncio.sleep(backoff)  # wakes wait too: no storm of connects
            self._wake.clear()
            closing = self._closing
            only: set[str] | None = None
            if closing or self._asked_all or time.monotonic() >= due or not self._connected:
                self._asked_all = False
                self._asked.clear()
            else:  # (each step one C call: other threads add names meanwhile)
                only = set(self._asked)
                self._asked.difference_update(only)
            try:
                if self._connected or await self._connect():
                    ok = await self._flush(only)
                else:
                    self._gather_latency()  # into sketches: bounded, as the durations are not
                    self._failed(self._collect())  # what could not be sent is kept, bounded
                    ok = False
            except Exception:  # a bug must not stop the syncing: say so once, go on
                if "bug" not in self._errors_logged:
                    self._errors_logged.add("bug")
                    log.exception("resilient: RedisStore sync failed unexpectedly")
                ok = False
            if ok:
                backoff = self.sync_interval
                self._came_back()
            else:
                backoff = AUTH_RETRY if self._refused else min(backoff * 2, RETRY_MAX)
            if only is None:  # an interval from the end of the whole flush, as always
                due = time.monotonic() + self.sync_interval
            if closing:
                return

    async def _flush(self, only: set[str] | None = None) -> bool:
        """One round trip: an EVALSHA per breaker with news, a READ per one to refresh.

        ``only``: the breakers that asked to be synced now (a woken flush);
        the rest, presence included, wait for the whole flush of their interval.
        """
        client = self._client
        assert client is not None
        self._gather_latency()
        boxes = self._collect(only)
        refresh = list(self._refresh)  # (one C call: register may run on another thread)
        reads = [n for n in refresh if n in self._breakers and (only is None or n in only)]
        self._refresh.difference_update(reads)
        sent = {box.name for _, box in boxes}
        reads = [n for n in reads if n not in sent]
        held = self._holds if only is None else self._holds & only
        holds = [n for n in list(held) if n not in sent]  # a FLUSH reply says anew
        self._holds.difference_update(held)
        syncing = {box.name for _, box in boxes} | set(reads) | set(holds)
        presence = self._presence_call(syncing) if only is None else []
        due = self._latency_due(sent)
        if not boxes and not reads and not holds and not presence and not due:
            return True
        calls: list[_Call] = []
        sending = self._latency_taken(due)
        for _, box in boxes:
            keys = self._keys[box.name]
            try:
                args = self._args[box.name](box, latency=sending.get(box.name))
            except ValueError as exc:  # a breaker bug: drop this outbox, say so once
                self._log_once("outbox", "resilient: outbox of %r not sent: %s", box.name, exc)
                continue
            calls.append((box.name, keys, _lua.FLUSH_SHA, args))
        calls.extend(  # the last flush: latency with nothing else to say, a call of its own
            (name, self._keys[name], _lua.LATENCY_SHA, ["", _lua.encode_latency(sending[name])])
            for name in sending.keys() - sent
        )
        calls.extend((name, self._keys[name], _lua.READ_SHA, [""]) for name in reads)
        for name in holds:
            keys = self._keys.get(name) or _lua.Keys(self._ns, name)
            calls.append((name, keys, _control.HOLD_SHA, ["", keys.channel]))
        calls.extend(presence)
        try:
            replies = await self._execute(client, calls)
        except Exception as exc:  # whatever it is, callers must not see it
            self._failed(boxes)
            self._unsent(sending)
            self._refresh.update(reads)
            self._holds.update(holds)
            self._went_down(exc)
            return False
        answered = self._take(calls, replies, time.monotonic())
        self._failed([(b, box) for b, box in boxes if box.name not in answered])
        self._unsent({n: c for n, c in sending.items() if n not in answered})
        return True

    def _presence_call(self, syncing: set[str]) -> list[_Call]:
        """Our presence entry, when due: every ``EVERY`` seconds, at once after a
        (re)connect, within ``PRESENCE_SOON`` when what it says changed.

        ``syncing``: the breakers this flush syncs. In the first flush after an
        outage every breaker is still degraded and their replies are about to
        end it: that entry leaves them out (a refused one is listed again
        within ``PRESENCE_SOON``).
        """
        now = time.monotonic()
        every = max(_presence.EVERY, self.sync_interval)
        degraded = self._degraded - syncing if self._down_since is not None else self._degraded
        said = (len(self._breakers), frozenset(degraded))
        since = now - self._presence_at
        if since < every and (said == self._presence_said or since < PRESENCE_SOON):
            return []
        if self._down_since is not None:  # the first flush after an outage: it ends now
            outage: tuple[float, float] | None = (now - self._down_since, 0.0)
        elif self._last_outage is not None:
            outage = (self._last_outage[0], now - self._last_outage[1])
        else:
            outage = None
        names = list(self._breakers)
        names_id, record = _presence.names_record(names)
        if names_id == self._names_held:
            record = ""  # Redis has it
        elif names_id and self._names_held and now - self._names_at < _presence.RECORD_EVERY:
            names_id, record = self._names_held, ""  # the last one, a while longer
        entry = _presence.body(
            every=every, names=names, degraded=said[1], outage=outage,
            version=_presence.VERSION, names_id=names_id,
        )  # fmt: skip
        self._presence_at, self._presence_said = now, said
        if record:
            self._names_at = now
        args = [
            _presence.presence_key(self._ns),
            _presence.expiry_key(self._ns),
            _presence.names_key(self._ns),
            self._process_id,
            entry,
            f"{_presence.GONE_AFTER * every:.3f}",
            names_id,
            record,
        ]
        return [("(presence)", _lua.Keys(self._ns, "processes"), _presence.WRITE_SHA, args)]

    def _presence_written(self, args: list[Any], reply: object) -> None:
        """What Redis holds of our names after a ``WRITE``: the record it has, or none
        (-1: the entry named one Redis lost; write again, with the record, next flush)."""
        if reply == -1:
            self._names_held, self._presence_at = "", -math.inf
        else:
            self._names_held = args[6]

    def _gather_latency(self) -> None:
        """Bucket the durations the breakers kept since the last flush (off their path).

        Also while Redis is away, so that what waits is a sketch of bounded
        size, not a list growing with every call. On the last flush a second
        take gets what threads appended after the first one swapped the list.
        """
        for name, breaker in list(self._breakers.items()):
            durations = breaker.take_durations()
            if self._closing:
                durations += breaker.take_durations()
            if durations:
                sketch = self._latency.get(name)
                if sketch is None:
                    sketch = self._latency[name] = LatencySketch()
                sketch.add_many(durations, limit=LATENCY_SAMPLE)

    def _latency_due(self, boxed: set[str]) -> set[str]:
        """The breakers whose latency goes now: at most once a ``LATENCY_WIDTH``, with the
        FLUSH of a breaker in ``boxed`` (so a breaker's command count is its flushes';
        the latency of one gone quiet waits for its next call). The last flush: all."""
        if self._closing:
            return {name for name, sketch in self._latency.items() if sketch.count}
        now = time.monotonic()
        sent = self._latency_sent
        return {
            name
            for name in boxed
            if (sketch := self._latency.get(name)) is not None
            and sketch.count
            and now - sent.get(name, -math.inf) >= _lua.LATENCY_WIDTH
        }

    def _latency_taken(self, names: set[str]) -> dict[str, dict[int, int]]:
        """The latency counts of ``names``, taken out to be sent."""
        now = time.monotonic()
        taken = {}
        for name in names:
            taken[name] = self._latency.pop(name).counts
            self._latency_sent[name] = now
        return taken

    def _unsent(self, counts: dict[str, dict[int, int]]) -> None:
        """Counts a flush did not deliver: kept for the next one."""
        for name, buckets in counts.items():
            sketch = self._latency.get(name)
            if sketch is None:
                sketch = self._latency[name] = LatencySketch()
            sketch.merge(buckets)
            self._latency_sent.pop(name, None)

    def _take(self, calls: list[_Call], replies: list[Any], now: float) -> set[str]:
        """Apply each reply's view (and record); the names answered."""
        answered = set()
        for (name, _, sha, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                self._log_once("reply", "resilient: Redis refused a sync of %r: %s", name, reply)
                continue
            if sha == _presence.WRITE_SHA:
                self._presence_written(args, reply)
            if sha in (_lua.LATENCY_SHA, _presence.WRITE_SHA):  # they answer only that they ran
                answered.add(name)
                continue
            try:
                part, record = _control.split_reply(reply)
                view = _lua.parse_reply(part)
            except ValueError as exc:
                self._log_once("reply", "resilient: bad fleet reply for %r: %s", name, exc)
                continue
            answered.add(name)
            if view is not None:
                self._apply(name, view, now, record)
        return answered

    def _collect(self, only: set[str] | None = None) -> list[tuple[CircuitBreaker, Outbox]]:
        """Every breaker's outbox, or those of ``only`` (a degraded breaker sends one
        even when quiet, to hear the fleet again)."""
        boxes = []
        if only is None:
            breakers = list(self._breakers.values())
        else:
            breakers = [b for n in only if (b := self._breakers.get(n)) is not None]
        for breaker in breakers:
            box = breaker.sync_out()
            if box is not None:
                boxes.append((breaker, box))
        return boxes

    def _failed(self, boxes: list[tuple[CircuitBreaker, Outbox]]) -> None:
        for breaker, box in boxes:
            breaker.sync_failed(box)
            self._degraded.add(breaker.name)

    async def _execute(self, client: Client, calls: list[_Call]) -> list[Any]:
        """Run the calls in one round trip; load the scripts and rerun any NOSCRIPT ones.

        Raises what made the whole round trip fail; one call's error is its reply.
        """
        replies = await self._pipeline(client, calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted (or flushed its scripts): a script never ran
            await self._load_scripts(client)
            again = await self._pipeline(client, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, client: Client, calls: list[_Call]) -> list[Any]:
        if isinstance(client, RedisCluster):
            replies = await _cluster_pipelines(client, calls)
            down = [r for r in replies if isinstance(r, _UNREACHABLE)]
            if down and len(down) == len(replies):
                raise down[0]  # no node answered: an outage, not a few refusals
            return replies
        pipe = client.pipeline(transaction=False)
        for _, keys, sha, args in calls:
            _evalsha(pipe, sha, keys, args)
        replies = await pipe.execute(raise_on_error=False)
        return replies

    def _apply(
        self, name: str, view: FleetView, at: float, record: object = _control.UNSAID
    ) -> None:
        """Give ``view`` to the breaker (and remember it for one made later), unless stale.

        ``record``: the operator's record the reply or message carried (None:
        none; ``UNSAID``: a reply that says nothing of records).

        A flush reply and a published transition travel on two connections,
        so they can arrive out of order: a view computed (by Redis's clock)
        before one already applied, with an older generation, is dropped. A
        Redis replaced by one whose clock is far behind is not "older".
        """
        known = self._views.get(name)
        if known is not None:
            old = known[0]
            if view.generation < old.generation and old.now - STALE_HORIZON < view.now <= old.now:
                return
        self._views[name] = (view, at)  # its tokens were this process's: _aged drops them
        self._hold(name, view, record)
        breaker = self._breakers.get(name)
        if breaker is not None:
            breaker.sync_in(view)
            self._degraded.discard(name)  # sync_in ends its degraded state

    def _hold(self, name: str, view: FleetView, record: object) -> None:
        """Keep the operator's record in force (or read it soon); forget it once moved on."""
        known = self._manual.get(name)
        if view.state not in _control.HELD:
            if known is not None and known[0] < view.generation:
                del self._manual[name]
        elif record is None or isinstance(record, _control.Manual):
            self._manual[name] = (view.generation, record)
        elif known is None or known[0] < view.generation:
            self._holds.add(name)  # a manual state we have no record of: whose is it?
            self._request_flush()

    # ------------------------------------------------------------------ listening

    def _start_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="resilient-redis-listen")

    async def _stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        """Apply published transitions until closed; resubscribe after a failure."""
        client = self._client
        assert client is not None
        pubsub: PubSub | None = None
        pattern = _lua.channel_pattern(self._ns)
        began = self._recoveries  # the recovery the subscription (or attempt) began after
        failed_on: str | None = None  # the cluster node the last subscription failed on
        try:
            while not self._closing:
                try:
                    if pubsub is None:
                        began = self._recoveries
                        pubsub = subscriber(client, avoid=failed_on)
                        await pubsub.psubscribe(pattern)
                        self._refresh.update(self._breakers)  # what we missed meanwhile
                        self._request_flush()
                    message = await pubsub.get_message(timeout=LISTEN_POLL)
                except Exception as exc:  # whatever it is, callers must not see it
                    failed_on = subscribed_node(pubsub)
                    await _close_pubsub(pubsub)
                    pubsub = None
                    if began != self._recoveries:
                        # Begun before the store came back: a leftover of that
                        # outage, noticed late, not a new one. Subscribe again.
                        continue
                    if failed_on is not None:
                        # One cluster node lost is no outage (the flush says when
                        # the cluster is away): listen on another node at once.
                        await asyncio.sleep(self.sync_interval)
                        continue
                    self._went_down(exc)
                    await asyncio.sleep(RETRY_MAX)
                    continue
                if message is not None:
                    self._apply_message(_text(message.get("channel", b"")), message.get("data"))
        finally:
            await _close_pubsub(pubsub)

    def _apply_message(self, channel: str, data: object) -> None:
        name = _lua.name_from_key(self._ns, channel, "events")
        if name is None or not isinstance(data, bytes | str):
            return
        view = _lua.parse_message(data)
        if view is None:
            self._log_once("message", "resilient: ignored a malformed message on %s", channel)
            return
        # A manual state published without a record was set in code (FLUSH): none to hold.
        held = view.state in _control.HELD
        record = _control.record_of_message(data) if held else _control.UNSAID
        self._apply(name, view, time.monotonic(), record)

    # ------------------------------------------------------------------ outages

    def _went_down(self, exc: BaseException) -> None:
        self._connected = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._refused = isinstance(exc, AuthenticationError)
            log.warning(
                "resilient: Redis at %s unreachable (%s: %s); breakers run on local state%s",
                self._where,
                type(exc).__name__,
                self._scrub(str(exc)),
                _tls_hint(exc),
            )

    def _came_back(self) -> None:
        if self._down_since is not None:
            self._recoveries += 1
            now = time.monotonic()
            self._last_outage = (now - self._down_since, now)
            log.warning(
                "resilient: Redis at %s reachable again after %.1f s",
                self._where,
                now - self._down_since,
            )
            self._down_since = None
            self._refused = False
            self._errors_logged.clear()

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._errors_logged:
            self._errors_logged.add(kind)
            log.warning(message, *(self._scrub(str(a)) for a in args))

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


class _Link:
    """What a breaker holds of its store: a thread-safe "sync me soon"."""

    __slots__ = ("_name", "_store")

    def __init__(self, store: RedisStore, name: str) -> None:
        self._store = store
        self._name = name

    def wake(self) -> None:
        self._store._request_flush(self._name)


async def _cluster_pipelines(client: RedisCluster, calls: list[_Call]) -> list[Any]:
    """The calls in one pipeline per master (by the client's slot map; the
    pipeline follows a redirection itself), the pipelines run at once.

    What separate calls would give, at a fraction of redis-py's cost per call:
    a node that is down or slow fails its own calls only (each reply is then
    its error), and the other nodes' calls are answered.
    """
    groups: dict[str, list[int]] = {}
    for i, (_, keys, sha, args) in enumerate(calls):
        key = args[0] if sha == _presence.WRITE_SHA else keys.state  # its keys lead ARGV
        try:
            node = client.get_node_from_key(key)
        except RedisError:  # no slot map yet, or a slot uncovered: the pipeline finds out
            node = None
        groups.setdefault(node.name if node is not None else "", []).append(i)

    async def run(indices: list[int]) -> list[Any]:
        pipe = client.pipeline()
        try:
            for i in indices:
                _, keys, sha, args = calls[i]
                _evalsha(pipe, sha, keys, args)
        except RedisClusterException:  # redis-py before 8.x blocks EVALSHA there: one by one
            return await asyncio.gather(
                *(_evalsha(client, calls[i][2], calls[i][1], calls[i][3]) for i in indices),
                return_exceptions=True,
            )
        try:
            answered: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # this node's calls fail, as each alone would
            return [exc] * len(indices)
        return answered

    replies: list[Any] = [None] * len(calls)
    done = await asyncio.gather(*(run(indices) for indices in groups.values()))
    for indices, answered in zip(groups.values(), done, strict=True):
        for i, reply in zip(indices, answered, strict=True):
            replies[i] = reply
    return replies


def _evalsha(target: Any, sha: str, keys: _lua.Keys, args: list[Any]) -> Any:
    """A script call on a client or pipeline; FLUSH also writes the latency hash."""
    if sha == _lua.FLUSH_SHA:
        return target.evalsha(sha, 3, keys.state, keys.window, keys.latency, *args)
    if sha == _lua.LATENCY_SHA:
        return target.evalsha(sha, 1, keys.latency, *args)
    if sha == _presence.WRITE_SHA:  # its three keys (the namespace's) lead ARGV
        return target.evalsha(sha, 3, *args)
    return target.evalsha(sha, 2, keys.state, keys.window, *args)


def _tls_hint(exc: BaseException) -> str:
    """What to add to an outage warning when TLS verification names a known cause.

    redis-py keeps the ``ssl`` error as the cause of its ``ConnectionError``;
    the raw OpenSSL text ("CA cert does not include key usage extension")
    does not tell a user that a CA which worked on Python 3.12 is refused by
    3.13's default strict verification.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # causes and contexts, bounded: a chain can loop
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError) and (
            seen.verify_code == _CA_MISSING_KEY_USAGE
            or "does not include key usage extension" in str(seen.verify_message)
        ):
            return _KEY_USAGE_HINT
        seen = seen.__cause__ or seen.__context__
    return ""


def _aged(view: FleetView, at: float) -> FleetView:
    """A remembered view with ``now`` moved on by the time since it was seen (and no
    probe tokens: those were granted to the breaker that heard it)."""
    return dataclasses.replace(view, now=view.now + (time.monotonic() - at), tokens=0)


class _Closable(Protocol):
    # PubSub.aclose is untyped in some redis-py releases and typed in others:
    # calling it through this protocol type-checks against both.
    async def aclose(self) -> None: ...


async def _close_pubsub(pubsub: PubSub | None) -> None:
    if pubsub is not None:
        closable: _Closable = pubsub
        with contextlib.suppress(RedisError, OSError):
            await closable.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redact_url(url: str) -> str:
    """``url`` with its user info and query (where passwords hide) left out."""
    if is_cluster_url(url):
        return redact_cluster_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    auth = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{auth}{host}{port}{parts.path}"


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def url_secrets(url: str, options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The passwords a URL (and client options) carry, as written and URL-decoded."""
    options = options or {}
    parts = urlsplit(url)
    found = [parts.password, unquote(parts.password or ""), options.get("password")]
    for item in parts.query.split("&"):
        key, _, value = item.partition("=")
        if key == "password":
            found.append(unquote(value))
    return tuple(s for s in found if isinstance(s, str) and len(s) >= 3)


def _describe(client: Client) -> str:
    """Where a caller's client points, without its credentials."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return f"cluster {node.host}:{node.port}" if node is not None else "cluster"
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
