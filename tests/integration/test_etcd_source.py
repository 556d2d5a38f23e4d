"""EtcdSource against a real etcd: hot reload in a running hub, bad values, outages, compaction.

Every wait is bounded (``wait_for``); the reconnect sleep of the source is a
gate the test holds shut, so "puts made while the watcher is away" is a fact
of the test, not a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Any, Self

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient.config import FIELDS, BreakerConfig, ConfigError, EtcdSource
from resilient.config._etcd_client import (
    AetcdClient,
    Connection,
    Endpoint,
    Range,
    WatchBatch,
    parse_endpoints,
)
from resilient.config.document import loads
from resilient.config.etcd import PushConflict
from resilient.events import ConfigChanged, ConfigRejected, Event
from resilient.hub import Hub
from resilient.testing.servers import EtcdServer

P = "/it/svc"
DEFAULT = BreakerConfig()


def obj(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def writer(endpoint: str) -> AetcdClient:
    """A second etcd client, apart from the one under test."""
    return AetcdClient(Connection(parse_endpoints(endpoint)[0]))


async def wait_for(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


class GatedSleep:
    """The source's reconnect sleep: held shut until the test opens it."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.calls = 0

    async def __call__(self, seconds: float) -> None:
        self.calls += 1
        await self.opened.wait()
        await asyncio.sleep(min(seconds, 0.05))


