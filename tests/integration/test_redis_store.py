"""RedisStore against a real redis-server, with several hubs in one process.

Each hub has its own store and connections, as a process of a fleet would;
tests/integration/test_redis_fleet.py does the same with real processes.
Waits are bounded polls (never sleeps standing in for timing logic); the
bounds are generous, the measured figures are in bench/redis_store.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import port_for  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis

from resilient import CircuitBreaker, CircuitOpenError, Hub, State
from resilient.stores import _lua
from resilient.stores.redis import RedisStore
from resilient.testing.certs import Certificates, make_certificates
from resilient.testing.servers import MissingBinaryError, RedisServer

CONFIG = {"minimum_calls": 4, "open_duration": 1.0, "window_size": 5, "buckets": 5}
BOUND = 2.0  # seconds: generous for a loaded CI box; the real figures are milliseconds


class Boom(OSError):
    pass


def fail() -> str:
    raise Boom("down")


def ok() -> str:
    return "ok"


def run(br: CircuitBreaker, fn: Callable[[], str], times: int = 1) -> list[str]:
    """Call ``fn`` through ``br``; what happened to each call, by name."""
    seen = []
    for _ in range(times):
        try:
            br(fn)()
            seen.append("ok")
        except Boom:
            seen.append("failed")
        except CircuitOpenError:
            seen.append("rejected")
    return seen


async def until(check: Callable[[], bool], bound: float = BOUND) -> float:
    """Poll ``check`` until true; the seconds it took (fails the test past ``bound``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > bound:
            raise AssertionError(f"not true within {bound} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


def state_hash(server: RedisServer, namespace: str, name: str) -> dict[str, str]:
    keys = _lua.keys_for(namespace, name)
    with server.client(decode_responses=True) as client:
        found: dict[str, str] = client.hgetall(keys.state)
    return found


@pytest.fixture
async def hubs(redis_server_session: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Make started hubs on the session's Redis (a fresh namespace per test); closed after."""
    made: list[Hub] = []
    namespace = f"t{time.monotonic_ns()}"

    async def make(**store_options: Any) -> Hub:
        store = RedisStore(redis_server_session.url, **store_options)
        hub = Hub(namespace, store=store, defaults=CONFIG)
        await hub.start()
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.close()


# ------------------------------------------------------------------ sharing


def window_calls(server: RedisServer, namespace: str, name: str) -> int:
    keys = _lua.keys_for(namespace, name)
    with server.client(decode_responses=True) as client:
        return sum(int(v) for v in client.hgetall(keys.window).values())


async def test_the_fleet_window_trips_every_hub(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a = await hubs()
    ba = a.breaker("dep")
    assert run(ba, fail, 3) == ["failed"] * 3  # 3 < minimum_calls: nobody opens alone
    await until(lambda: window_calls(redis_server_session, a.namespace, "dep") == 3)
    b = await hubs()  # it starts with the fleet's window: 3 calls, 3 failed
    bb = b.breaker("dep")
    assert run(bb, fail) == ["failed"]  # the fleet's 4th failure: a fleet trip, at once
    assert bb.state is State.OPEN
    took = await until(lambda: ba.state is State.OPEN)
    assert took < BOUND
    assert run(ba, ok) == ["rejected"]
    assert ba.snapshot().open_until == pytest.approx(bb.snapshot().open_until, abs=0.05)


async def test_a_hub_started_later_starts_in_the_fleets_state(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a = await hubs()
    ba = a.breaker("dep")
    ba.update_config(ba.config.__class__(**{**CONFIG, "open_duration": 30.0}))
    run(ba, fail, 2)
    await asyncio.sleep(0.25)  # a flush
    b = await hubs()
    bb = b.breaker("dep")
    run(bb, fail, 2)  # the fleet trips with 30 s to run
    await until(lambda: ba.state is State.OPEN)
    stored = float(state_hash(redis_server_session, a.namespace, "dep")["open_until"])
    c = await hubs()  # started after the trip; its breaker made after start
    bc = c.breaker("dep")
    assert bc.state is State.OPEN
    assert bc.snapshot().open_until == pytest.approx(stored, abs=0.05)
    assert run(bc, ok) == ["rejected"]


async def test_a_breaker_made_before_start_gets_the_fleets_state(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a = await hubs()
    a.breaker("dep").force_open()
    await until(
        lambda: state_hash(redis_server_session, a.namespace, "dep").get("state") == "forced_open"
    )
    hub = Hub(a.namespace, store=RedisStore(redis_server_session.url), defaults=CONFIG)
    early = hub.breaker("dep")
    assert early.state is State.CLOSED
    async with hub:
        assert early.snapshot().state is State.FORCED_OPEN


async def test_manual_states_apply_fleet_wide_and_persist(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a, b = await hubs(), await hubs()
    ba, bb = a.breaker("dep"), b.breaker("dep")
    ba.force_open()
    await until(lambda: bb.state is State.FORCED_OPEN)
    with redis_server_session.client() as client:
        assert client.pttl(_lua.keys_for(a.namespace, "dep").state) == -1  # no expiry
    bb.reset()
    await until(lambda: ba.state is State.CLOSED)
    ba.disable()
    await until(lambda: bb.state is State.DISABLED)
    assert run(bb, fail, 10) == ["failed"] * 10  # DISABLED: never opens
    bb.reset()
    await until(lambda: ba.state is State.CLOSED)
    with redis_server_session.client() as client:
        assert client.pttl(_lua.keys_for(a.namespace, "dep").state) > 0


async def test_a_local_fault_opens_one_hub_and_is_not_published(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a, b = await hubs(), await hubs()
    ba, bb = a.breaker("dep"), b.breaker("dep")
    run(bb, ok, 40)  # the fleet is healthy
    await until(lambda: window_calls(redis_server_session, a.namespace, "dep") == 40)
    assert run(ba, fail, 5)[:4] == ["failed"] * 4  # our own 4 of 4 failed: open here
    assert ba.state is State.OPEN
    await asyncio.sleep(0.3)  # three sync intervals: time enough to spread, if it did
    assert bb.state is State.CLOSED
    assert state_hash(redis_server_session, a.namespace, "dep")["state"] == "closed"


async def test_a_woken_flush_sends_only_the_breaker_that_asked(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    """A fleet transition is written at once; the other breakers' news keeps its interval."""
    hub = await hubs(sync_interval=3.0)
    long_window = {**CONFIG, "window_size": 60, "buckets": 6}  # no count ages out here
    quiet = hub.breaker("quiet", defaults=long_window)
    trips = hub.breaker("trips")
    ns = hub.namespace
    for seen in (1, 2):  # the second is a whole flush, well after the start's own
        run(quiet, ok)
        await until(
            lambda n=seen: window_calls(redis_server_session, ns, "quiet") == n,
            bound=10.0,
        )
    # A whole flush has just run: the next is about 3 s away.
    run(quiet, ok, 2)
    assert run(trips, fail, 4) == ["failed"] * 4  # the combined window crosses: written now
    await until(lambda: state_hash(redis_server_session, ns, "trips").get("state") == "open")
    assert window_calls(redis_server_session, ns, "quiet") == 2  # not sent with it
    await until(lambda: window_calls(redis_server_session, ns, "quiet") == 4, bound=10.0)


async def test_commands_are_bounded_by_the_sync_interval(
    redis_server: RedisServer,
) -> None:
    async with Hub("bounded", store=RedisStore(redis_server.url), defaults=CONFIG) as hub:
        breakers = [hub.breaker(f"dep{i}") for i in range(3)]
        await asyncio.sleep(0.3)  # the first reads
        redis_server.reset_stats()
        start = time.monotonic()
        calls = 0
        while time.monotonic() - start < 1.0:
            for br in breakers:
                run(br, ok, 50)
                calls += 50
            await asyncio.sleep(0)
        elapsed = time.monotonic() - start
        stats = redis_server.command_stats()
    evalsha = stats.get("evalsha", {}).get("calls", 0.0)
    # at most one per breaker per interval (+1 each for a flush at either edge)
    assert evalsha <= len(breakers) * (elapsed / 0.1 + 2)
    assert evalsha >= len(breakers) * 3  # and it did sync
    assert calls > 10 * evalsha


# ------------------------------------------------------------------ faults


async def test_an_unreachable_redis_at_start_costs_callers_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = port_for.select_random()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="resilient.redis"):
        async with Hub("down", store=store, defaults=CONFIG) as hub:
            assert time.monotonic() - start < 1.0
            assert run(hub.breaker("other"), ok, 3) == ["ok"] * 3
            br = hub.breaker("dep")
            assert run(br, fail, 4) == ["failed"] * 4
            assert run(br, ok) == ["rejected"]  # local breaking still works
            await until(lambda: br.snapshot().degraded)
            await asyncio.sleep(1.2)  # several reconnect attempts
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1


async def test_redis_killed_and_restarted_empty(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    a = Hub("kill", store=RedisStore(redis_server.url), defaults=CONFIG)
    b = Hub("kill", store=RedisStore(redis_server.url), defaults=CONFIG)
    async with a, b:
        ba, bb = a.breaker("dep"), b.breaker("dep")
        errors: list[BaseException] = []

        async def load(br: CircuitBreaker, stop: asyncio.Event) -> None:
            while not stop.is_set():
                try:
                    br(ok)()
                except CircuitOpenError:
                    pass
                except BaseException as exc:  # anything else is a caller error
                    errors.append(exc)
                await asyncio.sleep(0.001)

        stop = asyncio.Event()
        tasks = [asyncio.create_task(load(br, stop)) for br in (ba, bb)]
        await asyncio.sleep(0.3)
        redis_server.kill()
        await until(lambda: ba.snapshot().degraded and bb.snapshot().degraded)
        await asyncio.sleep(0.5)
        redis_server.restart(keep_data=False)
        back = await until(lambda: not ba.snapshot().degraded and not bb.snapshot().degraded)
        assert back < 1.5  # re-synced within a second or so of Redis returning
        await until(lambda: bool(state_hash(redis_server, "kill", "dep")))
        stop.set()
        await asyncio.gather(*tasks)
        assert errors == []
        # converged: both hubs share the fleet's state again
        ba.force_open()
        await until(lambda: bb.state is State.FORCED_OPEN)
        bb.reset()
        await until(lambda: ba.state is State.CLOSED)
    outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outages) == 2  # once per store (two hubs here), whichever part noticed first
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_a_late_failure_of_an_ended_outage_is_not_a_new_one(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener's subscription, begun before the store came back, fails only now
    (a busy loop notices late): the outage it belongs to was logged and has ended."""
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    store = RedisStore(redis_server.url)

    def subscribers(client: redis.Redis) -> int:
        return len(client.client_list(_type="pubsub"))

    async with Hub("late", store=store, defaults=CONFIG) as hub:
        br = hub.breaker("dep")
        with redis_server.client() as client:
            await until(lambda: subscribers(client) == 1)
            # An outage that ended after this subscription began, as the flush loop saw it.
            store._went_down(ConnectionError("gone"))
            store._came_back()
            client.client_kill_filter(_type="pubsub")  # the subscription fails only now
            await until(lambda: subscribers(client) == 1)  # subscribed again
        outages = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outages) == 1  # the recorded one: no new outage
        assert not br.snapshot().degraded
        async with Hub("late", store=RedisStore(redis_server.url), defaults=CONFIG) as other:
            other.breaker("dep").force_open()
            await until(lambda: br.state is State.FORCED_OPEN)  # published, and heard


async def test_scripts_flushed_from_redis_are_loaded_again(redis_server: RedisServer) -> None:
    async with Hub("noscript", store=RedisStore(redis_server.url), defaults=CONFIG) as hub:
        br = hub.breaker("dep")
        await asyncio.sleep(0.2)
        with redis_server.client() as client:
            client.script_flush()
        run(br, fail, 4)
        await until(lambda: state_hash(redis_server, "noscript", "dep").get("state") == "open")
        assert not br.snapshot().degraded


async def test_malformed_messages_are_ignored(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    import pickle

    a = await hubs()
    br = a.breaker("dep")
    channel = _lua.keys_for(a.namespace, "dep").channel
    bad = [
        pickle.dumps({"state": "open"}),
        b"{not json",
        json.dumps({"state": "open", "open_until": 1e18, "now": 0}).encode(),  # fields missing
        json.dumps({"state": "forced_open"}).encode(),
    ]
    with redis_server_session.client() as client:
        await asyncio.sleep(0.2)  # subscribed
        for data in bad:
            client.publish(channel, data)
    await asyncio.sleep(0.2)
    assert br.state is State.CLOSED
    assert run(br, ok) == ["ok"]


async def test_a_late_view_never_undoes_a_newer_one(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    """A reply and a message cross on two connections: the older one (by generation and
    Redis time) is dropped, whichever arrives last."""
    a = await hubs()
    br = a.breaker("dep")
    br.force_open()
    await until(
        lambda: state_hash(redis_server_session, a.namespace, "dep").get("state") == "forced_open"
    )
    await asyncio.sleep(0.2)  # the reply is in
    stored = state_hash(redis_server_session, a.namespace, "dep")
    generation, at = int(stored["generation"]), float(stored["changed_at"])
    channel = _lua.keys_for(a.namespace, "dep").channel

    def message(state: str, generation: int, now: float) -> str:
        return json.dumps({
            "state": state, "open_until": None, "now": now, "trips": 0,
            "generation": generation, "calls": 0, "failures": 0, "slow": 0, "tokens": 0,
        })  # fmt: skip

    with redis_server_session.client() as client:
        client.publish(channel, message("closed", generation - 1, at - 0.01))
        await asyncio.sleep(0.2)
        assert br.state is State.FORCED_OPEN
        client.publish(channel, message("disabled", generation + 1, at + 0.01))
        await until(lambda: br.state is State.DISABLED)


async def test_keys_expire(hubs: Callable[..., Any], redis_server_session: RedisServer) -> None:
    a = await hubs()
    br = a.breaker("dep")
    run(br, fail, 1)
    keys = _lua.keys_for(a.namespace, "dep")
    with redis_server_session.client() as client:
        await until(lambda: client.exists(keys.window) == 1)
        assert 0 < client.pttl(keys.state) <= (2 * 60 + 60) * 1000
        assert 0 < client.pttl(keys.window) <= (2 * 60 + 60) * 1000


async def test_a_sync_hub_shares_state_from_a_thread(redis_server_session: RedisServer) -> None:
    namespace = f"sync{time.monotonic_ns()}"
    with Hub(namespace, store=RedisStore(redis_server_session.url), defaults=CONFIG) as a:
        async with Hub(namespace, store=RedisStore(redis_server_session.url), defaults=CONFIG) as b:
            a.breaker("dep").force_open()
            await until(lambda: b.breaker("dep").state is State.FORCED_OPEN)


# ------------------------------------------------------------------ secrets and TLS


PASSWORD = "s3cr:t/p@ss w0rd"


@pytest.fixture
def redis_with_password() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


async def test_auth_works_and_the_password_never_shows(
    redis_with_password: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilient")
    store = RedisStore(redis_with_password.url)
    assert "p@ss" not in repr(store) and "s3cr" not in repr(store)
    async with Hub("auth", store=store, defaults=CONFIG) as hub:
        br = hub.breaker("dep")
        run(br, fail, 4)
        await until(lambda: state_hash(redis_with_password, "auth", "dep").get("state") == "open")
        assert "s3cr" not in repr(store)
    wrong = redis_with_password.url.replace("s3cr", "nope")
    start = time.monotonic()
    async with Hub("auth", store=RedisStore(wrong), defaults=CONFIG) as hub:
        assert time.monotonic() - start < 1.0
        assert run(hub.breaker("dep"), ok) == ["ok"]
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "s3cr" not in text and "nope" not in text
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_reprs_and_errors_leave_secrets_out() -> None:
    store = RedisStore("redis://user:hunter22@10.0.0.1:6380/2?password=hunter33")
    assert repr(store).startswith("RedisStore('redis://***@10.0.0.1:6380/2'")
    assert "hunter" not in repr(store)
    with pytest.raises(ValueError, match="redis://, rediss://") as info:
        RedisStore("http://user:hunter22@host/")
    assert "hunter" not in str(info.value)
    with pytest.raises(ValueError, match="sync_interval"):
        RedisStore("redis://h", sync_interval=0)
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://h", timeout=math_inf())
    with pytest.raises(ValueError, match="namespace"):
        RedisStore("redis://h", namespace="a b")
    with pytest.raises(ValueError, match="url_or_client"):
        RedisStore(42)  # type: ignore[arg-type]


def math_inf() -> float:
    return float("inf")


@pytest.fixture
def tls_redis(tls_certs: Certificates) -> Iterator[RedisServer]:
    """A redis-server speaking TLS only, with the suite's strict-conformant certificates."""
    with RedisServer(tls=tls_certs) as server:
        yield server


# Strict X.509 verification on every Python: what 3.13 does by default, asked for on 3.11/3.12.
STRICT = {"ssl_include_verify_flags": [ssl.VERIFY_X509_STRICT]}
STRICT_BY_DEFAULT = bool(ssl.create_default_context().verify_flags & ssl.VERIFY_X509_STRICT)


async def test_rediss_works(tls_redis: RedisServer, tls_certs: Certificates) -> None:
    url, ca = tls_redis.url, str(tls_certs.ca)
    assert url.startswith("rediss://")
    store = RedisStore(url, ssl_ca_certs=ca)
    other = RedisStore(url, ssl_ca_certs=ca, **STRICT)
    async with Hub("tls", store=store, defaults=CONFIG) as a, Hub("tls", store=other) as b:
        a.breaker("dep").force_open()
        await until(lambda: b.breaker("dep").state is State.FORCED_OPEN)
        assert not a.breaker("dep").snapshot().degraded
        assert not b.breaker("dep").snapshot().degraded
    with tls_redis.client() as client:
        assert client.ping()
    # The name in the certificate, checked by name (redis-py checks it for rediss:// URLs).
    by_name = redis.Redis(host="localhost", port=tls_redis.port, ssl=True, ssl_ca_certs=ca,
                          ssl_check_hostname=True, **STRICT)  # fmt: skip
    with by_name:
        assert by_name.ping()


@pytest.fixture
def redis_with_a_ca_without_key_usage(tmp_path: Path) -> Iterator[RedisServer]:
    """TLS Redis whose CA lacks key usage: what ``openssl req -x509`` makes by default."""
    try:
        certs = make_certificates(tmp_path, ca_key_usage=False)
    except MissingBinaryError as exc:
        pytest.skip(str(exc))
    with RedisServer(tls=certs) as server:
        yield server


@pytest.mark.parametrize(
    "strict",
    [
        pytest.param(
            {},
            id="default-verification",
            marks=pytest.mark.skipif(
                not STRICT_BY_DEFAULT,
                reason="this Python's default TLS context does not set VERIFY_X509_STRICT "
                "(Python 3.13+ does); the forced-strict case covers the message here",
            ),
        ),
        pytest.param(STRICT, id="forced-strict"),
    ],
)
async def test_a_ca_without_key_usage_is_named_in_the_warning(
    redis_with_a_ca_without_key_usage: RedisServer,
    caplog: pytest.LogCaptureFixture,
    strict: dict[str, Any],
) -> None:
    server = redis_with_a_ca_without_key_usage
    assert server.tls is not None
    caplog.set_level(logging.WARNING, logger="resilient")
    store = RedisStore(server.url, ssl_ca_certs=str(server.tls.ca), **strict)
    async with Hub("tls-no-ku", store=store, defaults=CONFIG) as hub:
        assert run(hub.breaker("dep"), ok) == ["ok"]  # local breaking, no error
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "CA cert does not include key usage extension" in warnings[0]  # OpenSSL's words
    assert "likely cause: the CA certificate has no key usage extension" in warnings[0]
    assert "Python 3.13" in warnings[0] and "keyCertSign" in warnings[0]


async def test_other_tls_failures_get_no_key_usage_hint(
    tls_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        stranger = make_certificates(tmp_path)  # a CA that did not sign the server's cert
    except MissingBinaryError as exc:
        pytest.skip(str(exc))
    caplog.set_level(logging.WARNING, logger="resilient")
    store = RedisStore(tls_redis.url, ssl_ca_certs=str(stranger.ca), **STRICT)
    async with Hub("tls-stranger", store=store, defaults=CONFIG):
        pass
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "certificate verify failed" in warnings[0]
    assert "key usage" not in warnings[0]


# ------------------------------------------------------------------ resilient status


def status_cli(*args: str) -> Any:
    import typer
    from typer.testing import CliRunner

    from resilient.cli.status import status

    app = typer.Typer()
    app.command()(status)
    return CliRunner().invoke(app, list(args), env={})


async def test_status_shows_the_fleet(
    hubs: Callable[..., Any], redis_server_session: RedisServer
) -> None:
    a = await hubs()
    run(a.breaker("dep"), fail, 4)
    run(a.breaker("fine"), ok, 2)
    a.breaker("manual").force_open()
    await until(lambda: len(state_hash(redis_server_session, a.namespace, "fine")) > 0)
    await until(lambda: state_hash(redis_server_session, a.namespace, "dep").get("state") == "open")
    url = redis_server_session.url
    result = await asyncio.to_thread(
        status_cli, "--redis", url, "--namespace", a.namespace, "--json"
    )
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["breakers"]}
    assert set(rows) >= {"dep", "fine", "manual"}
    assert rows["dep"]["state"] == "open" and rows["dep"]["failures"] == 4
    assert 0 < rows["dep"]["retry_after"] <= 1.1  # open_duration, jitter included
    assert rows["fine"]["state"] == "closed" and rows["fine"]["calls"] == 2
    assert rows["manual"]["state"] == "forced_open" and rows["manual"]["reason"] == "manual"
    text = await asyncio.to_thread(status_cli, "--redis", url, "--namespace", a.namespace, "dep")
    assert text.exit_code == 0
    assert text.output.splitlines()[0].split()[:3] == ["NAME", "STATE", "CALLS"]
    assert text.output.splitlines()[1].split()[:3] == ["dep", "open", "4"]


def test_status_exit_codes_and_no_password(redis_with_password: RedisServer) -> None:
    wrong = redis_with_password.url.replace("s3cr", "nope")
    refused = status_cli("--redis", wrong)
    assert refused.exit_code == 3
    assert "nope" not in refused.output and "s3cr" not in refused.output
    port = port_for.select_random()
    assert status_cli("--redis", f"redis://:pw@127.0.0.1:{port}/0").exit_code == 3
    assert status_cli("--redis", redis_with_password.url, "--namespace", "a b").exit_code == 1
    empty = status_cli("--redis", redis_with_password.url, "--namespace", "nothing")
    assert empty.exit_code == 0 and "no breaker state" in empty.output
    assert "s3cr" not in empty.output


# ------------------------------------------------------------------ Redis Cluster


def _free_cluster_port(taken: set[int]) -> int:
    """A port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = int(port_for.select_random(ports=set(range(20000, 40000)) - taken))
        if port_for.is_available(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """A real three-primary Redis Cluster on loopback; the ports of its nodes."""
    import redis

    ports: list[int] = []
    for _ in range(3):
        ports.append(_free_cluster_port(set(ports)))

    def node(port: int) -> subprocess.Popen[bytes]:
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )

    procs = [node(p) for p in ports]
    try:
        for p in ports:
            _wait_for_port(p)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        for p in ports:
            with redis.Redis(port=p) as member:
                end = time.monotonic() + 20
                while member.cluster("info").get("cluster_state") != "ok":
                    assert time.monotonic() < end, "the cluster never became ok"
                    time.sleep(0.05)
        yield ports
    finally:
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)


def _wait_for_port(port: int) -> None:
    import socket

    end = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < end, f"nothing listens on {port}"
            time.sleep(0.02)


async def test_a_redis_cluster_works_like_one_node(redis_cluster: list[int]) -> None:
    from redis.asyncio.cluster import RedisCluster
    from redis.crc import key_slot

    def cluster(port: int) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=port, socket_timeout=0.25)

    names = [f"dep{i}" for i in range(8)]
    clients = [cluster(p) for p in redis_cluster]
    try:
        a = Hub("cl", store=RedisStore(clients[0]), defaults=CONFIG)
        b = Hub("cl", store=RedisStore(clients[1]), defaults=CONFIG)
        async with a, b:
            await clients[0].initialize()
            owners = {
                str(clients[0].get_node_from_key(_lua.keys_for("cl", n).state)) for n in names
            }
            assert len(owners) >= 2  # the breakers really live on different nodes
            for n in names:
                keys = _lua.keys_for("cl", n)
                assert key_slot(keys.state.encode()) == key_slot(keys.window.encode())
                run(a.breaker(n), fail, 4)
            await until(lambda: all(b.breaker(n).state is State.OPEN for n in names))
            b.breaker("dep0").force_open()
            await until(lambda: a.breaker("dep0").state is State.FORCED_OPEN)
            async with Hub("cl", store=RedisStore(clients[2]), defaults=CONFIG) as late:
                assert late.breaker("dep0").state is State.FORCED_OPEN
                assert all(late.breaker(n).state is State.OPEN for n in names[1:])
                assert "cluster" in repr(late.store)
    finally:
        for c in clients:
            await c.aclose()
