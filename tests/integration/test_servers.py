"""The harness runs real servers: data survives what it should, crashes are real.

Every fault here is a real signal to a real process, observed through the same
clients the library uses (redis-py, aetcd) and through etcdctl.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import aetcd
import aetcd.exceptions
import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilient.testing.servers import (
    EtcdServer,
    MissingBinaryError,
    RedisServer,
    ServerStartError,
)


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)


def test_redis_is_a_real_server_that_can_crash(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    assert pid is not None
    assert psutil.Process(pid).name().startswith("redis-server")
    with _client(redis_server) as client:
        client.set("k", "v")
        redis_server.kill()
        assert redis_server.pid is None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(redis.ConnectionError):
            client.get("k")


def test_redis_restart_keeps_data_from_the_aof_even_after_a_crash(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    with _client(redis_server) as client:
        client.set("k", "v")
        redis_server.kill()
        redis_server.restart(keep_data=True)
        assert redis_server.port == port
        assert client.get("k") == b"v"


def test_redis_restart_without_data_comes_back_empty(redis_server: RedisServer) -> None:
    with _client(redis_server) as client:
        client.set("k", "v")
        redis_server.restart(keep_data=False)
        assert client.get("k") is None
        assert client.dbsize() == 0


def test_redis_graceful_stop_then_start_keeps_data(redis_server: RedisServer) -> None:
    with _client(redis_server) as client:
        client.set("k", "v")
        redis_server.stop()
        assert redis_server.pid is None
        redis_server.start()
        assert client.get("k") == b"v"


def test_redis_password_is_required_and_never_shown() -> None:
    secret = 'p@ss word"\\'
    with RedisServer(password=secret) as server:
        assert secret not in repr(server)
        pid = server.pid
        assert pid is not None
        assert not any(secret in arg for arg in psutil.Process(pid).cmdline())
        with _client(server) as client:
            assert client.ping()
        # redis-py 8 retries with backoff by default, even a refused AUTH: 3 s wasted.
        no_retry = Retry(NoBackoff(), 0)
        anonymous = redis.Redis(
            host=server.host, port=server.port, socket_timeout=5, retry=no_retry
        )
        with anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()


def test_redis_command_stats_count_real_commands(redis_server: RedisServer) -> None:
    redis_server.reset_stats()
    with _client(redis_server) as client:
        for _ in range(3):
            client.get("missing")
    stats = redis_server.command_stats()
    assert stats["get"]["calls"] == 3
    assert "set" not in stats


def test_close_removes_the_process_and_the_directory() -> None:
    server = RedisServer()
    with server:
        pid = server.pid
        root = Path(server._root)
        assert root.is_dir()
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not root.exists()


def test_restart_on_a_taken_port_says_so(redis_server: RedisServer) -> None:
    redis_server.kill()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((redis_server.host, redis_server.port))
        squatter.listen()
        with pytest.raises(ServerStartError, match="already listens on its port"):
            redis_server.restart()
    assert redis_server.pid is None


def test_missing_binary_is_named() -> None:
    with pytest.raises(MissingBinaryError, match="no-such-redis-server"):
        RedisServer(binary="no-such-redis-server")
    with pytest.raises(MissingBinaryError, match="no-such-etcd"):
        EtcdServer(binary="no-such-etcd")


async def test_etcd_data_survives_restart_seen_by_aetcd_and_etcdctl(
    etcd_server: EtcdServer,
) -> None:
    async with aetcd.Client(etcd_server.host, etcd_server.port, timeout=5) as client:
        await client.put(b"/t/k", b"v1")
    data_dir, port = etcd_server.data_dir, etcd_server.port
    etcd_server.restart()
    assert (etcd_server.data_dir, etcd_server.port) == (data_dir, port)
    async with aetcd.Client(etcd_server.host, etcd_server.port, timeout=5) as client:
        got = await client.get(b"/t/k")
    assert got is not None
    assert got.value == b"v1"
    assert etcd_server.etcdctl("get", "/t/k", "--print-value-only").strip() == "v1"


async def test_etcd_kill_fails_the_client_and_restart_recovers(etcd_server: EtcdServer) -> None:
    etcd_server.etcdctl("put", "/t/k", "v2")
    async with aetcd.Client(etcd_server.host, etcd_server.port, timeout=5) as client:
        assert (await client.get(b"/t/k")) is not None
        etcd_server.kill()
        assert etcd_server.pid is None
        with pytest.raises(aetcd.exceptions.ConnectionFailedError):
            await client.get(b"/t/k")
    etcd_server.restart()
    assert etcd_server.etcdctl("get", "/t/k", "--print-value-only").strip() == "v2"


def test_etcdctl_failure_is_reported(etcd_server: EtcdServer) -> None:
    with pytest.raises(RuntimeError, match="etcdctl no-such-command failed"):
        etcd_server.etcdctl("no-such-command")


def test_session_servers_are_shared_and_running(
    redis_server_session: RedisServer, etcd_server_session: EtcdServer
) -> None:
    assert redis_server_session.running
    assert etcd_server_session.running
    with _client(redis_server_session) as client:
        assert client.ping()


def test_command_line_server_starts_and_stops_on_sigint() -> None:
    command = [sys.executable, "-m", "resilient.testing", "redis", "--password", "hush"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("ready: RedisServer(")
            assert "hush" not in line
            server_pid = int(line.rsplit("pid ", 1)[1].split(";")[0])
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
    assert not psutil.pid_exists(server_pid)