class RecordingHub(Hub):
    """A real Hub that also remembers the revision of every view it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[int | None] = []
        self.events: list[Event] = []
        self.add_listener(self.events.append)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        return self

    def __enter__(self) -> Self:
        super().__enter__()
        return self

    def apply_config(
        self,
        defaults: Mapping[str, Any] | None,
        breakers: Mapping[str, Mapping[str, Any]],
        *,
        revision: int | None = None,
        origin: str = "config",
    ) -> None:
        self.applied.append(revision)
        super().apply_config(defaults, breakers, revision=revision, origin=origin)


class WatchRecordingClient(AetcdClient):
    """A real client that records where each watch starts."""

    def __init__(self, connection: Connection, endpoint: Endpoint, starts: list[int]) -> None:
        super().__init__(connection, endpoint=endpoint)
        self._starts = starts

    def watch_prefix(self, prefix: str, *, start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        self._starts.append(start_revision)
        return super().watch_prefix(prefix, start_revision=start_revision)


def watch_recorder(starts: list[int]) -> Callable[[Connection, Endpoint], AetcdClient]:
    return lambda conn, endpoint: WatchRecordingClient(conn, endpoint, starts)


@pytest.fixture
async def etcd_writer(etcd_server: EtcdServer) -> AsyncIterator[AetcdClient]:
    client = writer(etcd_server.endpoint)
    yield client
    await client.close()


# -- settings (no server needed) ------------------------------------------------------------------


def test_endpoints_parse_and_credentials_in_urls_are_taken_apart() -> None:
    endpoints, user, password = parse_endpoints("http://a:1, https://u:p%40ss@b , [::1]:5")
    assert [str(e) for e in endpoints] == ["http://a:1", "https://b:2379", "http://[::1]:5"]
    assert (user, password) == ("u", "p@ss")
    for bad, words in [
        ("ftp://a", "http(s)://host"),
        ("http://a:1/v3", "no path"),
        ("http://a:x", "invalid port"),
        (" , ", "no etcd endpoint"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_endpoints(bad)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"username": "root"}, "both username and password"),
        ({"cert_cert": "c.pem"}, "both cert_cert and cert_key"),
        ({"ca_cert": "ca.pem"}, "use https://"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"backoff": 10, "backoff_max": 1}, "backoff <= backoff_max"),
    ],
)
def test_bad_source_settings_are_refused_at_construction(kwargs: Any, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        EtcdSource("http://127.0.0.1:2379", prefix=P, **kwargs)
    with pytest.raises(ValueError, match="all be http:// or all be https://"):
        EtcdSource("http://a,https://b", prefix=P)


def test_reprs_name_the_endpoints_and_user_never_the_password() -> None:
    explicit = EtcdSource("http://127.0.0.1:2379", prefix=P, username="ops", password="pw-123")
    in_url = EtcdSource("http://ops:pw-123@127.0.0.1:2379/", prefix=P)
    for source in (explicit, in_url):
        assert repr(source) == f"EtcdSource('http://127.0.0.1:2379 (user ops)', prefix='{P}')"
        assert "pw-123" not in repr(source._conn) and "pw-123" not in source.describe()


# -- hot reload -----------------------------------------------------------------------------------


async def test_hot_reload_end_to_end_in_a_running_hub(
    etcd_server: EtcdServer, etcd_writer: AetcdClient
) -> None:
    await etcd_writer.put(f"{P}/defaults", obj(minimum_calls=5))
    await etcd_writer.put(f"{P}/breakers/payments", obj(failure_rate_threshold=0.3))
    await etcd_writer.put(
        "/it/svc2/breakers/payments", obj(failure_rate_threshold=0.9)
    )  # a neighbour
    source = EtcdSource(etcd_server.endpoint, prefix=P)
    async with RecordingHub("svc", config=source) as hub:
        payments, search = hub.breaker("payments"), hub.breaker("search")
        assert (payments.config.failure_rate_threshold, payments.config.minimum_calls) == (0.3, 5)
        assert (search.config.failure_rate_threshold, search.config.minimum_calls) == (0.5, 5)
        for _ in range(3):
            with payments:
                pass
        assert payments.snapshot().calls == 3

        rev = await etcd_writer.put(f"{P}/breakers/payments", obj(failure_rate_threshold=0.6))
        await wait_for(lambda: payments.config.failure_rate_threshold == 0.6)
        assert payments.snapshot().calls == 3  # statistics survive a reload
        changed = [e for e in hub.events if isinstance(e, ConfigChanged)]
        assert [(e.breaker, e.revision) for e in changed] == [("payments", rev)]

        # a deleted key falls back to the defaults
        await etcd_writer.delete(f"{P}/breakers/payments")
        await wait_for(lambda: payments.config.failure_rate_threshold == 0.5)
        assert payments.config.minimum_calls == 5

        # a breaker created later gets its config at creation
        rev = await etcd_writer.put(f"{P}/breakers/late", obj(half_open_calls=2))
        await wait_for(lambda: source.revision == rev)
        assert hub.breaker("late").config.half_open_calls == 2

        # one transaction (defaults and a breaker together) is applied as one view
        before = len(hub.applied)
        async with EtcdSourceSession(etcd_server.endpoint) as push_source:
            doc = loads("defaults: {minimum_calls: 9}\nbreakers: {search: {buckets: 4}}\n")
            result = await push_source.push(doc)
        await wait_for(lambda: source.revision == result.revision)
        assert hub.applied[before:] == [result.revision]
        assert (search.config.minimum_calls, search.config.buckets) == (9, 4)
        assert hub.breaker("late").config.half_open_calls == DEFAULT.half_open_calls  # deleted


class EtcdSourceSession:
    """An EtcdSource used the CLI's way (push/snapshot), closed after."""

    def __init__(self, endpoint: str, prefix: str = P) -> None:
        self.source = EtcdSource(endpoint, prefix=prefix)

    async def __aenter__(self) -> EtcdSource:
        return self.source

    async def __aexit__(self, *exc: object) -> None:
        await self.source.close()


async def test_writes_made_with_etcdctl_are_picked_up(etcd_server: EtcdServer) -> None:
    source = EtcdSource(etcd_server.endpoint, prefix=P)
    async with RecordingHub("svc", config=source) as hub:
        api = hub.breaker("api.example.com:443")
        await asyncio.to_thread(
            etcd_server.etcdctl, "put", f"{P}/breakers/api.example.com:443", '{"open_duration": 7}'
        )
        await wait_for(lambda: api.config.open_duration == 7)
        await asyncio.to_thread(etcd_server.etcdctl, "put", f"{P}/defaults", '{"buckets": 20}')
        await wait_for(lambda: api.config.buckets == 20)
        assert api.config.open_duration == 7
        await asyncio.to_thread(etcd_server.etcdctl, "del", f"{P}/breakers/api.example.com:443")
        await wait_for(lambda: api.config.open_duration == DEFAULT.open_duration)
        assert api.config.buckets == 20


