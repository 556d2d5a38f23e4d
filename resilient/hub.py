"""The hub: named breakers that share defaults, a store and a config source.

``hub.breaker(name)`` is a plain dict lookup; the lock is taken only to create
a breaker, so two callers racing for a new name get the same one.

A breaker's config is layered (lowest first): ``BreakerConfig()``, the hub's
``defaults``, the source's ``defaults``, the source's entry for the breaker.
Each breaker's result is validated on its own: a bad value is rejected with a
``ConfigRejected`` event and the breaker keeps its last good config. Unknown
fields are skipped with an ``UnknownFieldsIgnored`` event, so a fleet can run
two versions mid-rollout.

A hub with no store and no config source is in memory and usable without
``start()``. With them, ``await hub.start()`` / ``async with hub`` runs their
I/O in background tasks; ``with hub`` does the same on a thread of its own,
for sync programs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from resilient.breaker import NAME_PATTERN, CircuitBreaker
from resilient.config import BreakerConfig
from resilient.errors import ConfigError
from resilient.events import (
    ConfigRejected,
    Event,
    Listener,
    UnknownFieldsIgnored,
    deliver,
)

if TYPE_CHECKING:
    from resilient.limit import ConcurrencyLimit

__all__ = ["ConfigSource", "Hub", "Store"]

log = logging.getLogger("resilient")


class ConfigSource(Protocol):
    """Where a hub's breaker configs come from (a file, etcd).

    ``start`` loads the current config into the hub (``hub.apply_config``) and
    keeps watching; it must not raise when its backend is unreachable (the
    hub runs on what it has). ``close`` stops watching.
    """

    async def start(self, hub: Hub) -> None: ...
    async def close(self) -> None: ...


class Store(Protocol):
    """Where breaker state is shared (in memory, Redis).

    ``start`` is awaited by ``Hub.start``; ``attach`` is called once for each
    breaker the hub creates (before it is handed out); ``close`` flushes and
    stops background work.
    """

    async def start(self, hub: Hub) -> None: ...
    def attach(self, breaker: CircuitBreaker) -> None: ...
    async def close(self) -> None: ...


class Hub:
    """A registry of named circuit breakers.

    Args:
        namespace: groups breakers in a shared store (e.g. one service).
        store: ``resilient.stores.MemoryStore`` (default) or ``RedisStore``.
        config: a config source (``FileSource``, ``EtcdSource``) or None.
        defaults: the creator's defaults for every breaker: a BreakerConfig or
            a mapping of fields over ``BreakerConfig()``.
        clock, wall, rng: handed to every breaker (tests inject them).
        breaker_options: keyword arguments for every ``CircuitBreaker``
            (``record_exceptions``, ``result_is_failure``, ...).
    """

    def __init__(
        self,
        namespace: str = "default",
        *,
        store: Store | None = None,
        config: ConfigSource | None = None,
        defaults: BreakerConfig | Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        breaker_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not NAME_PATTERN.match(namespace):
            raise ValueError(f"namespace must match [A-Za-z0-9._:/-]{{1,200}}, got {namespace!r}")
        if defaults is None:
            defaults = BreakerConfig()
        elif not isinstance(defaults, BreakerConfig):
            defaults = BreakerConfig.from_mapping(defaults)
        self.namespace = namespace
        self.defaults = defaults
        self.store = store
        self.source = config
        self._clock, self._wall, self._rng = clock, wall, rng
        self._options = dict(breaker_options or {})
        self._breakers: dict[str, CircuitBreaker] = {}
        self._bases: dict[str, BreakerConfig] = {}  # creators' own defaults, by breaker
        self._create_lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()
        self._hooks: tuple[Callable[[CircuitBreaker], object], ...] = ()
        self._limits: dict[str, ConcurrencyLimit] = {}
        # The source's current view, as plain data (see apply_config).
        self._source_defaults: Mapping[str, Any] = {}
        self._source_breakers: Mapping[str, Mapping[str, Any]] = {}
        self._revision: int | None = None
        self._started = False
        self._thread: _LoopThread | None = None

    # ------------------------------------------------------------------ breakers

    def breaker(
        self,
        name: str,
        *,
        defaults: BreakerConfig | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> CircuitBreaker:
        """The one breaker called ``name``, created on first use.

        ``defaults`` (the creator's, e.g. the HTTP layer's) replace the hub's
        defaults under this breaker's config source values, now and at every
        reload. ``defaults`` and ``options`` (``record_exceptions``,
        ``result_is_failure``, ...) apply when this call creates the breaker;
        later calls return the same breaker.
        """
        found = self._breakers.get(name)
        if found is not None:
            return found
        with self._create_lock:
            found = self._breakers.get(name)
            if found is not None:
                return found
            if defaults is not None:
                if not isinstance(defaults, BreakerConfig):
                    defaults = BreakerConfig.from_mapping(defaults)
                self._bases[name] = defaults
            events: list[Event] = []
            config = self._resolve(name, self._bases.get(name, self.defaults), events)
            kwargs = {**self._options, **options}
            br = CircuitBreaker(
                name, config, clock=self._clock, wall=self._wall, rng=self._rng, **kwargs
            )
            br.namespace = self.namespace
            for listener in self._listeners:
                br.add_listener(listener)
            for hook in self._hooks:
                hook(br)
            if self.store is not None:
                self.store.attach(br)
            self._breakers[name] = br
        if events and self._listeners:
            for event in events:
                deliver(self._listeners, event)
        return br

    def breakers(self) -> Mapping[str, CircuitBreaker]:
        """Every breaker this hub has created, by name (a read-only view)."""
        return dict(self._breakers)

    def add_listener(self, listener: Listener) -> None:
        """Listen to every breaker of this hub (now and later) and to config events."""
        self._listeners = (*self._listeners, listener)
        for br in list(self._breakers.values()):
            br.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)
        for br in list(self._breakers.values()):
            br.remove_listener(listener)

    def add_breaker_hook(self, hook: Callable[[CircuitBreaker], object]) -> None:
        """Call ``hook(breaker)`` for every breaker of this hub: those it has now,
        and each later one as it is created, before it is handed out."""
        with self._create_lock:
            self._hooks = (*self._hooks, hook)
            existing = list(self._breakers.values())
        for br in existing:
            hook(br)

    def remove_breaker_hook(self, hook: Callable[[CircuitBreaker], object]) -> None:
        with self._create_lock:
            self._hooks = tuple(h for h in self._hooks if h != hook)

    # ------------------------------------------------------------------ limits

    def add_limit(self, name: str, limit: ConcurrencyLimit) -> None:
        """Show ``limit`` as ``name`` where this hub's breakers show (telemetry).

        ``session(limit=...)`` adds each host's limit under the host's
        breaker name; a ``Policy``'s own limit is added by whoever wants it seen.
        """
        self._limits[name] = limit

    def limits(self) -> Mapping[str, ConcurrencyLimit]:
        """The limits added to this hub, by name (a read-only view)."""
        return dict(self._limits)

    # ------------------------------------------------------------------ config seam

    def apply_config(
        self,
        defaults: Mapping[str, Any] | None,
        breakers: Mapping[str, Mapping[str, Any]],
        *,
        revision: int | None = None,
        origin: str = "config",
    ) -> None:
        """Take a config source's whole current view and apply it.

        Every breaker that exists is updated (atomically, through
        ``update_config``) when its resolved config changed; a breaker created
        later resolves its config from this view. Invalid values are rejected
        per breaker, each keeping its last good config.
        """
        self._source_defaults = dict(defaults or {})
        self._source_breakers = {k: dict(v) for k, v in breakers.items()}
        self._revision = revision
        events: list[Event] = []
        for key, data in self._source_items():
            unknown = sorted(str(k) for k in data if k not in _FIELD_NAMES)
            if unknown:
                events.append(UnknownFieldsIgnored(key, tuple(unknown), revision))
        if events and self._listeners:
            for event in events:
                deliver(self._listeners, event)
        for name, br in list(self._breakers.items()):
            events = []
            config = self._resolve(name, br.config, events)
            if events and self._listeners:
                for event in events:
                    deliver(self._listeners, event)
            if config != br.config:
                br.update_config(config, revision=revision)

    def reject_config(self, key: str, reason: str, *, revision: int | None = None) -> None:
        """A source could not decode ``key`` (not JSON, not an object): report it."""
        log.warning("resilient: config %s rejected at revision %s: %s", key, revision, reason)
        if self._listeners:
            deliver(self._listeners, ConfigRejected(None, key, reason, revision))

    def _source_items(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        yield "defaults", self._source_defaults
        for name, data in self._source_breakers.items():
            yield f"breakers/{name}", data

    def _resolve(self, name: str, last_good: BreakerConfig, events: list[Event]) -> BreakerConfig:
        """Layer the source's view over the hub's defaults; last good on any error.

        The source's defaults and the breaker's own key are merged before
        validation, so a combination valid only merged (defaults
        ``open_duration: 100``, own ``open_duration_max: 500``) is accepted.
        """
        own = self._source_breakers.get(name)
        try:
            return BreakerConfig.from_mapping(
                {**self._source_defaults, **(own or {})},
                base=self._bases.get(name, self.defaults),
                unknown="ignore",
            )
        except ConfigError as exc:
            key = f"breakers/{name}" if own is not None and exc.field in own else "defaults"
            return self._rejected(name, key, exc, last_good, events)

    def _rejected(
        self,
        name: str,
        key: str,
        exc: ConfigError,
        last_good: BreakerConfig,
        events: list[Event],
    ) -> BreakerConfig:
        log.warning(
            "resilient: config %s rejected for breaker %r at revision %s: %s",
            key,
            name,
            self._revision,
            exc,
        )
        events.append(ConfigRejected(name, key, str(exc), self._revision))
        return last_good

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the store and the config source (loads their current view)."""
        if self._started:
            return
        self._started = True
        if self.store is not None:
            await self.store.start(self)
        if self.source is not None:
            await self.source.start(self)

    async def close(self) -> None:
        """Stop watching and flush; breakers keep working in memory."""
        if not self._started:
            return
        self._started = False
        if self.source is not None:
            await self.source.close()
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> Self:
        """Sync use: the hub's I/O runs on an event loop in a thread of its own."""
        if self.store is None and self.source is None:
            return self
        self._thread = _LoopThread(f"resilient-hub-{self.namespace}")
        self._thread.run(self.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                thread.run(self.close())
            finally:
                thread.stop()

    def __repr__(self) -> str:
        return f"<Hub {self.namespace!r} breakers={len(self._breakers)}>"


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(BreakerConfig))


class _LoopThread:
    """An event loop on a daemon thread, for running a hub's I/O under sync code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


_default: Hub | None = None
_default_lock = threading.Lock()


def default_hub() -> Hub:
    """The process's default hub: in memory, no servers."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Hub()
    return _default


def breaker(name: str, **options: Any) -> CircuitBreaker:
    """The breaker called ``name`` in the default hub (``resilient.breaker``)."""
    return default_hub().breaker(name, **options)
