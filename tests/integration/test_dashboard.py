"""The dashboard's server over a real redis-server, with real RedisStore breakers.

The dashboard runs as an aiohttp app on a free loopback port; breakers are
real ``RedisStore`` breakers in this process (the fleet's other processes
are in tests/integration/test_dashboard_browser.py and the fleet tests).
Every wait is bounded and generous: how fast the page follows a trip is
measured in bench/dashboard.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from resilient import CircuitOpenError, Hub
from resilient.dashboard import ConfigView, FleetMonitor, Token, create_app
from resilient.stores.redis import RedisStore
from resilient.testing.servers import EtcdServer, RedisServer

CONFIG = {"minimum_calls": 5, "open_duration": 30.0, "window_size": 10, "buckets": 10}
TOKEN = "s3cret-t0ken-for-tests"
BOUND = 15.0  # seconds any wait may take on a loaded box (a backstop)


class Boom(OSError):
    pass


async def boom() -> None:
    raise Boom("down")


async def fine() -> int:
    return 1


async def trip(hub: Hub, name: str) -> None:
    br = hub.breaker(name)
    for _ in range(CONFIG["minimum_calls"] + 1):
        with contextlib.suppress(Boom, CircuitOpenError):
            await br(boom)()


async def until(what: str, check: Callable[[], Awaitable[Any]]) -> Any:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {BOUND} s")


class Recorded:
    """A control seam that records what the dashboard asked for (the HTTP side's contract)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, str]] = []

    async def __call__(self, name: str, action: str, *, reason: str | None, actor: str) -> None:
        self.calls.append((name, action, reason, actor))


Served = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Served]:
    """Start a dashboard app for a monitor; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(monitor: FleetMonitor, **options: Any) -> str:
        runner = web.AppRunner(create_app(monitor, **options))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def hub(
    redis_server_session: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[Hub]:
    namespace = f"dash-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    store = RedisStore(redis_server_session.url, sync_interval=0.05)
    async with Hub(namespace, store=store, defaults=CONFIG) as h:
        yield h


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def shown(session: aiohttp.ClientSession, url: str) -> Any:
    """The JSON at ``url``, or None while it is a 404 (not polled yet)."""
    async with session.get(url) as response:
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        return await response.json()


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The ``update`` events of a stream, parsed."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


# ------------------------------------------------------------------ what it shows


async def test_a_fleet_trip_reaches_the_stream_with_its_transition(
    hub: Hub, redis_server_session: RedisServer, serve: Served
) -> None:
    await hub.breaker("search")(fine)()
    monitor = FleetMonitor(redis_server_session.url, hub.namespace)
    url = await serve(monitor)
    async with aiohttp.ClientSession() as session:

        async def search_counted() -> Any:
            doc = await get_json(session, f"{url}/api/breakers")
            rows = doc["breakers"]
            # its latency too (sent within a second): the row is then still
            return doc if rows and rows[0]["calls"] == 1 and rows[0]["p99"] else None

        doc = await until("search's call in the view", search_counted)
        assert doc["redis"]["up"] is True and doc["controls"] is False
        async with session.get(f"{url}/api/events", timeout=aiohttp.ClientTimeout(BOUND)) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            stream = events(resp)
            first = await anext(stream)
            assert first["full"] is True
            await trip(hub, "payments")
            async with asyncio.timeout(BOUND):
                async for update in stream:
                    # shown open at once from the channel, then why, from the poll
                    opened = [b for b in update["breakers"] if b["state"] == "open" and b["reason"]]
                    if opened:
                        break
            row = opened[0]
            assert row["name"] == "payments" and row["reason"] == "failure rate"
            assert row["retry_after"] > 0 and row["failure_rate"] == 1.0
            assert [h["state"] for h in row["history"]][-1] == "open"
            assert update["full"] is False
            assert all(b["name"] == "payments" for b in update["breakers"]), (
                update
            )  # only what changed
        doc = await get_json(session, f"{url}/api/breakers")
        assert [t["name"] for t in doc["transitions"]] == ["payments"]
        assert doc["transitions"][0]["state"] == "open"
        one = await get_json(session, f"{url}/api/breakers/payments")
        assert one["state"] == "open"


async def test_a_thousand_breakers(
    hub: Hub, redis_server_session: RedisServer, serve: Served
) -> None:
    names = [f"svc-{i:04d}" for i in range(1000)]
    for name in names:
        await hub.breaker(name)(fine)()
    monitor = FleetMonitor(redis_server_session.url, hub.namespace)
    url = await serve(monitor)
    async with aiohttp.ClientSession() as session:

        async def all_there() -> Any:
            doc = await get_json(session, f"{url}/api/breakers")
            return doc if len(doc["breakers"]) == 1000 else None

        doc = await until("1,000 breakers in the view", all_there)
        assert [b["name"] for b in doc["breakers"]] == names
        await trip(hub, "svc-0500")
        async with session.get(f"{url}/api/events") as resp:
            stream = events(resp)
            assert len((await anext(stream))["breakers"]) == 1000
            async with asyncio.timeout(BOUND):
                async for update in stream:
                    if any(b["state"] == "open" for b in update["breakers"]):
                        break
            # Later updates carry what changed, not the thousand.
            assert {b["name"] for b in update["breakers"]} == {"svc-0500"}


async def test_redis_down_keeps_the_last_states_marked_stale(serve: Served) -> None:
    with RedisServer() as redis_server:
        store = RedisStore(redis_server.url, sync_interval=0.05)
        async with Hub("dash-down", store=store, defaults=CONFIG) as h:
            await trip(h, "payments")
            monitor = FleetMonitor(redis_server.url, "dash-down", interval=0.1)
            url = await serve(monitor, token=Token(TOKEN), controls=Recorded())
            async with aiohttp.ClientSession() as session:
                await until(
                    "payments shown",
                    lambda: shown(session, f"{url}/api/breakers/payments"),
                )
                redis_server.kill()

                async def down() -> Any:
                    doc = await get_json(session, f"{url}/api/breakers")
                    return doc if doc["redis"]["up"] is False else None

                doc = await until("Redis reported down", down)
                assert "ConnectionError" in doc["redis"]["error"]
                assert [(b["name"], b["state"], b["stale"]) for b in doc["breakers"]] == [
                    ("payments", "open", True)
                ]
                async with session.post(
                    f"{url}/api/breakers/payments/force-open",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert resp.status == 503
                    assert "unreachable" in (await resp.json())["error"]
                redis_server.start()

                async def up() -> Any:
                    doc = await get_json(session, f"{url}/api/breakers")
                    return doc["redis"]["up"] and not doc["breakers"][0]["stale"]

                await until("Redis back", up)


async def test_the_etcd_config_in_force_and_what_was_rejected(
    hub: Hub,
    redis_server_session: RedisServer,
    etcd_server_session: EtcdServer,
    serve: Served,
) -> None:
    from resilient.config.etcd import EtcdSource

    prefix = f"/dash/{hub.namespace}"
    etcd = etcd_server_session
    etcd.etcdctl("put", f"{prefix}/defaults", json.dumps({"failure_rate_threshold": 0.4}))
    etcd.etcdctl("put", f"{prefix}/breakers/payments", json.dumps({"open_duration": 5}))
    await hub.breaker("payments")(fine)()
    config = ConfigView(EtcdSource(etcd.endpoint, prefix))
    monitor = FleetMonitor(redis_server_session.url, hub.namespace, config=config)
    url = await serve(monitor)
    async with aiohttp.ClientSession() as session:

        async def loaded() -> Any:
            doc = await get_json(session, f"{url}/api/breakers")
            return doc if doc["config"]["revision"] and doc["breakers"] else None

        doc = await until("the config loaded", loaded)
        revision = doc["config"]["revision"]
        assert doc["config"]["prefix"] == prefix and doc["config"]["rejected"] == []
        fields = doc["breakers"][0]["config"]
        assert fields["fields"] == {"failure_rate_threshold": 0.4, "open_duration": 5}
        assert fields["own"] == ["open_duration"]
        etcd.etcdctl("put", f"{prefix}/breakers/search", "not json")
        etcd.etcdctl("put", f"{prefix}/breakers/payments", json.dumps({"open_duration": -1}))

        async def rejected() -> Any:
            doc = await get_json(session, f"{url}/api/breakers")
            return doc if len(doc["config"]["rejected"]) == 2 else None

        doc = await until("two rejections", rejected)
        assert doc["config"]["revision"] == revision + 2
        keys = sorted(r["key"] for r in doc["config"]["rejected"])
        assert keys[0].endswith("breakers/payments") and keys[1].endswith("breakers/search")
        assert "open_duration" in doc["breakers"][0]["config"]["refused"]


# ------------------------------------------------------------------ controls and bad input


async def test_controls_need_the_token(
    hub: Hub, redis_server_session: RedisServer, serve: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await hub.breaker("payments")(fine)()
    controls = Recorded()
    token = Token(TOKEN)
    assert TOKEN not in repr(token) and TOKEN not in str(token)
    url = await serve(
        FleetMonitor(redis_server_session.url, hub.namespace), token=token, controls=controls
    )
    read_only = await serve(FleetMonitor(redis_server_session.url, hub.namespace))
    force = f"{url}/api/breakers/payments/force-open"
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        await until("payments shown", lambda: shown(session, f"{url}/api/breakers/payments"))
        wrong = ["Bearer wrong", TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer"]
        for headers in [{}, *({"Authorization": w} for w in wrong)]:
            async with session.post(force, headers=headers) as resp:
                assert resp.status == 401, headers
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.post(f"{read_only}/api/breakers/payments/force-open", headers=good) as r:
            assert r.status == 403 and "read-only" in (await r.json())["error"]
        assert controls.calls == []
        cases = [
            ("/api/breakers/nope/force-open", None, 404, "no breaker 'nope'"),
            ("/api/breakers/bad%20name/reset", None, 400, "name must match"),
            ("/api/breakers/payments/explode", None, 404, "unknown action"),
            ("/api/breakers/payments/disable", b"{not json", 400, "must be JSON"),
            ("/api/breakers/payments/disable", b'["x"]', 400, "JSON object"),
            ("/api/breakers/payments/disable", b'{"reason": 5}', 400, "printable text"),
            ("/api/breakers/payments/disable", b'{"reason": "a\\u0000b"}', 400, "printable"),
            ("/api/breakers/payments/disable", b'{"reason": "%s"}' % (b"x" * 201), 400, "200"),
            ("/api/breakers/payments/disable", b'{"why": "x"}', 400, "JSON object"),
            ("/api/breakers/payments/disable", b"x" * 5000, 413, ""),
        ]  # fmt: skip
        for path, body, status, message in cases:
            async with session.post(f"{url}{path}", data=body, headers=good) as resp:
                assert resp.status == status, (path, body, await resp.text())
                if message:
                    assert message in (await resp.json())["error"], path
        assert controls.calls == []
        async with session.post(force, json={"reason": "incident 42"}, headers=good) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["breaker"]["name"] == "payments"
        async with session.post(f"{url}/api/breakers/payments/reset", headers=good) as resp:
            assert resp.status == 200
    assert [(n, a, r) for n, a, r, _ in controls.calls] == [
        ("payments", "force-open", "incident 42"),
        ("payments", "reset", None),
    ]
    assert controls.calls[0][3].startswith("dashboard@")
    assert TOKEN not in caplog.text


async def test_misbehaving_stream_clients(
    hub: Hub, redis_server_session: RedisServer, serve: Served
) -> None:
    await hub.breaker("search")(fine)()
    monitor = FleetMonitor(redis_server_session.url, hub.namespace)
    url = await serve(monitor)
    host, port = url.removeprefix("http://").split(":")
    # Clients that hang up at once, mid-headers, or after the first event.
    for request in (
        b"",
        b"GET /api/events HTTP/1.1\r\nHost: x\r\n",
        b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        if request.endswith(b"\r\n\r\n"):
            await reader.readuntil(b"event: update")
        writer.close()
        await writer.wait_closed()
    async with aiohttp.ClientSession() as session:

        async def search_counted() -> Any:
            row = await shown(session, f"{url}/api/breakers/search")
            return row is not None and row["calls"] == 1 and row["p99"] is not None

        await until("search's call shown", search_counted)
        # A Last-Event-ID of nonsense (or from another run) gets the whole view.
        for last in ("garbage", "other.5", f"{monitor.run}.999999", f"{monitor.run}.-1"):
            async with session.get(f"{url}/api/events", headers={"Last-Event-ID": last}) as resp:
                assert (await anext(events(resp)))["full"] is True
        # One that saw this run's version gets only what came after.
        async with session.get(f"{url}/api/events") as resp:
            first = await anext(events(resp))
        await trip(hub, "payments")
        headers = {"Last-Event-ID": f"{monitor.run}.{first['version']}"}
        async with session.get(f"{url}/api/events", headers=headers) as resp:
            update = await anext(events(resp))
            if not update["breakers"]:  # the trip not yet polled: the next event has it
                update = await anext(events(resp))
            assert update["full"] is False
            assert {b["name"] for b in update["breakers"]} == {"payments"}
        # The server is still well.
        assert monitor.version >= 1
        doc = await get_json(session, f"{url}/api/breakers")
        assert {b["name"] for b in doc["breakers"]} == {"search", "payments"}


async def test_the_page_and_its_assets(
    hub: Hub, redis_server_session: RedisServer, serve: Served
) -> None:
    url = await serve(FleetMonitor(redis_server_session.url, hub.namespace))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/") as resp:
            page = await resp.text()
            assert (
                resp.status == 200
                and "default-src 'self'" in resp.headers["Content-Security-Policy"]
            )
        assert "/static/dashboard.js" in page and "/static/dashboard.css" in page
        for asset in ("dashboard.js", "dashboard.css"):
            async with session.get(f"{url}/static/{asset}") as resp:
                assert resp.status == 200
        async with session.get(f"{url}/static/../_app.py") as resp:
            assert resp.status in (403, 404)
        async with session.get(f"{url}/api/breakers/nope") as resp:
            assert resp.status == 404


# ------------------------------------------------------------------ the command's refusals


def test_the_command_refuses_bad_options_before_serving(
    redis_server_session: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from resilient.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(["dashboard", "--port", "0", *args])
        return code, capsys.readouterr().err

    code, err = run("--redis", "redis://:hunter22@127.0.0.1:1/0")
    assert code == 3 and "unreachable" in err and "hunter22" not in err
    code, err = run("--redis", redis_server_session.url, "--token", "short")
    assert code == 2 and "at least 8 characters" in err and "short" not in err
    code, err = run("--redis", redis_server_session.url, "--namespace", "bad name")
    assert code == 1 and "namespace must match" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code = main(["dashboard", "--redis", redis_server_session.url, "--port", port])
    assert code == 2 and "is in use" in capsys.readouterr().err


async def test_live_viewers_are_bounded(
    hub: Hub, redis_server_session: RedisServer, serve: Served
) -> None:
    await hub.breaker("search")(fine)()
    url = await serve(FleetMonitor(redis_server_session.url, hub.namespace), max_viewers=1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/events") as first:
            await anext(events(first))
            async with session.get(f"{url}/api/events") as second:
                assert second.status == 503
                assert "at most 1 live viewers" in (await second.json())["error"]

        # The first one gone, the next is served.
        async def served() -> bool:
            async with session.get(f"{url}/api/events") as again:
                return again.status == 200

        assert await until("a free viewer slot", served)