async def test_undecodable_and_misplaced_keys_are_rejected_and_the_last_good_value_kept(
    etcd_server: EtcdServer, etcd_writer: AetcdClient
) -> None:
    await etcd_writer.put(f"{P}/breakers/a", obj(minimum_calls=3))
    source = EtcdSource(etcd_server.endpoint, prefix=P)
    async with RecordingHub("svc", config=source) as hub:
        a = hub.breaker("a")
        rev = await etcd_writer.put(f"{P}/breakers/a", b'{"minimum_calls": 4')  # cut short
        await wait_for(lambda: source.revision == rev)
        rev2 = await etcd_writer.put(f"{P}/breaker/a", obj(minimum_calls=5))  # typo in the layout
        await wait_for(lambda: source.revision == rev2)
        assert a.config.minimum_calls == 3
        rejected = [e for e in hub.events if isinstance(e, ConfigRejected)]
        assert [(e.key, e.revision) for e in rejected] == [
            (f"{P}/breakers/a", rev),
            (f"{P}/breaker/a", rev2),
        ]
        assert "invalid JSON" in rejected[0].reason
        assert "not a config key" in rejected[1].reason
        await etcd_writer.put(f"{P}/breakers/a", obj(minimum_calls=6))
        await wait_for(lambda: a.config.minimum_calls == 6)  # the watcher lives on


# -- hypothesis: invalid values are all rejected, the last good config kept ---------------------


def _invalid_field_values() -> st.SearchStrategy[tuple[str, Any]]:
    anything = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )

    def invalid(pair: tuple[Any, Any]) -> bool:
        field, value = pair
        try:
            field.check(value)
        except ConfigError:
            return True
        return False

    pairs = st.tuples(st.sampled_from(FIELDS), anything).filter(invalid)
    return pairs.map(lambda pair: (pair[0].name, pair[1]))


def invalid_values() -> st.SearchStrategy[str]:
    """Texts no breaker may take, whatever else is configured."""
    valid_extra = st.dictionaries(
        st.sampled_from(["minimum_calls", "buckets", "half_open_calls"]),
        st.integers(min_value=1, max_value=9),
        max_size=2,
    )
    bad_object = st.builds(
        lambda bad, extra, unknown: json.dumps({**extra, **unknown, bad[0]: bad[1]}),
        _invalid_field_values(),
        valid_extra,
        st.dictionaries(st.sampled_from(["from_the_future", "x"]), st.integers(), max_size=1),
    )
    not_an_object = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.booleans())).map(
        json.dumps
    )
    garbage = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12).filter(
        lambda t: not _is_json_object(t)
    )
    return st.one_of(bad_object, not_an_object, garbage)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def etcdctl_put(server: EtcdServer, key: str, value: str) -> int:
    out = server.etcdctl("put", "-w", "json", "--", key, value)
    return int(json.loads(out)["header"]["revision"])


