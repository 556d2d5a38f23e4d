"""Fixtures shared by the whole suite, all built on `resilient.testing`.

Servers are real processes on free loopback ports. The function-scoped ones are
the test's to kill and restart; the ``*_session`` ones are shared, so a test
that uses them must leave them running. An autouse guard fails any test that
leaves a child process of ours behind (and ends those processes, by PID).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from resilient.testing.certs import Certificates, make_certificates
from resilient.testing.clusters import EtcdCluster, RedisCluster
from resilient.testing.servers import EtcdServer, MissingBinaryError, RedisServer

# gRPC's fork handlers can crash the children mirakuru forks (with preexec_fn) to run
# etcd while gRPC threads are busy; the suite forks no gRPC users.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if TYPE_CHECKING:
    from resilient.testing.upstream import Upstream

_MARKERS = {
    "redis": ("redis_server", "redis_server_session", "redis_cluster", "redis_cluster_session"),
    "etcd": ("etcd_server", "etcd_server_session", "etcd_cluster"),
    "cluster": ("redis_cluster", "redis_cluster_session", "etcd_cluster"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a server fixture, so `-m "not etcd"` works."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKERS.items():
            if used.intersection(fixtures):
                item.add_marker(marker)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for this test alone (kill and restart at will)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One redis-server for the session; tests must not stop it (FLUSHALL is fine)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh single-member etcd for this test alone (kill and restart at will)."""
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_server_session() -> Iterator[EtcdServer]:
    """One etcd for the session; use a key prefix of your own, never stop it."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """A fresh Redis Cluster (3 masters, 3 replicas) for this test alone: kill, pause, restart."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    """One Redis Cluster for the session; tests must not stop a node (their own keys only)."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd for this test alone: kill, pause, restart a member."""
    with EtcdCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and server/client certificates a strict verifier accepts, for every TLS test.

    Strict is Python 3.13's default (``ssl.VERIFY_X509_STRICT``); see
    ``resilient.testing.certs`` for what each certificate carries.
    """
    try:
        return make_certificates(tmp_path_factory.mktemp("tls"))
    except MissingBinaryError as exc:
        pytest.skip(str(exc))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """An in-process steerable HTTP upstream, seeded for reproducible shares."""
    from resilient.testing.upstream import Upstream

    async with Upstream(rng=random.Random(1234)) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    yield
    leaked = []
    for child in me.children(recursive=True):
        if child.pid in before:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            leaked.append(f"{child.pid} {child.name()}")
            child.kill()
        except psutil.NoSuchProcess:
            continue
    assert not leaked, f"test left child processes running (now killed): {leaked}"
