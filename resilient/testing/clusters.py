"""A Redis Cluster and a 3-member etcd cluster on free loopback ports, for fault tests.

One idea: clusters a test owns outright, built from the same server processes
as ``servers.py`` (one temporary directory, free ``127.0.0.1`` ports and one
mirakuru executor per node), with the faults a failover test needs: ``kill``
(SIGKILL, a crash), ``pause``/``resume`` (SIGSTOP/SIGCONT, a hung node whose
sockets stay open) and ``restart`` of one node, by its PID only.

Ready means ready for every client, never "the processes run":

- Redis: ``redis-cli --cluster create`` joins the nodes (masters and
  replicas), then every running node must say ``cluster_state:ok`` with all
  16384 slots served and no node it still flags as failing.
- etcd: every running member answers ``/health`` 200 (it has a leader) and
  all agree on that leader.

Short timeouts make failover quick: ``cluster-node-timeout`` of 1000 ms
(a master is marked failed after it and its replica promoted about a second
later), etcd heartbeats of 50 ms and elections after 500 ms. Redis runs with
no persistence at all (no RDB, no AOF): a promoted replica is all there is,
as in a cache-style deployment. ``nodes.conf`` is kept, so a restarted node
rejoins with its identity.

Waits are bounded (``start_timeout``, a backstop for a loaded box), polled
every 20 ms. ``close()`` (and leaving the ``with`` block) stops every node,
resuming paused ones first, and deletes every directory. Not thread-safe:
one test drives one cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar

from resilient.testing._binaries import which
from resilient.testing.servers import (
    HOST,
    POLL_INTERVAL,
    PORT_ATTEMPTS,
    START_TIMEOUT,
    ServerStartError,
    _free_port,
    _Managed,
    _Server,
)

if TYPE_CHECKING:
    import redis
    from mirakuru import Executor

__all__ = ["EtcdCluster", "EtcdMember", "RedisCluster", "RedisClusterNode", "SlotOwner"]

SLOTS = 16384
_T = TypeVar("_T")


def _wait_for(what: str, check: Callable[[], _T | None], timeout: float) -> _T:
    """Poll ``check`` until it returns something other than None.

    Raises:
        ServerStartError: not within ``timeout`` seconds (the last error quoted).
    """
    until = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = check()
        except ServerStartError:
            raise
        except Exception as exc:  # a node still starting refuses or times out: poll again
            got, last = None, exc
        if got is not None:
            return got
        if time.monotonic() > until:
            why = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
            raise ServerStartError(f"{what} not within {timeout:.0f} s{why}")
        time.sleep(POLL_INTERVAL)


class _Node(_Server):
    """A cluster member: a ``_Server`` whose ports its cluster picks, with SIGSTOP/SIGCONT."""

    _paused = False

    def pause(self) -> None:
        """SIGSTOP the process: it holds its sockets open and answers nothing."""
        pid = self.pid
        if pid is not None and not self._paused:
            os.kill(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused process."""
        pid = self.pid
        if pid is not None and self._paused:
            os.kill(pid, signal.SIGCONT)
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def stop(self) -> None:
        self.resume()  # a stopped process cannot act on SIGTERM
        super().stop()

    def kill(self) -> None:
        self._paused = False  # SIGKILL ends a stopped process too
        super().kill()


def _stop_all(nodes: Iterable[_Server]) -> None:
    for node in nodes:
        try:
            node.close()
        except Exception:  # the others must still be stopped
            continue


# -- Redis Cluster ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotOwner:
    """Who serves a slot now: the master node, and its replicas."""

    master: RedisClusterNode
    replicas: tuple[RedisClusterNode, ...]