def test_fuzzed_invalid_values_are_all_rejected_and_the_last_good_config_kept(
    etcd_server: EtcdServer,
) -> None:
    good = {"failure_rate_threshold": 0.3, "minimum_calls": 4}
    etcdctl_put(etcd_server, f"{P}/breakers/fuzzed", json.dumps(good))
    source = EtcdSource(etcd_server.endpoint, prefix=P)
    with RecordingHub("svc", config=source) as hub:
        fuzzed = hub.breaker("fuzzed")
        last_good = fuzzed.config
        assert (last_good.failure_rate_threshold, last_good.minimum_calls) == (0.3, 4)

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(key=st.sampled_from(["defaults", "breakers/fuzzed"]), value=invalid_values())
        def one_bad_value(key: str, value: str) -> None:
            rev = etcdctl_put(etcd_server, f"{P}/{key}", value)
            _wait_sync(lambda: (source.revision or 0) >= rev)
            assert fuzzed.config == last_good
            assert any(
                isinstance(e, ConfigRejected) and e.revision == rev for e in list(hub.events)
            ), f"no ConfigRejected for {key}={value!r} at revision {rev}"

        one_bad_value()
        assert not any(isinstance(e, ConfigChanged) for e in hub.events)
        # the watcher lives on: good values still apply
        etcdctl_put(etcd_server, f"{P}/defaults", "{}")
        etcdctl_put(etcd_server, f"{P}/breakers/fuzzed", '{"minimum_calls": 8}')
        _wait_sync(lambda: fuzzed.config.minimum_calls == 8)


def _wait_sync(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)


# -- etcd away ------------------------------------------------------------------------------------


