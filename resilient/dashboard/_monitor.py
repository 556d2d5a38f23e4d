"""What the dashboard shows, kept current: the fleet's breakers as Redis has them.

One idea: one reader per dashboard, however many browsers watch. A poll every
``interval`` reads every breaker of the namespace through ``resilient
status``'s reader (``read_states``, in a worker thread: it is the same code
the command runs), and a listener on the namespace's transition channel
records each fleet transition as it is published and asks for a poll at once,
so a trip reaches the page well within a second. Each change bumps
``version``; viewers wait on ``changed()`` and take what moved since the
version they last saw (``since``), so a thousand breakers cost a browser
only the rows that changed.

Redis away: the last rows are kept and marked stale, ``redis.up`` is false
with the reason (its password scrubbed), and polling goes on until Redis is
back. Nothing read from Redis is evaluated: rows are the reader's numbers and
strings, transitions are parsed strictly (``_lua.parse_message``).

Concurrency: everything runs on the event loop that called ``start()``,
except the reader, which gets its own client in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from resilient.stores import _lua
from resilient.stores.redis import redact_url, scrub, url_secrets

if TYPE_CHECKING:
    import redis

    from resilient.dashboard._config import ConfigView
    from resilient.fleet import FleetView

__all__ = ["FleetMonitor", "Transition"]

log = logging.getLogger("resilient.dashboard")

INTERVAL: Final = 0.25  # seconds between polls: the page is never more than this behind
TIMEOUT: Final = 2.0  # seconds a Redis command may take before Redis counts as away
CLOSE_WAIT: Final = 5.0  # seconds close() waits for its loops to end
HISTORY: Final = 20  # transitions kept per breaker
RECENT: Final = 200  # transitions kept for the whole namespace


@dataclass(slots=True)
class Transition:
    """One fleet transition of one breaker (``reason`` may be filled in by a later poll)."""

    seq: int  # the monitor's version when it was recorded
    name: str
    state: str
    at: float  # epoch seconds (Redis time)
    generation: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "at": self.at,
            "generation": self.generation,
            "reason": self.reason,
        }


@dataclass(slots=True)
class _Row:
    data: dict[str, Any]
    seq: int
    history: deque[Transition] = field(default_factory=lambda: deque(maxlen=HISTORY))


ReadStates = Callable[["redis.Redis", str], list[dict[str, Any]]]


class FleetMonitor:
    """The fleet's breakers in one namespace, polled and followed; see the module docstring.

    Args:
        redis_url: the Redis the fleet shares (its password never shown).
        namespace: the hubs' namespace.
        config: the etcd view to show beside the breakers, if any.
        interval: seconds between polls.
        read_states: the reader (``resilient.cli.status.read_states``).
    """

    def __init__(
        self,
        redis_url: str,
        namespace: str = "default",
        *,
        config: ConfigView | None = None,
        interval: float = INTERVAL,
        read_states: ReadStates | None = None,
    ) -> None:
        _lua.keys_for(namespace, "x")  # the namespace rule, checked at the door
        if not 0 < interval <= 60:
            raise ValueError(f"interval must be in (0, 60] seconds, got {interval!r}")
        self.redis_url = redis_url
        self.where = redact_url(redis_url)
        self.namespace = namespace
        self.config = config
        self.interval = interval
        self._secrets = url_secrets(redis_url)
        if read_states is None:
            from resilient.cli.status import read_states as default_reader
            from resilient.stores._presence import NamesCache

            # One cache for this monitor's polls: a process's names record is read once.
            read_states = functools.partial(default_reader, names_cache=NamesCache())
        self._read = read_states
        # Loop-side state.
        self.run = secrets.token_hex(4)  # tells this run's versions from an earlier one's
        self.version = 0
        self._rows: dict[str, _Row] = {}
        self._removed: dict[str, int] = {}  # name -> version it disappeared at
        self._recent: deque[Transition] = deque(maxlen=RECENT)
        self.redis_up: bool | None = None  # None: not polled yet
        self.redis_error: str | None = None
        self.polled_at: float | None = None
        self._status_seq = 0
        self._changed = asyncio.Event()  # set and replaced at each new version
        self._poll_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Set by close(): the loops end at their next turn even if a library
        # under them swallowed the cancellation (redis-py's pub/sub close can).
        self._closing = False
        self._sync_client: redis.Redis | None = None

    def __repr__(self) -> str:
        where, ns = self.where, self.namespace
        return f"FleetMonitor({where!r}, namespace={ns!r}, breakers={len(self._rows)})"

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Poll once (so the first page is full), then keep polling and listening."""
        self._changed = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._closing = False
        await self.poll()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="resilient-dashboard-poll"),
            asyncio.create_task(self._listen(), name="resilient-dashboard-listen"),
        ]
        if self.config is not None:
            self.config.on_change = self._bump_soon
            await self.config.start()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a pub/sub whose close hangs in the library must not hang ours.
            await asyncio.wait(self._tasks, timeout=CLOSE_WAIT)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # seen: an error of a loop being closed is no news
        self._tasks = []
        if self.config is not None:
            await self.config.close()
        client, self._sync_client = self._sync_client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def poll_soon(self) -> None:
        """Have the next poll run now (after a control action, a published transition)."""
        self._poll_now.set()

    # ------------------------------------------------------------------ reading

    def names(self) -> set[str]:
        return set(self._rows)

    def row(self, name: str) -> dict[str, Any] | None:
        row = self._rows.get(name)
        return None if row is None else self._public(row)

    def view(self, since: int = 0) -> dict[str, Any]:
        """What changed after version ``since`` (everything for 0), as JSON-ready data."""
        rows = [self._public(r) for r in self._rows.values() if r.seq > since]
        rows.sort(key=lambda r: r["name"])
        doc: dict[str, Any] = {
            "version": self.version,
            "full": since == 0,
            "namespace": self.namespace,
            "breakers": rows,
            "transitions": [t.to_dict() for t in self._recent if t.seq > since],
        }
        if since:
            doc["removed"] = sorted(n for n, seq in self._removed.items() if seq > since)
        if since == 0 or self._status_seq > since:
            doc["redis"] = {
                "where": self.where,
                "up": self.redis_up,
                "error": self.redis_error,
                "polled_at": self.polled_at,
            }
            doc["config"] = None if self.config is None else self.config.to_dict()
        return doc

    async def changed(self, since: int) -> int:
        """Wait for a version after ``since``, and return it (bound the wait with a timeout)."""
        while self.version <= since:
            await self._changed.wait()
        return self.version

    def _public(self, row: _Row) -> dict[str, Any]:
        doc = dict(row.data)
        doc["stale"] = self.redis_up is False
        doc["history"] = [t.to_dict() for t in row.history]
        if self.config is not None:
            doc["config"] = self.config.for_breaker(row.data["name"])
        return doc

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._poll_now.wait()
            self._poll_now.clear()
            await self.poll()

    async def poll(self) -> None:
        """Read every breaker once and record what changed (never raises for Redis)."""
        try:
            rows = await asyncio.to_thread(self._read_all)
        except Exception as exc:  # Redis away, refusing, or answering nonsense
            self._went_down(exc)
            return
        self._came_up()
        self._take(rows)

    def _read_all(self) -> list[dict[str, Any]]:
        client = self._sync_client
        if client is None:
            client = self._sync_client = _sync_client(self.redis_url)
        return self._read(client, self.namespace)

    def _take(self, rows: list[dict[str, Any]]) -> None:
        seq = self.version + 1
        moved = False
        seen = set()
        for data in rows:
            name = data["name"]
            seen.add(name)
            known = self._rows.get(name)
            if known is None:
                known = self._rows[name] = _Row(data, seq)
                self._removed.pop(name, None)
                if data.get("changed_at"):  # where its story starts on the page
                    # (news when the breaker appears after the first poll)
                    self._note(known, data, seq, fresh=self.polled_at is None)
                moved = True
            elif known.data != data:
                known.data, known.seq = data, seq
                self._note(known, data, seq, fresh=False)
                moved = True
        for name in [n for n in self._rows if n not in seen]:
            del self._rows[name]
            self._removed[name] = seq
            moved = True
        self.polled_at = time.time()
        if moved:
            self._bump(seq)

    def _note(self, row: _Row, data: Mapping[str, Any], seq: int, *, fresh: bool) -> None:
        """Record the transition a poll found (unless the channel told it already)."""
        generation = int(data.get("generation") or 0)
        last = row.history[-1] if row.history else None
        if last is not None and generation <= last.generation:
            reason = data.get("reason")
            if generation == last.generation and last.reason is None and isinstance(reason, str):
                last.reason, last.seq = reason, seq  # the channel told it; the hash says why
            return
        name = str(data["name"])
        at = float(data.get("changed_at") or time.time())
        t = Transition(seq, name, str(data["state"]), at, generation, data.get("reason"))
        row.history.append(t)
        row.seq = seq
        if not fresh:
            self._recent.append(t)

    def _went_down(self, exc: BaseException) -> None:
        message = scrub(f"{type(exc).__name__}: {exc}", self._secrets)
        if self.redis_up is not False:
            log.warning("resilient: dashboard: Redis at %s unreachable: %s", self.where, message)
        changed = self.redis_up is not False or self.redis_error != message
        self.redis_up, self.redis_error = False, message
        client, self._sync_client = self._sync_client, None  # a fresh connection next time
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if changed:
            self._status_changed()

    def _came_up(self) -> None:
        if self.redis_up is not True:
            if self.redis_up is False:
                log.warning("resilient: dashboard: Redis at %s reachable again", self.where)
            self.redis_up, self.redis_error = True, None
            self._status_changed()

    def _status_changed(self) -> None:
        seq = self.version + 1
        self._status_seq = seq
        for row in self._rows.values():  # their "stale" flag flipped
            row.seq = seq
        self._bump(seq)

    def _bump_soon(self) -> None:
        self._status_seq = self.version + 1
        self._bump(self.version + 1)

    def _bump(self, seq: int) -> None:
        self.version = max(self.version, seq)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every viewer waiting on the version before

    # ------------------------------------------------------------------ listening

    async def _listen(self) -> None:
        """Record published transitions as they come; resubscribe after a failure.

        On a Redis Cluster the subscription is on a random node (a published
        message reaches every node), another one after that node failed.
        """
        from resilient.stores._redis_url import async_client, subscribed_node, subscriber

        failed_on: str | None = None
        while not self._closing:
            client = async_client(
                self.redis_url, socket_connect_timeout=TIMEOUT, socket_keepalive=True
            )
            pubsub = None
            try:
                async with subscriber(client, avoid=failed_on) as pubsub:
                    await pubsub.psubscribe(_lua.channel_pattern(self.namespace))
                    while not self._closing:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._on_message(message.get("channel"), message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception:  # the poll reports Redis away; here we just come back
                failed_on = subscribed_node(pubsub)
                await asyncio.sleep(self.interval * 2)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _on_message(self, channel: object, data: object) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        name = _lua.name_from_key(self.namespace, channel, "events")
        if name is None or not isinstance(data, bytes | str):
            return
        view = _lua.parse_message(data)
        if view is None:
            return
        self.poll_soon()
        row = self._rows.get(name)
        if row is None:
            return  # a new breaker: the poll brings it with its story
        if row.history and row.history[-1].generation >= view.generation:
            return
        seq = self.version + 1
        t = Transition(seq, name, view.state, view.now, view.generation)
        row.history.append(t)
        row.seq = seq
        self._recent.append(t)
        if int(row.data.get("generation") or 0) < view.generation:
            # Shown at once, not at the poll it asked for (which adds the reason).
            row.data = {**row.data, **_fields_of(view)}
        self._bump(seq)


def _fields_of(view: FleetView) -> dict[str, Any]:
    """A published transition in ``read_states``'s terms (it carries no reason)."""
    calls = view.calls
    return {
        "state": view.state,
        "open_until": view.open_until,
        "retry_after": None if view.open_until is None else max(0.0, view.open_until - view.now),
        "trips": view.trips,
        "generation": view.generation,
        "calls": calls,
        "failures": view.failures,
        "slow_calls": view.slow,
        "failure_rate": view.failures / calls if calls else 0.0,
        "slow_call_rate": view.slow / calls if calls else 0.0,
        "reason": None,
        "changed_at": view.now,
    }


def _sync_client(url: str) -> redis.Redis:
    """The poll's client: a RedisCluster for a ``redis+cluster://`` URL."""
    from resilient.stores._control import connect

    return connect(url, TIMEOUT, name="resilient-dashboard")
