"""Fleet-wide manual control (``resilient breaker``, ``resilient audit``) over a real redis-server.

Stores in one process stand in for processes where the store's code is all
that matters (each ``RedisStore`` has its own connections and listener); the
restart test runs real worker processes (tests/integration/test_redis_fleet.py's).
Redis restarts run with no persistence at all (``--save '' --appendonly no``).
Waits are bounded and generous: the 100 ms target is measured in
bench/fleet_control.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from resilient import Hub, State
from resilient.cli import main
from resilient.stores import _control, _lua
from resilient.stores.redis import RedisStore
from resilient.testing.servers import RedisServer

from .test_redis_fleet import start_workers

CONFIG = {"minimum_calls": 5, "open_duration": 30.0, "window_size": 10, "buckets": 10}
BOUND = 10.0  # seconds any wait may take on a loaded box


async def until(check: Callable[[], bool], bound: float = BOUND) -> None:
    end = time.monotonic() + bound
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {bound} s")
        await asyncio.sleep(0.01)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def bare_redis() -> Iterator[RedisServer]:
    """A Redis with no persistence: a restart comes back empty."""
    with RedisServer(persist=False) as server:
        yield server


@pytest.fixture
async def fleet(bare_redis: RedisServer) -> AsyncIterator[list[Hub]]:
    """Three hubs, each with its own store, sharing breaker ``dep`` (used once each)."""
    hubs = [
        Hub("ops", store=RedisStore(bare_redis.url, sync_interval=0.05), defaults=CONFIG)
        for _ in range(3)
    ]
    for hub in hubs:
        await hub.start()
    for hub in hubs:
        hub.breaker("dep")(lambda: 1)()
    await until(lambda: _state(bare_redis, "dep").get("state") == "closed")
    yield hubs
    for hub in hubs:
        await hub.close()


def _state(server: RedisServer, name: str, namespace: str = "ops") -> dict[str, str]:
    with server.client(decode_responses=True) as client:
        found: dict[str, str] = client.hgetall(_lua.keys_for(namespace, name).state)
        return found


def _audit(server: RedisServer, namespace: str = "ops") -> list[dict[str, str]]:
    with server.client(decode_responses=True) as client:
        return [fields for _, fields in client.xrange(_control.audit_key(namespace))]


def states(hubs: list[Hub], name: str = "dep") -> set[State]:
    return {hub.breaker(name).state for hub in hubs}


async def test_force_open_disable_reset_reach_every_process_and_are_audited(
    fleet: list[Hub], bare_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = bare_redis.url
    base = ("--redis", url, "--namespace", "ops")
    code, out, err = cli(capsys, "breaker", "force-open", "dep", *base,
                         "--reason", "INC-42: provider down", "--actor", "alice@ops1")  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.startswith("dep: closed -> forced_open in namespace 'ops', fleet-wide")
    await until(lambda: states(fleet) == {State.FORCED_OPEN})
    with bare_redis.client() as client:
        assert client.pttl(_lua.keys_for("ops", "dep").state) == -1  # held: no expiry
    code, out, _ = cli(capsys, "status", "dep", *base, "--json")
    (row,) = json.loads(out)["breakers"]
    assert row["state"] == "forced_open" and row["manual_reason"] == "INC-42: provider down"
    assert row["manual_by"] == "alice@ops1" and row["reason"] == "manual"

    code, out, _ = cli(capsys, "breaker", "disable", "dep", *base, "--json", "--actor", "bob@x")
    change = json.loads(out)
    assert code == 0 and (change["before"], change["after"]) == ("forced_open", "disabled")
    await until(lambda: states(fleet) == {State.DISABLED})
    code, _, _ = cli(
        capsys, "breaker", "reset", "dep", *base, "--reason", "over", "--actor", "bob@x"
    )
    assert code == 0
    await until(lambda: states(fleet) == {State.CLOSED})
    assert _state(bare_redis, "dep")["state"] == "closed"
    with bare_redis.client() as client:
        assert client.pttl(_lua.keys_for("ops", "dep").state) > 0  # idle keys expire again
    code, out, _ = cli(capsys, "status", "dep", *base, "--json")
    assert json.loads(out)["breakers"][0]["manual_by"] == "bob@x"  # the reset's record

    entries = _audit(bare_redis)
    drop = {"at"}
    assert [{k: v for k, v in e.items() if k not in drop} for e in entries] == [
        {"actor": "alice@ops1", "action": "force-open", "breaker": "dep",
         "reason": "INC-42: provider down", "before": "closed", "after": "forced_open",
         "before_reason": "", "before_by": "", "generation": entries[0]["generation"]},
        {"actor": "bob@x", "action": "disable", "breaker": "dep", "reason": "",
         "before": "forced_open", "after": "disabled", "before_reason": "INC-42: provider down",
         "before_by": "alice@ops1", "generation": str(int(entries[0]["generation"]) + 1)},
        {"actor": "bob@x", "action": "reset", "breaker": "dep", "reason": "over",
         "before": "disabled", "after": "closed", "before_reason": "",
         "before_by": "bob@x", "generation": str(int(entries[0]["generation"]) + 2)},
    ]  # fmt: skip
    ats = [float(e["at"]) for e in entries]
    assert ats == sorted(ats) and abs(ats[0] - time.time()) < 60

    code, out, _ = cli(capsys, "audit", *base, "--json")
    listed = json.loads(out)["entries"]
    assert [(e["action"], e["before"], e["after"], e["actor"]) for e in listed] == [
        ("force-open", "closed", "forced_open", "alice@ops1"),
        ("disable", "forced_open", "disabled", "bob@x"),
        ("reset", "disabled", "closed", "bob@x"),
    ]
    code, out, _ = cli(capsys, "audit", *base, "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 2 and "reset" in out and "over" in out
    code, out, _ = cli(capsys, "audit", *base, "--since", "2099-01-01T00:00:00")
    assert code == 0 and "no audit entry" in out


async def test_an_operators_state_survives_a_redis_restart_with_no_persistence(
    fleet: list[Hub], bare_redis: RedisServer
) -> None:
    change = await _control.control(
        bare_redis.url, "ops", "dep", "force-open", reason="INC-7", actor="carol@ops"
    )
    assert (change.before, change.after) == ("closed", "forced_open")
    await until(lambda: states(fleet) == {State.FORCED_OPEN})
    bare_redis.kill()
    bare_redis.restart()
    with bare_redis.client() as client:
        assert client.dbsize() == 0 or _state(bare_redis, "dep").get("state") == "forced_open"
    # The holders write it back: in Redis again, with its record, and still in force.
    await until(lambda: _state(bare_redis, "dep").get("state") == "forced_open")
    held = _state(bare_redis, "dep")
    assert (held["manual_reason"], held["manual_by"]) == ("INC-7", "carol@ops")
    assert held["manual_generation"] == held["generation"]
    await asyncio.sleep(0.3)  # several flushes later nothing has closed it
    assert states(fleet) == {State.FORCED_OPEN}
    assert _audit(bare_redis) == []  # the stream did not survive (no persistence)
    # A reset after the restart is not undone by the holders' next resync.
    await _control.control(bare_redis.url, "ops", "dep", "reset", actor="carol@ops")
    await until(lambda: states(fleet) == {State.CLOSED})
    bare_redis.kill()
    bare_redis.restart()
    await asyncio.sleep(0.5)
    assert states(fleet) == {State.CLOSED}
    assert _state(bare_redis, "dep").get("state") in (None, "closed")


async def test_a_manual_state_set_in_code_is_not_held(
    fleet: list[Hub], bare_redis: RedisServer
) -> None:
    fleet[0].breaker("dep").force_open()  # as before: through the flush, no record
    await until(lambda: states(fleet) == {State.FORCED_OPEN})
    assert "manual_by" not in _state(bare_redis, "dep")
    bare_redis.kill()
    bare_redis.restart()
    await until(lambda: not any(h.breaker("dep").snapshot().degraded for h in fleet))
    await asyncio.sleep(0.3)  # several resyncs: nobody writes it back (re-apply it, as before)
    assert _state(bare_redis, "dep") == {}


async def test_a_store_started_later_holds_it_too(
    fleet: list[Hub], bare_redis: RedisServer
) -> None:
    await _control.control(bare_redis.url, "ops", "dep", "disable", reason="load test")
    late = Hub("ops", store=RedisStore(bare_redis.url, sync_interval=0.05), defaults=CONFIG)
    async with late:
        assert late.breaker("dep").state is State.DISABLED
        for hub in fleet:  # only the newcomer is left to hold it
            await hub.close()
        store: Any = late.store
        await until(lambda: store._manual.get("dep", (0, None))[1] is not None)
        bare_redis.kill()
        bare_redis.restart()
        await until(lambda: _state(bare_redis, "dep").get("state") == "disabled")
        assert _state(bare_redis, "dep")["manual_reason"] == "load test"


def test_bad_input_changes_nothing(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--redis", redis_server.url, "--namespace", "bad")
    with redis_server.client() as client:
        keys = _lua.keys_for("bad", "payments")
        client.hset(keys.state, mapping={"state": "closed", "generation": 1})
    code, _, err = cli(capsys, "breaker", "force-open", "paymnts", *base)
    assert code == 1 and "no breaker 'paymnts'" in err and "'payments'" in err
    for reason in ("x" * 201, "tab\there", "bell\a"):
        code, _, err = cli(capsys, "breaker", "force-open", "payments", *base, "--reason", reason)
        assert code == 2 and "--reason must be printable" in err
    code, _, err = cli(capsys, "breaker", "disable", "payments", *base, "--actor", " ")
    assert code == 2 and "--actor must not be empty" in err
    code, _, err = cli(capsys, "breaker", "reset", "bad name", *base)
    assert code == 1 and "name must match" in err
    code, _, err = cli(capsys, "audit", *base, "--since", "yesterday")
    assert code == 2 and "--since" in err
    assert _state(redis_server, "payments", "bad") == {"state": "closed", "generation": "1"}
    assert _audit(redis_server, "bad") == []
    code, out, _ = cli(capsys, "breaker", "force-open", "newdep", *base, "--create", "--json")
    assert code == 0 and json.loads(out)["before"] is None
    assert _audit(redis_server, "bad")[0]["before"] == ""
    url = redis_server.url
    redis_server.stop()
    for args in (("breaker", "force-open", "payments"), ("audit",), ("status",)):
        code, _, err = cli(capsys, *args, "--redis", url, "--namespace", "bad")
        assert code == 3 and "unreachable" in err, args


def test_worker_processes_hold_it_across_a_restart(
    bare_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = start_workers(bare_redis.url, "procs", 2)
    base = ("--redis", bare_redis.url, "--namespace", "procs")
    try:
        for w in workers:
            assert w.ask(op="calls", name="dep", ok=1)["seen"] == ["ok"]
        end = time.monotonic() + BOUND
        while not _state(bare_redis, "dep", "procs") and time.monotonic() < end:
            time.sleep(0.02)
        assert cli(capsys, "breaker", "force-open", "dep", *base, "--reason", "INC-9")[0] == 0
        for w in workers:
            assert w.ask(op="wait", name="dep", state="forced_open", timeout=5.0)["seen"]
        bare_redis.kill()
        bare_redis.restart()
        for w in workers:
            assert w.ask(op="calls", name="dep", ok=1)["seen"] == ["rejected"]
        end = time.monotonic() + BOUND
        while _state(bare_redis, "dep", "procs").get("state") != "forced_open":
            assert time.monotonic() < end, "not written back"
            time.sleep(0.02)
        assert _state(bare_redis, "dep", "procs")["manual_reason"] == "INC-9"
        assert cli(capsys, "breaker", "reset", "dep", *base)[0] == 0
        for w in workers:
            assert w.ask(op="wait", name="dep", state="closed", timeout=5.0)["seen"]
            assert w.ask(op="calls", name="dep", ok=1)["seen"] == ["ok"]
    finally:
        for w in workers:
            w.stop()


async def test_the_dashboards_controls_are_token_protected_and_audited(
    fleet: list[Hub], bare_redis: RedisServer
) -> None:
    import aiohttp
    from aiohttp import web

    from resilient.dashboard import FleetMonitor, Token, create_app
    from resilient.dashboard._command import fleet_controls

    token = "t0ken-for-the-controls"
    monitor = FleetMonitor(bare_redis.url, "ops")
    app = create_app(monitor, token=Token(token), controls=fleet_controls(bare_redis.url, "ops"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    force = f"http://{host}:{port}/api/breakers/dep/force-open"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(force, json={"reason": "INC-5"}) as resp:
                assert resp.status == 401
            assert _audit(bare_redis) == [] and states(fleet) == {State.CLOSED}
            good = {"Authorization": f"Bearer {token}"}
            async with session.post(force, json={"reason": "INC-5"}, headers=good) as resp:
                assert resp.status == 200, await resp.text()
                row = (await resp.json())["breaker"]
            assert row["state"] == "forced_open" and row["manual_reason"] == "INC-5"
            await until(lambda: states(fleet) == {State.FORCED_OPEN})
            reset = f"http://{host}:{port}/api/breakers/dep/reset"
            async with session.post(reset, headers=good) as resp:
                assert resp.status == 200
            await until(lambda: states(fleet) == {State.CLOSED})
    finally:
        await runner.cleanup()
    entries = _audit(bare_redis)
    assert [(e["action"], e["reason"], e["before"], e["after"]) for e in entries] == [
        ("force-open", "INC-5", "closed", "forced_open"),
        ("reset", "", "forced_open", "closed"),
    ]
    assert all(e["actor"].startswith("dashboard@") and "127.0.0.1" in e["actor"] for e in entries)
