"""Process presence and ``resilient status --watch`` over a real redis-server.

Stores in one process stand in for processes: each ``RedisStore`` has its own
connections, process id and presence entry. A process that died without
closing is an entry written with the store's own script and never refreshed.
Waits are bounded and generous (a loaded two-core box).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import port_for  # type: ignore[import-untyped, unused-ignore]
import pytest

from resilient import Hub
from resilient.cli import main
from resilient.cli._watch import watch
from resilient.cli.status import read_fleet
from resilient.stores import _control, _lua, _presence
from resilient.stores.redis import RedisStore
from resilient.testing.servers import RedisServer

CONFIG = {"minimum_calls": 5, "open_duration": 30.0, "window_size": 10, "buckets": 10}
BOUND = 10.0


async def until(check: Callable[[], bool], bound: float = BOUND, pause: float = 0.02) -> None:
    end = time.monotonic() + bound
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {bound} s")
        await asyncio.sleep(pause)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fleet(server: RedisServer, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rows by name, processes by id) as ``resilient status`` reads them."""
    with _control.connect(server.url) as client:
        rows, processes = read_fleet(client, namespace)
    return {r["name"]: r for r in rows}, {p["id"]: p for p in processes}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as started:
        yield started


@pytest.fixture
async def hubs(server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    made: list[Hub] = []

    async def make(namespace: str = "ops", redis_timeout: float = 0.25) -> Hub:
        store = RedisStore(server.url, sync_interval=0.05, timeout=redis_timeout)
        hub = Hub(namespace, store=store, defaults=CONFIG)
        await hub.start()
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.close()


def dead_process(server: RedisServer, namespace: str, ident: str, every: float) -> None:
    """An entry as a process writes it, from a process that then never writes again."""
    entry = _presence.body(every=every, names=["dep"], degraded=[], outage=None, version="x")
    keys = (
        _presence.presence_key(namespace),
        _presence.expiry_key(namespace),
        _presence.names_key(namespace),
    )
    with server.client() as client:
        gone_in = f"{_presence.GONE_AFTER * every}"
        client.eval(_presence.WRITE, 3, *keys, ident, entry, gone_in, "", "")


async def test_presence_counts_processes_per_breaker_and_a_closed_one_leaves(
    hubs: Callable[..., Any], server: RedisServer
) -> None:
    a, b = await hubs(), await hubs()
    a.breaker("dep")(lambda: 1)()
    b.breaker("dep")(lambda: 1)()
    a.breaker("solo")(lambda: 1)()
    await until(lambda: fleet(server, "ops")[0].get("dep", {}).get("processes") == 2)
    await until(lambda: fleet(server, "ops")[0].get("solo", {}).get("processes") == 1)
    rows, processes = fleet(server, "ops")
    assert len(processes) == 2
    assert {p["status"] for p in processes.values()} == {"ok"}
    assert rows["dep"]["processes_degraded"] == 0
    assert sorted(p["breakers"] for p in processes.values()) == [1, 2]
    assert all(p["age"] < 5 for p in processes.values())  # stamped with Redis time
    await b.close()  # a clean close removes its entry at once
    _, processes = fleet(server, "ops")
    assert len(processes) == 1
    assert fleet(server, "ops")[0]["dep"]["processes"] == 1


async def test_an_entry_not_refreshed_goes_silent_then_gone_and_is_cleaned(
    hubs: Callable[..., Any], server: RedisServer
) -> None:
    a = await hubs()
    a.breaker("dep")(lambda: 1)()
    dead_process(server, "ops", "gone:1:aaaaaa", every=1.0)
    await until(lambda: fleet(server, "ops")[0].get("dep", {}).get("processes") == 2)
    assert "gone:1:aaaaaa" in fleet(server, "ops")[1]
    # Silent past 1.5 periods: counted, and counted as on local state.
    await until(lambda: fleet(server, "ops")[1]["gone:1:aaaaaa"]["status"] == "silent")
    rows, _ = fleet(server, "ops")
    assert (rows["dep"]["processes"], rows["dep"]["processes_degraded"]) == (2, 1)
    # Gone past 3 periods: skipped by readers, then deleted by a live process's write.
    await until(lambda: "gone:1:aaaaaa" not in fleet(server, "ops")[1])
    assert fleet(server, "ops")[0]["dep"]["processes"] == 1
    key = _presence.presence_key("ops")
    with server.client() as client:
        await until(lambda: not client.hexists(key, "gone:1:aaaaaa"))
        assert client.zscore(_presence.expiry_key("ops"), "gone:1:aaaaaa") is None
        assert 0 < client.pttl(key) <= 70_000  # the hash outlives the last writer by about 60 s


async def test_a_process_with_thousands_of_breakers_is_counted_in_every_row(
    hubs: Callable[..., Any], server: RedisServer
) -> None:
    """3,000 breakers of 40 characters: 129 KB of names, far past an entry's 8 KiB."""
    names = [f"svc-{i:05d}.{'x' * 30}" for i in range(3000)]
    assert {len(n) for n in names} == {40}
    # Each flush of big is 3,000 scripts in one pipeline, and each read of the test's
    # 9,000 commands: a timeout for that on a loaded box, and reads spaced out.
    big, small = await hubs("many", redis_timeout=2.0), await hubs("many", redis_timeout=2.0)
    for name in names:
        big.breaker(name)(lambda: 1)()
    for name in names[-100:]:  # past the first 8 KiB of big's names; small's fit its entry
        small.breaker(name)(lambda: 1)()
    expected = {n: 1 for n in names} | {n: 2 for n in names[-100:]}

    def counted(rows: dict[str, Any]) -> dict[str, Any]:
        return {n: r["processes"] for n, r in rows.items()}

    await until(lambda: counted(fleet(server, "many")[0]) == expected, bound=60.0, pause=0.5)
    _, processes = fleet(server, "many")
    assert sorted(p["breakers"] for p in processes.values()) == [100, 3000]
    key = _presence.names_key("many")
    with server.client(decode_responses=True) as client:
        (big_id,) = client.hkeys(key)  # small's names fit in its entry: no record
        record = client.hget(key, big_id)
        entry = json.loads(client.hget(_presence.presence_key("many"), big_id))
        assert entry["more"] > 0 and len(entry["names"]) < 300
        assert json.loads(record) == {"id": entry["names_id"], "names": names}

        # A record that is not the one its entry names is not believed; a reader's
        # cache keeps what it read.
        cache = _presence.NamesCache()
        with _control.connect(server.url) as reader:
            assert (
                counted({r["name"]: r for r in read_fleet(reader, "many", names_cache=cache)[0]})
                == expected
            )
            client.hset(key, big_id, record.replace(names[-1], "svc-other"))
            rows = {r["name"]: r for r in read_fleet(reader, "many")[0]}
            assert rows[names[-1]]["processes"] == 1 and rows[names[0]]["processes"] == 1
            cached = read_fleet(reader, "many", names_cache=cache)[0]
            assert counted({r["name"]: r for r in cached}) == expected

        # A record Redis lost is written again: the next entry write is refused (-1)
        # and the store sends its record with the one after.
        client.hdel(key, big_id)
        await until(lambda: client.hget(key, big_id) == record, bound=30.0)
        assert counted(fleet(server, "many")[0]) == expected
        # And it is not sent with every write: a record marked here outlives two writes.
        client.hset(key, big_id, record + " ")
        seen = json.loads(client.hget(_presence.presence_key("many"), big_id))["seen"]

        def written_twice() -> bool:
            raw = client.hget(_presence.presence_key("many"), big_id)
            return bool(raw) and json.loads(raw)["seen"] > seen + _presence.EVERY

        await until(written_twice, bound=30.0, pause=0.1)
        assert client.hget(key, big_id) == record + " "
    await big.close()
    await until(
        lambda: (
            counted(fleet(server, "many")[0])
            == {n: 1 for n in names[-100:]} | {n: 0 for n in names[:-100]}
        ),
        bound=30.0,
        pause=0.5,
    )


async def test_a_breaker_redis_refuses_is_listed_degraded(server: RedisServer) -> None:
    # A user whose keys exclude breaker "bad": its FLUSH is refused (NOPERM), the rest is not.
    with server.client() as client:
        client.execute_command(
            "ACL", "SETUSER", "app", "on", ">app-pw", "~resilient:{ops:good}:*",
            "~resilient:{ops}:*", "&*", "+@all",
        )  # fmt: skip
        client.hset(_lua.keys_for("ops", "bad").state, "state", "closed")  # so status lists it
    url = server.url.replace("redis://", "redis://app:app-pw@")
    hub = Hub("ops", store=RedisStore(url, sync_interval=0.05), defaults=CONFIG)
    async with hub:
        hub.breaker("bad")(lambda: 1)()
        hub.breaker("good")(lambda: 1)()

        def degraded() -> bool:
            rows, _ = fleet(server, "ops")
            return rows.get("bad", {}).get("processes_degraded") == 1

        await until(degraded)
        rows, processes = fleet(server, "ops")
        (process,) = processes.values()
        assert process["status"] == "degraded" and process["degraded"] == ["bad"]
        assert rows["good"]["processes"] == 1 and rows["good"]["processes_degraded"] == 0


async def test_a_process_back_from_an_outage_rewrites_its_entry_with_the_outage(
    hubs: Callable[..., Any], server: RedisServer
) -> None:
    a = await hubs()
    a.breaker("dep")(lambda: 1)()
    await until(lambda: len(fleet(server, "ops")[1]) == 1)
    server.stop()
    await asyncio.sleep(1.0)
    a.breaker("dep")(lambda: 1)()
    server.restart(keep_data=False)  # back empty: the entry must be written again

    def back() -> bool:
        processes = fleet(server, "ops")[1]
        return any(p["outage_seconds"] for p in processes.values())

    await until(back)
    (process,) = fleet(server, "ops")[1].values()
    assert process["status"] == "ok"
    assert 0.9 <= process["outage_seconds"] < BOUND
    assert abs(process["outage_ended_at"] - process["seen"]) < 1.0  # the first write after it


async def test_status_watch_count_shows_rows_and_processes(
    hubs: Callable[..., Any], server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = await hubs(), await hubs()
    for hub in (a, b):
        hub.breaker("dep")(lambda: 1)()
    a.breaker("manual").force_open()
    await until(lambda: fleet(server, "ops")[0].get("dep", {}).get("processes") == 2)
    await until(lambda: fleet(server, "ops")[0].get("manual", {}).get("state") == "forced_open")
    base = ("--redis", server.url, "--namespace", "ops")
    args = ("status", *base, "--watch", "--count", "2", "--interval", "0.1")
    code, out, err = await asyncio.to_thread(cli, capsys, *args)
    assert (code, err) == (0, ""), err
    assert out.count("namespace 'ops' at") == 2  # two refreshes, printed one after the other
    assert out.count("processes: 2") == 2
    dep = [line for line in out.splitlines() if "dep" in line and "closed" in line]
    assert len(dep) == 2 and all(" 2 " in line for line in dep)
    assert any("manual" in line and "forced_open" in line for line in out.splitlines())
    code, out, _ = await asyncio.to_thread(cli, capsys, "status", *base, "--json")
    doc = json.loads(out)
    assert code == 0 and len(doc["processes"]) == 2


def test_watch_shows_redis_going_away_and_ctrl_c_ends_it(
    server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_process(server, "ops", "p:1:aaaaaa", every=60.0)
    with server.client() as client:
        client.hset(_lua.keys_for("ops", "dep").state, mapping={"state": "closed"})
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            server.stop()
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    watch(
        server.url, "ops", None, 0.5, None, read=read_fleet, sleep=sleep
    )  # returns: Ctrl-C is exit 0
    out = capsys.readouterr().out
    first = out.split("unreachable since")[0]
    assert first.count("namespace 'ops' at") == 1
    assert "dep" in first and "processes: 1" in first
    assert out.count("unreachable since") == 2  # both refreshes after it went away
    assert "dep" in out.split("unreachable since")[-1]  # the last rows kept
    assert sleeps == [0.5, 0.5, 0.5]


def test_status_watch_bad_input(server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--redis", server.url, "--namespace", "ops")
    for bad in (
        ("--watch", "--interval", "0"),
        ("--watch", "--interval", "-1"),
        ("--watch", "--interval", "soon"),
        ("--watch", "--count", "0"),
        ("--count", "2"),  # --count without --watch
        ("--interval", "2"),
        ("--watch", "--json"),
    ):
        code, out, err = cli(capsys, "status", *base, *bad)
        assert code == 2, (bad, out, err)
        assert out == ""
    port = port_for.select_random()
    code, out, err = cli(capsys, "status", "--redis", f"redis://:pw@127.0.0.1:{port}/0", "--watch")
    assert code == 3 and "unreachable" in err and "pw" not in err