async def test_etcd_killed_and_restarted_puts_made_while_away_are_none_missed(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resilient.config")
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/a", obj(failure_rate_threshold=0.3))
        await w.put(f"{P}/breakers/c", obj(failure_rate_threshold=0.2))
    gate = GatedSleep()
    starts: list[int] = []
    source = EtcdSource(
        etcd_server.endpoint, prefix=P, sleep=gate, client_factory=watch_recorder(starts)
    )
    async with RecordingHub("svc", config=source) as hub:
        loaded = source.revision
        a, b, c = hub.breaker("a"), hub.breaker("b"), hub.breaker("c")
        async with writer(etcd_server.endpoint) as w:  # the watch is live before the kill
            live = await w.put(f"{P}/breakers/c", obj(failure_rate_threshold=0.25))
        await wait_for(lambda: c.config.failure_rate_threshold == 0.25)
        assert hub.applied[-1] == live
        seen_before = list(hub.applied)

        etcd_server.kill()
        await wait_for(lambda: gate.calls >= 1)  # the watcher noticed, and waits at the gate
        assert not source.connected
        assert a.config.failure_rate_threshold == 0.3  # last good config kept
        with a:
            pass  # and the breaker keeps working

        await asyncio.to_thread(etcd_server.start)  # same ports, same data dir
        async with writer(etcd_server.endpoint) as w:  # while the watcher is still away
            revs = [  # each one alone decides something the test checks
                await w.put(f"{P}/breakers/b", obj(failure_rate_threshold=0.7)),
                await w.put(f"{P}/breakers/a", obj(failure_rate_threshold=0.35)),
                await w.put(f"{P}/breakers/a", obj(failure_rate_threshold=0.4)),
                await w.delete(f"{P}/breakers/c"),
            ]
        assert revs == sorted(revs) and len(set(revs)) == 4
        gate.opened.set()

        await wait_for(lambda: source.revision == revs[-1])
        assert loaded is not None
        assert starts == [loaded + 1, live + 1]  # resumed right after the last revision seen
        assert a.config.failure_rate_threshold == 0.4
        assert b.config.failure_rate_threshold == 0.7
        assert c.config.failure_rate_threshold == DEFAULT.failure_rate_threshold
        after = hub.applied[len(seen_before) :]
        assert after and after[-1] == revs[-1]
        revisions = [r for r in hub.applied if r is not None]
        assert len(revisions) == len(hub.applied)
        assert revisions == sorted(set(revisions))  # never twice, never backwards
        assert bool(source.connected)  # (bool(): mypy narrowed it False above)

    messages = [r.getMessage() for r in caplog.records if r.name == "resilient.config"]
    down = [m for m in messages if "unreachable" in m]
    assert len(down) == 1 and "keeping the config of revision" in down[0]
    assert any("reachable again" in m for m in messages)


async def test_a_compacted_revision_forces_a_full_reload(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/a", obj(minimum_calls=3))
        await w.put(f"{P}/breakers/gone", obj(minimum_calls=4))
    gate = GatedSleep()
    source = EtcdSource(etcd_server.endpoint, prefix=P, sleep=gate)
    async with RecordingHub("svc", config=source) as hub:
        a, gone = hub.breaker("a"), hub.breaker("gone")
        etcd_server.kill()
        await wait_for(lambda: gate.calls >= 1)
        await asyncio.to_thread(etcd_server.start)
        async with writer(etcd_server.endpoint) as w:
            await w.put(f"{P}/breakers/a", obj(minimum_calls=30))
            await w.delete(f"{P}/breakers/gone")
            last = await w.put("/elsewhere", b"x")
            await w.compact(last)  # the watcher's resume revision is history now
        gate.opened.set()
        await wait_for(lambda: source.revision == last)
        assert a.config.minimum_calls == 30
        assert gone.config.minimum_calls == DEFAULT.minimum_calls
        assert hub.applied[-1] == last
    assert any("compacted" in r.getMessage() for r in caplog.records)


async def test_start_with_etcd_unreachable_runs_on_defaults_then_catches_up(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/a", obj(failure_rate_threshold=0.3))
    etcd_server.kill()
    source = EtcdSource(etcd_server.endpoint, prefix=P, timeout=2.0, backoff=0.05, backoff_max=0.2)
    hub = RecordingHub("svc", config=source, defaults={"minimum_calls": 7})
    await hub.start()  # does not raise
    try:
        a = hub.breaker("a")
        assert (a.config.minimum_calls, a.config.failure_rate_threshold) == (7, 0.5)
        await asyncio.to_thread(etcd_server.start)
        await wait_for(lambda: a.config.failure_rate_threshold == 0.3)
        assert a.config.minimum_calls == 7
    finally:
        await hub.close()
    down = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1
    assert "starting on the hub's own defaults" in down[0]
    assert etcd_server.endpoint in down[0]


async def test_a_restart_while_etcd_is_away_starts_on_the_cached_config(
    etcd_server: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "state" / "etcd-cache.json"
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/a", obj(minimum_calls=3))
    source = EtcdSource(etcd_server.endpoint, prefix=P, cache=cache)
    async with RecordingHub("svc", config=source) as hub:
        async with writer(etcd_server.endpoint) as w:
            rev = await w.put(f"{P}/breakers/a", obj(minimum_calls=4))
        await wait_for(lambda: source.revision == rev)
    saved = json.loads(cache.read_text())
    assert saved == {
        "origin": f"etcd:{P}",
        "revision": rev,
        "values": {"breakers/a": {"minimum_calls": 4}},
    }

    etcd_server.kill()
    other_prefix = EtcdSource(etcd_server.endpoint, prefix="/other", cache=cache, timeout=2)
    async with RecordingHub("svc", config=other_prefix) as hub:
        assert hub.breaker("a").config.minimum_calls == DEFAULT.minimum_calls  # not its cache

    restarted = EtcdSource(
        etcd_server.endpoint, prefix=P, cache=cache, timeout=2, backoff=0.05, backoff_max=0.2
    )
    async with RecordingHub("svc", config=restarted) as hub:
        a = hub.breaker("a")
        assert a.config.minimum_calls == 4  # the cached view, not bare defaults
        down = [r.getMessage() for r in caplog.records if "unreachable for " + P in r.getMessage()]
        assert len(down) == 1 and f"cached config of revision {rev}" in down[0]
        await asyncio.to_thread(etcd_server.start)
        async with writer(etcd_server.endpoint) as w:
            await w.put(f"{P}/breakers/a", obj(minimum_calls=5))
        await wait_for(lambda: a.config.minimum_calls == 5)  # reloaded, then followed


async def test_a_store_that_went_back_in_time_is_reloaded(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    async with writer(etcd_server.endpoint) as w:
        for i in range(5):
            await w.put(f"{P}/breakers/a", obj(minimum_calls=10 + i))
    gate = GatedSleep()
    source = EtcdSource(etcd_server.endpoint, prefix=P, sleep=gate)
    async with RecordingHub("svc", config=source) as hub:
        a = hub.breaker("a")
        assert a.config.minimum_calls == 14
        etcd_server.kill()
        await wait_for(lambda: gate.calls >= 1)
        shutil.rmtree(etcd_server.data_dir)  # replaced by an empty member
        await asyncio.to_thread(etcd_server.start)
        async with writer(etcd_server.endpoint) as w:
            rev = await w.put(f"{P}/breakers/a", obj(minimum_calls=2))
        assert rev < 5
        gate.opened.set()
        await wait_for(lambda: a.config.minimum_calls == 2)
        assert source.revision == rev


# -- push ---------------------------------------------------------------------------------------


class RacingClient(AetcdClient):
    """A real client; right after a push's read, another writer changes the prefix."""

    def __init__(self, connection: Connection, endpoint: Endpoint, race: Callable[[], Any]) -> None:
        super().__init__(connection, endpoint=endpoint)
        self._race = race

    async def get_prefix(self, prefix: str) -> Range:
        got = await super().get_prefix(prefix)
        await asyncio.to_thread(self._race)
        return got


@pytest.mark.parametrize(
    "race",
    [
        ("put", f"{P}/breakers/a", '{"minimum_calls": 99}'),  # a key changed
        ("put", f"{P}/breakers/new", "{}"),  # a key created
        ("del", f"{P}/breakers/b"),  # a key deleted
    ],
)
async def test_a_concurrent_change_refuses_the_push_and_writes_nothing(
    etcd_server: EtcdServer, race: tuple[str, ...]
) -> None:
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/a", obj(minimum_calls=3))
        await w.put(f"{P}/breakers/b", obj(minimum_calls=4))

    def factory(conn: Connection, endpoint: Endpoint) -> AetcdClient:
        return RacingClient(conn, endpoint, lambda: etcd_server.etcdctl(*race))

    source = EtcdSource(etcd_server.endpoint, prefix=P, client_factory=factory)
    doc = loads("breakers:\n  a: {minimum_calls: 5}\n  b: {minimum_calls: 4}\n")
    with pytest.raises(PushConflict) as info:
        await source.push(doc)
    assert P in str(info.value) and "nothing was written" in str(info.value)
    async with writer(etcd_server.endpoint) as w:
        got = await w.get_prefix(f"{P}/")
    values = {kv.key: json.loads(kv.value) for kv in got.kvs}
    assert values.get(f"{P}/breakers/a") != {"minimum_calls": 5}


async def test_push_makes_the_prefix_equal_to_the_document(etcd_server: EtcdServer) -> None:
    async with writer(etcd_server.endpoint) as w:
        await w.put(f"{P}/breakers/old", obj(minimum_calls=3))
        await w.put(f"{P}/junk", b"not json")
        await w.put(f"{P}2/breakers/old", obj(minimum_calls=3))  # a neighbour prefix
        await w.put(f"{P}/breakers/same", b'{ "buckets" : 4 }')
    source = EtcdSource(etcd_server.endpoint, prefix=P + "/")  # a trailing slash is the same
    doc = loads("defaults: {minimum_calls: 5}\nbreakers:\n  same: {buckets: 4}\n  new: {}\n")

    dry = await source.push(doc, dry_run=True)
    assert dry.revision is None
    assert [(c.key, c.kind) for c in dry.changes] == [
        ("breakers/new", "add"),
        ("breakers/old", "delete"),
        ("defaults", "add"),
        ("junk", "delete"),
    ]
    assert (await source.snapshot()).revision == dry.read_revision  # nothing written

    done = await source.push(doc)
    assert done.revision is not None and done.revision > done.read_revision
    snap = await source.snapshot()
    assert snap.document == doc and snap.problems == ()
    assert snap.raw["breakers/same"] == b'{ "buckets" : 4 }'  # equal as JSON: left alone
    async with writer(etcd_server.endpoint) as w:
        assert len((await w.get_prefix(f"{P}2/")).kvs) == 1
    again = await source.push(doc)
    assert again.changes == () and again.revision is None


# -- auth and TLS -------------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word"


async def test_user_auth_works_and_the_password_never_shows(
    etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    etcd_server.etcdctl("user", "add", f"root:{PASSWORD}")
    etcd_server.etcdctl("auth", "enable")
    user = ("--user", f"root:{PASSWORD}")
    etcd_server.etcdctl(*user, "put", f"{P}/breakers/a", '{"minimum_calls": 3}')

    source = EtcdSource(etcd_server.endpoint, prefix=P, username="root", password=PASSWORD)
    async with RecordingHub("svc", config=source) as hub:
        a = hub.breaker("a")
        assert a.config.minimum_calls == 3
        await asyncio.to_thread(
            etcd_server.etcdctl, *user, "put", f"{P}/breakers/a", '{"minimum_calls": 6}'
        )
        await wait_for(lambda: a.config.minimum_calls == 6)

    in_url = EtcdSource(etcd_server.endpoint.replace("://", f"://root:{PASSWORD}@"), prefix=P)
    assert (await in_url.snapshot()).document.breakers["a"] == {"minimum_calls": 6}

    wrong = EtcdSource(etcd_server.endpoint, prefix=P, username="root", password="nope", timeout=2)
    hub = RecordingHub("svc", config=wrong)
    await hub.start()  # refused, not raised
    await hub.close()
    assert not wrong.connected
    assert any("authentication failed" in r.getMessage() for r in caplog.records)

    for text in (repr(source), repr(in_url), str(source), caplog.text):
        assert PASSWORD not in text


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=resilient-test-ca", cwd=tmp_path)  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=tmp_path)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "2",
                 "-extfile", "san.ext", cwd=tmp_path)  # fmt: skip
    return tmp_path


class TlsEtcdServer(EtcdServer):
    """The harness's etcd with its client port behind mutual TLS."""

    def __init__(self, certs: Path) -> None:
        super().__init__()
        self._certs = certs

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _executor(self, log: IO[str]) -> Any:
        from mirakuru import TCPExecutor

        peer = f"http://{self.host}:{self.peer_port}"
        c = self._certs
        command = [
            shutil.which("etcd") or "etcd",
            "--name", "t", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}", "--initial-cluster-state", "new",
            "--cert-file", str(c / "server.pem"), "--key-file", str(c / "server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(c / "ca.pem"),
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]  # fmt: skip
        return TCPExecutor(command, host=self.host, port=self.port, **self._executor_options(log))


async def test_tls_with_a_client_certificate(certs: Path) -> None:
    with TlsEtcdServer(certs) as server:
        ca, cert, key = str(certs / "ca.pem"), str(certs / "client.pem"), str(certs / "client.key")
        pusher = EtcdSource(server.endpoint, prefix=P, ca_cert=ca, cert_cert=cert, cert_key=key)
        await wait_for_async(lambda: pusher.push(loads("breakers: {a: {minimum_calls: 3}}")))
        source = EtcdSource(server.endpoint, prefix=P, ca_cert=ca, cert_cert=cert, cert_key=key)
        async with RecordingHub("svc", config=source) as hub:
            a = hub.breaker("a")
            assert a.config.minimum_calls == 3
            await pusher.push(loads("breakers: {a: {minimum_calls: 8}}"))
            await wait_for(lambda: a.config.minimum_calls == 8)

        no_client_cert = EtcdSource(server.endpoint, prefix=P, ca_cert=ca, timeout=2)
        hub = RecordingHub("svc", config=no_client_cert)
        await hub.start()  # refused by the server, not raised
        await hub.close()
        assert not no_client_cert.connected


async def wait_for_async(attempt: Callable[[], Any], within: float = 15.0) -> Any:
    """Retry ``attempt`` until it succeeds (a TLS member listens before it is ready)."""
    from resilient.config import EtcdError

    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except EtcdError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
