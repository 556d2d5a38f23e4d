"""RedisStore over a real Redis Cluster (3 masters, 3 replicas), a master killed under load.

The cluster is ``resilient.testing.RedisCluster``: real ``redis-server``
processes joined by ``redis-cli --cluster create``, with a 1 s
``cluster-node-timeout``, no persistence. Hubs in this process each have their
own store and connections, as the processes of a fleet would. Waits are
bounded polls; the bounds are generous for a loaded CI box, the measured
figures (promotion, fleet view back) are in docs/benchmarks.md
(``python -m bench.redis_cluster``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from resilient import CircuitBreaker, CircuitOpenError, Hub, State
from resilient.errors import ConfigError
from resilient.stores import _lua
from resilient.stores.redis import RedisStore
from resilient.testing.clusters import RedisCluster

pytestmark = [pytest.mark.cluster]

CONFIG = {"minimum_calls": 4, "open_duration": 30.0, "window_size": 5, "buckets": 5}
NAMES = [f"dep{i}" for i in range(24)]
BOUND = 5.0  # seconds for anything that takes milliseconds when the box is idle
PROMOTION_BOUND = 15.0  # seconds from the kill to the replica's promotion (measured: ~2.5 s)
BACK_BOUND = 3.0  # seconds from the promotion to every breaker's fleet view (target: 1 s)


class Boom(OSError):
    pass


def ok() -> str:
    return "ok"


def fail() -> str:
    raise Boom("down")


async def until(check: Callable[[], bool], bound: float = BOUND) -> float:
    """Poll ``check`` until true; the seconds it took (fails the test past ``bound``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > bound:
            raise AssertionError(f"not true within {bound} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def slot(namespace: str, name: str) -> int:
    return int(key_slot(_lua.keys_for(namespace, name).state.encode()))


@pytest.fixture
async def hubs(redis_cluster_session: RedisCluster) -> AsyncIterator[Callable[..., Any]]:
    """Started hubs on the session's cluster, a fresh namespace per test; closed after."""
    made: list[Hub] = []
    namespace = f"c{time.monotonic_ns()}"

    async def make(url: str | None = None) -> Hub:
        hub = Hub(namespace, store=RedisStore(url or redis_cluster_session.url), defaults=CONFIG)
        await hub.start()
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.close()


# ------------------------------------------------------------------ the fixture itself


def test_the_cluster_is_real_fails_over_and_takes_a_node_back(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(redis_cluster.nodes) == 6 and len(masters) == 3
    owner = redis_cluster.owner("some-key")
    assert len(owner.replicas) == 1 and owner.master in masters
    with redis_cluster.client() as client:
        client.set("some-key", b"v")
    time.sleep(0.2)  # replication is asynchronous: give the write time to reach the replica
    killed = time.monotonic()
    redis_cluster.kill(owner.master)
    assert owner.master.pid is None
    promoted = redis_cluster.wait_promoted(owner.master, timeout=PROMOTION_BOUND)
    assert promoted - killed < PROMOTION_BOUND
    assert redis_cluster.owner("some-key").master is owner.replicas[0]
    with redis_cluster.client() as client:
        assert client.get("some-key") == b"v"  # the replica had it
    redis_cluster.restart(owner.master)  # back as the new master's replica
    assert redis_cluster.owner("some-key").replicas == (owner.master,)
    replica = owner.master
    redis_cluster.pause(replica)
    assert replica.paused and replica.pid is not None
    with redis_cluster.client() as client:
        client.set("some-key", b"w")  # a paused replica stops no write
    redis_cluster.resume(replica)
    redis_cluster.wait_ok()


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://127.0.0.1:0", "bad port '0'"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:x", "bad port 'x'"),
        ("redis+cluster://:pw@127.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://::1:7000", "IPv6"),
        ("redis+cluster://127.0.0.1:7000?socket_timeout=soon", "bad option"),
        ("redis+clusters://127.0.0.1:7000", "redis+cluster://"),
    ],
)
def test_a_bad_cluster_url_is_named_before_anything_connects(url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as caught:
        RedisStore(url)
    assert "pw" not in str(caught.value)
    if url.startswith("redis+cluster://"):
        assert isinstance(caught.value, ConfigError)


def test_cluster_urls_keep_their_password_out_of_reprs() -> None:
    store = RedisStore("rediss+cluster://user:s3cret@10.0.0.1:7000,10.0.0.2/0")
    assert "s3cret" not in repr(store)
    assert "rediss+cluster://***@10.0.0.1:7000,10.0.0.2" in repr(store)


# ------------------------------------------------------------------ breakers over the cluster


async def test_breakers_spread_over_the_slots_and_share_state(
    hubs: Callable[..., Any], redis_cluster_session: RedisCluster
) -> None:
    a, b = await hubs(), await hubs()
    namespace = a.namespace
    masters = {redis_cluster_session.owner(_lua.keys_for(namespace, n).state).master for n in NAMES}
    assert len(masters) == 3  # the hash tag spreads breakers over every master
    for name in NAMES:
        keys = _lua.keys_for(namespace, name)
        assert key_slot(keys.state.encode()) == key_slot(keys.window.encode())  # one slot each
    ba = {n: a.breaker(n) for n in NAMES}
    bb = {n: b.breaker(n) for n in NAMES}
    for name in NAMES:
        for _ in range(CONFIG["minimum_calls"]):
            with pytest.raises(Boom):
                ba[name](fail)()
    # Every script ran on its slot's master (a CROSSSLOT error would leave it local),
    # and the trips reached the other hub, wherever its listener is subscribed.
    await until(lambda: all(bb[n].state is State.OPEN for n in NAMES))
    assert all(not br.snapshot().degraded for br in (*ba.values(), *bb.values()))
    with redis_cluster_session.client(decode_responses=True) as client:
        states = {n: client.hget(_lua.keys_for(namespace, n).state, "state") for n in NAMES}
    assert set(states.values()) == {"open"}


async def test_a_hub_started_later_loads_every_shard(
    hubs: Callable[..., Any], redis_cluster_session: RedisCluster
) -> None:
    a = await hubs()
    for name in NAMES:
        a.breaker(name).force_open()
    with redis_cluster_session.client(decode_responses=True) as client:

        def written() -> bool:
            keys = [_lua.keys_for(a.namespace, n).state for n in NAMES]
            return all(client.hget(k, "state") == "forced_open" for k in keys)

        await until(written)
    # One startup node is enough: the client learns the rest from it.
    b = await hubs(f"redis+cluster://{redis_cluster_session.nodes[-1].address}")
    assert all(b.breaker(n).state is State.FORCED_OPEN for n in NAMES)  # SCAN over every master


# ------------------------------------------------------------------ a master lost under load


@pytest.fixture(params=[True, False], ids=["full-coverage", "partial-coverage"])
def failover_cluster(request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    """A fresh cluster with Redis's default ``cluster-require-full-coverage``, and without."""
    with RedisCluster(full_coverage=request.param) as cluster:
        yield cluster


async def test_a_master_killed_under_load_costs_callers_nothing(
    failover_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    redis_cluster = failover_cluster
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    namespace = "failover"
    a = Hub(namespace, store=RedisStore(redis_cluster.url), defaults=CONFIG)
    b = Hub(namespace, store=RedisStore(redis_cluster.url), defaults=CONFIG)
    victim = redis_cluster.owner(_lua.keys_for(namespace, "dep0").state).master
    owners = {n: redis_cluster.owner(_lua.keys_for(namespace, n).state).master for n in NAMES}
    lost = [n for n in NAMES if owners[n] is victim]
    kept = [n for n in NAMES if owners[n] is not victim]
    assert lost and kept
    # With Redis's default cluster-require-full-coverage the other masters answer
    # CLUSTERDOWN too between the master's FAIL and the promotion, so every breaker
    # may run on local state for that gap; without it, the other shards never leave.
    partial = not redis_cluster.full_coverage
    async with a, b:
        ba = {n: a.breaker(n) for n in NAMES}
        bb = {n: b.breaker(n) for n in NAMES}
        ba["dep0"].force_open()  # an operator's state on the master about to die
        await until(lambda: bb["dep0"].state is State.FORCED_OPEN)
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def load(br: CircuitBreaker) -> None:
            while not stop.is_set():
                try:
                    br(ok)()
                except CircuitOpenError:
                    pass
                except BaseException as exc:  # anything else is a caller error
                    errors.append(exc)
                await asyncio.sleep(0.002)

        left: set[str] = set()  # breakers of the surviving shards that ran on local state

        async def watch() -> None:
            while not stop.is_set():
                left.update(n for br in (ba, bb) for n in kept if br[n].snapshot().degraded)
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(load(br)) for br in (*ba.values(), *bb.values())]
        tasks.append(asyncio.create_task(watch()))
        await asyncio.sleep(0.5)  # load runs, and the forced state reaches the replica
        killed = time.monotonic()
        redis_cluster.kill(victim)
        await until(lambda: any(ba[n].snapshot().degraded for n in lost), bound=BOUND)
        promoted = await asyncio.to_thread(
            redis_cluster.wait_promoted, victim, timeout=PROMOTION_BOUND
        )
        await until(
            lambda: not any(br[n].snapshot().degraded for br in (ba, bb) for n in NAMES),
            bound=BACK_BOUND,
        )
        back = time.monotonic() - promoted
        assert back < BACK_BOUND
        stop.set()
        await asyncio.gather(*tasks)
        assert errors == []
        if partial:
            assert left == set()  # one master lost is not an outage of the others
        print(f"promotion {promoted - killed:.2f} s after the kill; fleet view back {back:.2f} s")
        # No manual state lost: Redis (the promoted replica) and both hubs still have it.
        assert ba["dep0"].state is State.FORCED_OPEN and bb["dep0"].state is State.FORCED_OPEN
        with redis_cluster.client(decode_responses=True) as client:
            assert client.hget(_lua.keys_for(namespace, "dep0").state, "state") == "forced_open"
        # Transitions still travel, on the new master's slots too.
        for name in lost[-1:] + kept[:1]:
            ba[name].force_open()
            await until(lambda name=name: bb[name].state is State.FORCED_OPEN)
            bb[name].reset()
            await until(lambda name=name: ba[name].state is State.CLOSED)


# ------------------------------------------------------------------ the command line


async def test_status_reads_the_cluster_from_redis_and_resilient_redis(
    hubs: Callable[..., Any],
    redis_cluster_session: RedisCluster,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resilient.cli import main as cli_main

    a = await hubs()
    for name in NAMES:
        a.breaker(name).force_open()
    with redis_cluster_session.client(decode_responses=True) as client:
        keys = [_lua.keys_for(a.namespace, n).state for n in NAMES]
        await until(lambda: all(client.hget(k, "state") == "forced_open" for k in keys))
    url = redis_cluster_session.url
    args = ["status", "--namespace", a.namespace, "--json"]
    assert await asyncio.to_thread(cli_main, [*args, "--redis", url]) == 0
    rows = json.loads(capsys.readouterr().out)["breakers"]
    assert sorted(r["name"] for r in rows) == sorted(NAMES)  # every master scanned
    assert {r["state"] for r in rows} == {"forced_open"}
    monkeypatch.setenv("RESILIENT_REDIS", url)
    assert await asyncio.to_thread(cli_main, args) == 0
    assert len(json.loads(capsys.readouterr().out)["breakers"]) == len(NAMES)
    bad = "redis+cluster://:s3cret@127.0.0.1:99999"
    assert await asyncio.to_thread(cli_main, [*args, "--redis", bad]) == 1
    err = capsys.readouterr().err
    assert "bad port '99999'" in err and "s3cret" not in err


async def test_the_dashboards_monitor_reads_and_hears_a_cluster(
    hubs: Callable[..., Any], redis_cluster_session: RedisCluster
) -> None:
    from resilient.dashboard import FleetMonitor

    a = await hubs()
    for name in NAMES:
        a.breaker(name)(ok)()
    monitor = FleetMonitor(redis_cluster_session.url, a.namespace)
    await monitor.start()
    try:
        await until(lambda: monitor.names() == set(NAMES))  # every master's breakers polled
        await until(lambda: all((monitor.row(n) or {}).get("calls") for n in NAMES))
        breaker = a.breaker(NAMES[0])
        while breaker.state is State.CLOSED:
            with pytest.raises(Boom):
                breaker(fail)()
        # the fleet's OPEN, published on one node's channel, heard wherever it listens
        await until(lambda: (monitor.row(NAMES[0]) or {}).get("state") == "open")
    finally:
        await monitor.close()


# ------------------------------------------------------------------ operators' controls


def _apart(cluster: RedisCluster, namespace: str) -> str:
    """A breaker name whose slot's master is not the audit stream's."""
    from resilient.stores import _control

    audit_master = cluster.owner(_control.audit_key(namespace)).master
    for name in NAMES:
        if cluster.owner(_lua.keys_for(namespace, name).state).master is not audit_master:
            return name
    raise AssertionError("every name on the audit stream's master")


async def test_operator_controls_reach_every_process_and_are_audited_on_a_cluster(
    hubs: Callable[..., Any],
    redis_cluster_session: RedisCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from resilient.cli import main as cli_main

    a, b = await hubs(), await hubs()
    name = _apart(redis_cluster_session, a.namespace)
    for hub in (a, b):
        hub.breaker(name)(ok)()
    key = _lua.keys_for(a.namespace, name).state
    with redis_cluster_session.client(decode_responses=True) as client:
        await until(lambda: client.hget(key, "state") == "closed")
    base = ["--redis", redis_cluster_session.url, "--namespace", a.namespace]
    force = ["breaker", "force-open", name, *base, "--reason", "INC-1", "--actor", "alice@ops"]
    assert await asyncio.to_thread(cli_main, force) == 0
    out, err = capsys.readouterr()
    assert err == "" and f"{name}: closed -> forced_open" in out and "NOT" not in out
    await until(lambda: {a.breaker(name).state, b.breaker(name).state} == {State.FORCED_OPEN})
    with pytest.raises(CircuitOpenError):
        b.breaker(name)(ok)()
    # status names the operator, and counts both processes (presence on the namespace's slot)
    status = ["status", name, *base, "--json"]

    def row() -> dict[str, Any]:
        assert cli_main(status) == 0
        found: dict[str, Any] = json.loads(capsys.readouterr().out)["breakers"][0]
        return found

    await until(lambda: row()["processes"] == 2)
    assert (row()["manual_by"], row()["manual_reason"]) == ("alice@ops", "INC-1")
    reset = ["breaker", "reset", name, *base, "--json", "--actor", "bob@ops"]
    assert await asyncio.to_thread(cli_main, reset) == 0
    change = json.loads(capsys.readouterr().out)
    assert (change["before"], change["after"]) == ("forced_open", "closed")
    assert change["audit_id"]
    await until(lambda: {a.breaker(name).state, b.breaker(name).state} == {State.CLOSED})
    assert b.breaker(name)(ok)() == "ok"

    assert await asyncio.to_thread(cli_main, ["audit", *base, "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [
        (e["action"], e["breaker"], e["before"], e["after"], e["actor"], e["reason"])
        for e in entries
    ] == [
        ("force-open", name, "closed", "forced_open", "alice@ops", "INC-1"),
        ("reset", name, "forced_open", "closed", "bob@ops", ""),
    ]
    assert entries[1]["id"] == change["audit_id"]
    assert (entries[1]["before_reason"], entries[1]["before_by"]) == ("INC-1", "alice@ops")
    assert entries[1]["generation"] == entries[0]["generation"] + 1
    assert entries[0]["at"] <= entries[1]["at"]
    # A typo is still caught, by a scan of every master.
    typo = ["breaker", "disable", name + "x", *base]
    assert await asyncio.to_thread(cli_main, typo) == 1
    assert f"did you mean '{name}'" in capsys.readouterr().err


async def test_the_dashboards_controls_on_a_cluster(
    hubs: Callable[..., Any], redis_cluster_session: RedisCluster
) -> None:
    import aiohttp
    from aiohttp import web

    from resilient.dashboard import FleetMonitor, Token, create_app
    from resilient.dashboard._command import fleet_controls
    from resilient.stores import _control

    a = await hubs()
    name = _apart(redis_cluster_session, a.namespace)
    a.breaker(name)(ok)()
    url, token = redis_cluster_session.url, "t0ken-on-a-cluster"
    monitor = FleetMonitor(url, a.namespace)
    controls = fleet_controls(url, a.namespace)
    app = create_app(monitor, token=Token(token), controls=controls)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        await until(lambda: monitor.row(name) is not None)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{host}:{port}/api/breakers/{name}/disable",
                json={"reason": "load test"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        assert doc["audited"] is True and doc["breaker"]["state"] == "disabled"
        await until(lambda: a.breaker(name).state is State.DISABLED)
    finally:
        await runner.cleanup()
    with redis_cluster_session.client(decode_responses=True) as client:
        ((_, entry),) = client.xrange(_control.audit_key(a.namespace))
    assert (entry["action"], entry["after"]) == ("disable", "disabled")
    assert entry["reason"] == "load test"
    assert entry["actor"].startswith("dashboard@")


def test_a_change_is_in_force_before_its_audit_entry_on_a_cluster(
    redis_cluster_session: RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit entry cannot be written (its key holds a string): the change is made
    all the same, and the command says it is not audited."""
    from resilient.cli import main as cli_main
    from resilient.stores import _control

    cluster = redis_cluster_session
    namespace = f"unaudited{time.monotonic_ns()}"
    name = _apart(cluster, namespace)
    key, audit = _lua.keys_for(namespace, name).state, _control.audit_key(namespace)
    with cluster.client(decode_responses=True) as client:
        client.hset(key, mapping={"state": "closed", "generation": 7})
        client.set(audit, "not a stream")
    args = ["breaker", "force-open", name, "--redis", cluster.url, "--namespace", namespace,
            "--reason", "INC-3", "--actor", "carol@ops"]  # fmt: skip
    code = cli_main(args)
    out, err = capsys.readouterr()
    assert code == 3, err
    assert f"{name}: closed -> forced_open" in out and "NOT written" in out, err
    assert "in force fleet-wide (generation 8), but its audit entry could not be" in err
    assert "WRONGTYPE" in err
    with cluster.client(decode_responses=True) as client:
        state = client.hgetall(key)
        assert (state["state"], state["manual_reason"], state["manual_by"]) == (
            "forced_open", "INC-3", "carol@ops",
        )  # fmt: skip
        client.delete(audit)
    # The next change's entry names what it replaced, the unaudited one included.
    with _control.connect(cluster.url) as client:
        change = _control.apply_change(client, namespace, name, "reset", actor="dave@ops")
        (entry,) = _control.read_audit(client, namespace)
    assert change.audit_id == entry.id and (entry.before, entry.after) == ("forced_open", "closed")
    assert (entry.before_reason, entry.before_by) == ("INC-3", "carol@ops")