class RedisClusterNode(_Node):
    """One ``redis-server`` in cluster mode (no persistence; ``nodes.conf`` kept)."""

    _name = "redis-cluster"

    def __init__(
        self, binary: str, node_timeout_ms: int, full_coverage: bool, start_timeout: float
    ) -> None:
        super().__init__(start_timeout)
        self._binary = binary
        self._node_timeout_ms = node_timeout_ms
        self._full_coverage = full_coverage
        self.bus_port = 0
        self.node_id = ""  # set once the cluster is created

    def _pick_ports(self, exclude: set[int]) -> set[int]:
        self.port = _free_port(exclude)
        self.bus_port = _free_port(exclude | {self.port})
        return {self.port, self.bus_port}

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import TCPExecutor

        command = [
            self._binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self._root),
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self._node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self._full_coverage else "no",
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        return TCPExecutor(command, host=HOST, port=self.port, **self._executor_options(log))

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client for this node alone (the caller closes it)."""
        import redis as redis_py

        options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **kwargs}
        client: redis.Redis = redis_py.Redis(host=HOST, port=self.port, **options)
        return client

    def __repr__(self) -> str:
        return f"RedisClusterNode(port={self.port}, running={self.running}, paused={self.paused})"


class RedisCluster(_Managed):
    """A Redis Cluster on loopback: ``masters`` masters, each with ``replicas`` replicas.

    Args:
        masters: how many masters share the 16384 slots (at least 3, as Redis requires).
        replicas: replicas per master.
        node_timeout_ms: ``cluster-node-timeout``: how long a node may be
            unreachable before it is failed over.
        full_coverage: ``cluster-require-full-coverage`` (Redis's default,
            yes): while a failed master's slots have no owner, every node
            answers ``CLUSTERDOWN``; with False the other masters keep serving.
        binary, cli: the ``redis-server`` and ``redis-cli`` executables.
        start_timeout: seconds any wait (start, join, failover) may take.

    ``url`` is ``redis+cluster://`` followed by every node's address, what
    ``RedisStore`` takes. ``owner(key)`` says which node serves a key now.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        full_coverage: bool = True,
        binary: str = "redis-server",
        cli: str = "redis-cli",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        hint = "install Redis (e.g. apt-get install redis-server redis-tools)"
        server = which(binary, hint)
        self._cli = which(cli, hint)
        self._start_timeout = start_timeout
        self._replicas = replicas
        self.full_coverage = full_coverage
        self.nodes = tuple(
            RedisClusterNode(server, node_timeout_ms, full_coverage, start_timeout)
            for _ in range(masters * (1 + replicas))
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, join them (masters first, then replicas) and wait for ``ok``.

        Raises:
            ServerStartError: a node did not start, the join failed, or the
                cluster was not ``ok`` everywhere in time.
        """
        if all(n.running for n in self.nodes) and all(n.node_id for n in self.nodes):
            return self
        taken: set[int] = set()
        for node in self.nodes:
            node.start()
            taken |= {node.port, node.bus_port}
        command = [
            self._cli, "--cluster", "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas", str(self._replicas),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self._start_timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-2000:]
            raise ServerStartError(f"redis-cli --cluster create failed:\n{tail}")
        for node in self.nodes:
            with node.client() as client:
                node.node_id = str(client.execute_command("CLUSTER", "MYID"), "ascii")
        self.wait_ok()
        return self

    def close(self) -> None:
        """Stop every node (paused ones are resumed first) and delete their directories."""
        _stop_all(self.nodes)

    # -- faults --------------------------------------------------------------------------

    def kill(self, node: RedisClusterNode) -> None:
        """SIGKILL ``node`` (its replica takes over after ``node_timeout_ms``)."""
        node.kill()

    def pause(self, node: RedisClusterNode) -> None:
        """SIGSTOP ``node``: connections to it hang instead of being refused."""
        node.pause()

    def resume(self, node: RedisClusterNode) -> None:
        node.resume()

    def restart(self, node: RedisClusterNode) -> None:
        """Start ``node`` again (after ``kill``) and wait until the cluster is ``ok`` with it.

        With no persistence a restarted node is empty: restart a killed
        master only after its replica took over (``wait_promoted``), or it
        comes back as an empty master and its replica copies the emptiness.
        """
        node.start()
        self.wait_ok()

    # -- looking -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``: every node, for ``RedisStore``."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    def running_nodes(self) -> list[RedisClusterNode]:
        return [n for n in self.nodes if n.running and not n.paused]

    def _view(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as one running node sees it (the first that answers)."""
        error: Exception | None = None
        for node in self.running_nodes():
            try:
                with node.client(decode_responses=True) as client:
                    text = client.execute_command("CLUSTER", "NODES")
            except Exception as exc:
                error = exc
                continue
            return _parse_nodes(str(text))
        raise ServerStartError(f"no Redis Cluster node answers CLUSTER NODES ({error})")

    def _by_id(self, node_id: str) -> RedisClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def masters(self) -> list[RedisClusterNode]:
        """The nodes serving slots now (as a running node sees it), in slot order."""
        rows = [r for r in self._view() if "master" in r["flags"] and r["slots"]]
        rows.sort(key=lambda r: min(r["slots"]))
        return [self._by_id(r["id"]) for r in rows]

    def owner(self, key: str | bytes) -> SlotOwner:
        """The master that serves ``key``'s slot now, and its replicas."""
        slot = _keyslot(key)
        rows = self._view()
        for row in rows:
            if "master" in row["flags"] and slot in row["slots"]:
                replicas = tuple(self._by_id(r["id"]) for r in rows if r["master"] == row["id"])
                return SlotOwner(self._by_id(row["id"]), replicas)
        raise ServerStartError(f"no master serves slot {slot} now")

    def cluster_info(self, node: RedisClusterNode) -> dict[str, str]:
        """CLUSTER INFO of one node."""
        with node.client(decode_responses=True) as client:
            text = client.execute_command("CLUSTER", "INFO")
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node says ``cluster_state:ok``, all slots served, nothing failing."""
        running = {n.node_id for n in self.running_nodes()}

        def check() -> bool | None:
            for node in self.running_nodes():
                info = self.cluster_info(node)
                if info.get("cluster_state") != "ok":
                    return None
                if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                    return None
                if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return None
                with node.client(decode_responses=True) as client:
                    text = client.execute_command("CLUSTER", "NODES")
                rows = _parse_nodes(str(text))
                for row in rows:
                    if row["id"] in running and {"fail", "fail?"} & row["flags"]:
                        return None
                    if row["id"] == node.node_id and "slave" in row["flags"]:
                        # A replica that has not synced once cannot take over.
                        with node.client(decode_responses=True) as client:
                            link = client.info("replication").get("master_link_status")
                        if link != "up":
                            return None
            return True

        _wait_for("Redis Cluster ok on every node", check, timeout or self._start_timeout)

    def wait_promoted(self, dead: RedisClusterNode, timeout: float | None = None) -> float:
        """Wait until another node serves ``dead``'s slots; returns when it was seen (monotonic).

        Polls CLUSTER NODES (and CLUSTER INFO's ``cluster_state``) on the
        running nodes every 20 ms, so the figure is within about that of the
        promotion.
        """
        slots: set[int] = next((r["slots"] for r in self._view() if r["id"] == dead.node_id), set())
        if not slots:
            raise ValueError(f"{dead!r} serves no slots: nothing to promote")
        probe = min(slots)

        def check() -> float | None:
            rows = self._view()
            for row in rows:
                if row["id"] != dead.node_id and "master" in row["flags"] and probe in row["slots"]:
                    if {"fail", "fail?"} & row["flags"]:
                        return None
                    promoted = self._by_id(row["id"])
                    if self.cluster_info(promoted).get("cluster_state") == "ok":
                        return time.monotonic()
            return None

        return _wait_for(f"a replica of {dead!r} promoted", check, timeout or self._start_timeout)

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A synchronous redis-py cluster client (the caller closes it)."""
        import redis as redis_py
        from redis.cluster import ClusterNode

        starts = [ClusterNode(HOST, n.port) for n in self.nodes]  # type: ignore[no-untyped-call]
        client: redis.RedisCluster = redis_py.RedisCluster(startup_nodes=starts, **kwargs)
        return client

    def __repr__(self) -> str:
        ports = ",".join(str(n.port) for n in self.nodes)
        running = sum(n.running for n in self.nodes)
        return f"RedisCluster(ports={ports}, running={running}/{len(self.nodes)})"


def _parse_nodes(text: str) -> list[dict[str, Any]]:
    """CLUSTER NODES lines as ``{id, addr, flags, master, slots}`` (importing ranges skipped)."""
    rows = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        slots: set[int] = set()
        for item in parts[8:]:
            if item.startswith("["):
                continue
            low, _, high = item.partition("-")
            slots.update(range(int(low), int(high or low) + 1))
        rows.append(
            {
                "id": parts[0],
                "addr": parts[1].split("@")[0],
                "flags": set(parts[2].split(",")),
                "master": parts[3] if parts[3] != "-" else None,
                "slots": slots,
            }
        )
    return rows


def _keyslot(key: str | bytes) -> int:
    """Redis Cluster's slot of ``key`` (CRC16 of the hash tag, mod 16384)."""
    from redis.crc import key_slot

    slot: int = key_slot(key.encode() if isinstance(key, str) else key)
    return slot


# -- etcd --------------------------------------------------------------------------------------


class EtcdMember(_Node):
    """One member of an ``EtcdCluster`` (its ports and peers set by the cluster)."""

    _name = "etcd-member"

    def __init__(self, binary: str, name: str, start_timeout: float) -> None:
        super().__init__(start_timeout)
        self._binary = binary
        self.name = name
        self.peer_port = 0
        self.initial_cluster = ""
        self.cluster_token = ""
        self._data = self._root / "data"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def _pick_ports(self, exclude: set[int]) -> set[int]:
        self.port = _free_port(exclude)
        self.peer_port = _free_port(exclude | {self.port})
        return {self.port, self.peer_port}

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import HTTPExecutor

        command = [
            self._binary,
            "--name", self.name,
            "--data-dir", str(self._data),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.cluster_token,
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]  # fmt: skip
        # Ready is /health answering 200: this member has a leader. One member
        # alone never is (no quorum), so the cluster starts them all at once.
        return HTTPExecutor(
            command,
            url=f"{self.endpoint}/health",
            method="GET",
            status=200,
            request_timeout=2.0,
            **self._executor_options(log),
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1.0) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return str(body.get("health")) == "true"

    def status(self) -> dict[str, Any]:
        """The member's ``Maintenance.Status`` (member id, leader id, revision) via the gateway."""
        request = urllib.request.Request(
            f"{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=1.0) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return body

    def __repr__(self) -> str:
        return f"EtcdMember({self.name}, {self.endpoint!r}, running={self.running})"


class EtcdCluster(_Managed):
    """A static ``--initial-cluster`` etcd of ``size`` members on loopback.

    Args:
        size: members (3 tolerates one lost; 1 is allowed, for symmetry).
        binary, etcdctl: the executables (``etcdctl`` only for ``etcdctl()``).
        start_timeout: seconds any wait (start, election) may take.

    ``endpoints`` is every member's client URL, comma-separated, what
    ``EtcdSource`` and ``--etcd`` take. ``leader()`` names the member that
    leads now; ``kill``/``pause``/``restart`` act on one member by its PID.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        binary: str = "etcd",
        etcdctl: str = "etcdctl",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        hint = "install etcd (e.g. apt-get install etcd-server etcd-client)"
        server = which(binary, hint)
        self._etcdctl_name = etcdctl
        self._start_timeout = start_timeout
        self.members = tuple(EtcdMember(server, f"m{i}", start_timeout) for i in range(size))
        self._started = False

    def start(self) -> Self:
        """Start every member at once and wait for all to be healthy under one leader.

        A port taken by another process in the meantime means fresh ports and
        a new attempt (fresh data directories), up to a few times.
        """
        if self._started:
            return self
        for attempt in range(PORT_ATTEMPTS):
            taken: set[int] = set()
            for member in self.members:
                taken |= member._pick_ports(taken)
            initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            token = f"resilient-{os.getpid()}-{id(self)}-{attempt}"
            for member in self.members:
                member.initial_cluster = initial
                member.cluster_token = token
                member._ports_fixed = True
            try:
                with ThreadPoolExecutor(len(self.members)) as pool:
                    list(pool.map(lambda m: m.start(), self.members))
                self.wait_ready()
            except ServerStartError as exc:
                logs = [m._log_tail(0).lower() for m in self.members]
                conflict = any("address already in use" in log for log in logs)
                for member in self.members:
                    member.kill()
                    shutil.rmtree(member._data, ignore_errors=True)
                if attempt + 1 == PORT_ATTEMPTS or not conflict:
                    raise ServerStartError(f"{exc}; logs: {self._logs()}") from None
                continue
            self._started = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _logs(self) -> str:
        return " ".join(str(m._log_path) for m in self.members)

    def close(self) -> None:
        """Stop every member (paused ones resumed first) and delete their directories."""
        _stop_all(self.members)
        self._started = False

    # -- looking -------------------------------------------------------------------------

    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated (the order is the members')."""
        return ",".join(m.endpoint for m in self.members)

    def running_members(self) -> list[EtcdMember]:
        return [m for m in self.members if m.running and not m.paused]

    def leader(self) -> EtcdMember:
        """The member leading now, as every running member agrees (waits for an election)."""

        def check() -> EtcdMember | None:
            ids: dict[str, EtcdMember] = {}
            leaders = set()
            for member in self.running_members():
                status = member.status()
                ids[str(status["header"]["member_id"])] = member
                leaders.add(str(status.get("leader", "0")))
            if len(leaders) == 1:
                return ids.get(leaders.pop())
            return None

        return _wait_for("an etcd leader all members agree on", check, self._start_timeout)

    def followers(self) -> list[EtcdMember]:
        leader = self.leader()
        return [m for m in self.running_members() if m is not leader]

    def wait_ready(self, timeout: float | None = None) -> EtcdMember:
        """Until every running member is healthy and they agree on a leader; returns it."""

        def check() -> bool | None:
            for member in self.members:
                proc = member._proc
                if proc is not None and proc.process is not None and not proc.running():
                    raise ServerStartError(f"{member!r} exited (log {member._log_path})")
            return True if all(m.healthy() for m in self.running_members()) else None

        _wait_for("etcd healthy on every member", check, timeout or self._start_timeout)
        return self.leader()

    # -- faults --------------------------------------------------------------------------

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL ``member`` (its data directory stays, for ``restart``)."""
        member.kill()

    def pause(self, member: EtcdMember) -> None:
        member.pause()

    def resume(self, member: EtcdMember) -> None:
        member.resume()

    def restart(self, member: EtcdMember) -> None:
        """Start ``member`` again on its ports and data, and wait until all are healthy."""
        member.start()
        self.wait_ready()

    def etcdctl(self, *args: str, timeout: float = 15.0) -> str:
        """Run ``etcdctl`` (API v3) against every running member; returns its stdout."""
        binary = which(self._etcdctl_name, "install etcdctl (e.g. apt-get install etcd-client)")
        endpoints = ",".join(m.endpoint for m in self.running_members())
        done = subprocess.run(
            [binary, "--endpoints", endpoints, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"etcdctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def __repr__(self) -> str:
        running = len(self.running_members())
        return f"EtcdCluster({self.endpoints!r}, running={running}/{len(self.members)})"
