"""EtcdSource and ``resilient config push`` on a real 3-member etcd, members killed mid-stream.

The cluster is ``resilient.testing.EtcdCluster``: three ``etcd`` processes
bootstrapped with a static ``--initial-cluster``, elections after 500 ms.
Pushes keep coming while the leader dies, then a follower: the hub must see
every pushed revision exactly once and in order, and a push must keep its
guard (a change made after its read is never written over) through the
failover. Waits are bounded polls with generous bounds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from resilient import Hub
from resilient.cli import main as cli_main
from resilient.config import EtcdError
from resilient.config._etcd_client import (
    AetcdClient,
    Change,
    Connection,
    Endpoint,
    WatchBatch,
    parse_endpoints,
)
from resilient.config.document import ConfigDocument
from resilient.config.etcd import EtcdSource, PushConflict
from resilient.testing.clusters import EtcdCluster, EtcdMember

pytestmark = [pytest.mark.cluster]

P = "/rt/cluster"
BOUND = 10.0  # seconds for what takes well under one on an idle box (an election: ~0.5 s)


class RecordingHub(Hub):
    """A real Hub that also remembers the revision of every view it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[int | None] = []

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


async def until(check: Callable[[], bool], bound: float = BOUND) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > bound:
            raise AssertionError(f"not true within {bound} s")
        await asyncio.sleep(0.01)


def doc(n: int) -> ConfigDocument:
    return ConfigDocument.from_values({"defaults": {"minimum_calls": n}})


def ordered(cluster: EtcdCluster, first: EtcdMember) -> str:
    """The cluster's endpoints with ``first`` first (the member a source starts on)."""
    rest = [m.endpoint for m in cluster.members if m is not first]
    return ",".join([first.endpoint, *rest])


def test_the_cluster_elects_again_and_takes_a_member_back(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.wait_ready()
    assert len(etcd_cluster.members) == 3 and len(etcd_cluster.followers()) == 2
    etcd_cluster.etcdctl("put", f"{P}/x", "1")
    etcd_cluster.kill(leader)
    assert leader.pid is None
    new = etcd_cluster.leader()
    assert new is not leader and new.running
    etcd_cluster.etcdctl("put", f"{P}/x", "2")  # two of three: still a quorum
    etcd_cluster.restart(leader)
    assert etcd_cluster.leader() is not None and leader.healthy()
    follower = etcd_cluster.followers()[0]
    etcd_cluster.pause(follower)
    assert follower.paused and not follower.healthy()
    etcd_cluster.etcdctl("put", f"{P}/x", "3")
    etcd_cluster.resume(follower)
    etcd_cluster.wait_ready()
    assert "3" in etcd_cluster.etcdctl("get", f"{P}/x", "--print-value-only")


async def test_every_revision_is_applied_once_in_order_through_two_failovers(
    etcd_cluster: EtcdCluster,
) -> None:
    leader = etcd_cluster.wait_ready()
    endpoints = ordered(etcd_cluster, leader)  # the source watches on the leader first
    source = EtcdSource(endpoints, prefix=P, timeout=5.0, backoff=0.05, backoff_max=0.5)
    pusher = EtcdSource(endpoints, prefix=P, timeout=5.0)
    hub = RecordingHub("etcd-cluster", config=source)
    pushed: list[int] = []
    refused: list[BaseException] = []
    stop = asyncio.Event()

    async def push_forever() -> None:
        n = 1
        while not stop.is_set():
            try:
                result = await pusher.push(doc(n))
            except (EtcdError, PushConflict) as exc:
                refused.append(exc)  # no quorum for a moment, or a lost answer: push again
            else:
                assert result.revision is not None
                pushed.append(result.revision)
                n += 1
            await asyncio.sleep(0.01)

    async with hub:
        task = asyncio.create_task(push_forever())
        await until(lambda: len(pushed) >= 5)
        etcd_cluster.kill(leader)  # the member the source watches on, and the leader
        count = len(pushed)
        await until(lambda: len(pushed) >= count + 10)  # a new leader, pushes go on
        etcd_cluster.restart(leader)
        follower = next(m for m in etcd_cluster.followers() if m.endpoint in endpoints)
        etcd_cluster.kill(follower)
        count = len(pushed)
        await until(lambda: len(pushed) >= count + 10)
        stop.set()
        await task
        await until(lambda: source.revision is not None and source.revision >= pushed[-1])
        applied = [r for r in hub.applied if r is not None]
        in_force = hub.breaker("any").config.minimum_calls
    assert applied == sorted(set(applied))  # in order, none twice
    assert set(pushed) <= set(applied)  # none missed
    assert in_force == len(pushed)  # the last push is in force
    assert all(isinstance(e, EtcdError) for e in refused)  # never a conflict with itself


def test_a_batch_of_several_revisions_is_applied_one_revision_at_a_time() -> None:
    # What a watch catching up after a failover sends: revisions 17 (two keys, one
    # transaction), 18 and 19 in one response. Each is applied once, in order.
    hub = RecordingHub("batch")
    source = EtcdSource("http://127.0.0.1:1", prefix=P)
    source._hub = hub
    source._revision = 16

    def put(key: str, n: int, revision: int) -> Change:
        return Change(f"{P}/{key}", json.dumps({"minimum_calls": n}).encode(), revision)

    source._on_events(
        WatchBatch(
            "events",
            19,
            (put("defaults", 7, 17), put("breakers/a", 8, 17), put("defaults", 9, 18),
             put("breakers/a", 10, 19)),
        )
    )  # fmt: skip
    assert hub.applied == [17, 18, 19]
    assert source.revision == 19
    assert hub.breaker("a").config.minimum_calls == 10
    assert hub.breaker("b").config.minimum_calls == 9


class KillingClient(AetcdClient):
    """A real client whose first commit meets a dead member; before that, ``before`` runs."""

    state: ClassVar[dict[str, int]] = {}

    def __init__(
        self, connection: Connection, endpoint: Endpoint, before: Callable[[Endpoint], Any]
    ) -> None:
        super().__init__(connection, endpoint=endpoint)
        self._before = before

    async def commit(self, *args: Any, **kwargs: Any) -> int | None:
        if not self.state.get("killed"):
            self.state["killed"] = 1
            await asyncio.to_thread(self._before, self.endpoint)
        return await super().commit(*args, **kwargs)


@pytest.mark.parametrize("concurrent", [False, True], ids=["alone", "with-a-concurrent-change"])
async def test_a_push_keeps_its_guard_through_the_failover(
    etcd_cluster: EtcdCluster, concurrent: bool
) -> None:
    leader = etcd_cluster.wait_ready()
    etcd_cluster.etcdctl("put", f"{P}/breakers/a", json.dumps({"minimum_calls": 3}))

    def kill_my_member(endpoint: Endpoint) -> None:
        member = next(m for m in etcd_cluster.members if m.port == endpoint.port)
        if concurrent:  # another operator's edit lands after our read, before our write
            etcd_cluster.etcdctl("put", f"{P}/breakers/a", json.dumps({"minimum_calls": 9}))
        etcd_cluster.kill(member)

    KillingClient.state = {}
    source = EtcdSource(
        ordered(etcd_cluster, leader),
        prefix=P,
        client_factory=lambda c, e: KillingClient(c, e, kill_my_member),
    )
    wanted = ConfigDocument.from_values({"breakers/a": {"minimum_calls": 5}})
    if concurrent:
        with pytest.raises(PushConflict):
            await source.push(wanted)
        expected = 9  # the other edit stands: refused, not merged, not overwritten
    else:
        result = await source.push(wanted)
        assert result.revision is not None
        expected = 5
    got = json.loads(etcd_cluster.etcdctl("get", f"{P}/breakers/a", "--print-value-only"))
    assert got == {"minimum_calls": expected}


async def test_a_lost_answer_to_an_applied_push_counts_as_done(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.wait_ready()

    class LostAnswer(AetcdClient):
        lost = 0

        async def commit(self, *args: Any, **kwargs: Any) -> int | None:
            written = await super().commit(*args, **kwargs)
            if not LostAnswer.lost:
                LostAnswer.lost = 1
                raise EtcdError("UNAVAILABLE: the answer was lost", code="UNAVAILABLE")
            return written

    source = EtcdSource(
        etcd_cluster.endpoints, prefix=P, client_factory=lambda c, e: LostAnswer(c, endpoint=e)
    )
    result = await source.push(doc(7))
    assert LostAnswer.lost == 1 and result.revision is not None
    got = json.loads(etcd_cluster.etcdctl("get", f"{P}/defaults", "--print-value-only"))
    assert got == {"minimum_calls": 7}


async def test_config_push_on_the_command_line_with_the_leader_dead(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    leader = etcd_cluster.wait_ready()
    endpoints = ordered(etcd_cluster, leader)
    assert len(parse_endpoints(endpoints)[0]) == 3
    etcd_cluster.kill(leader)  # the first endpoint is down; the others elect
    path = tmp_path / "breakers.yaml"
    path.write_text("defaults:\n  minimum_calls: 11\n")
    code = await asyncio.to_thread(
        cli_main, ["config", "push", str(path), "--etcd", endpoints, "--prefix", P]
    )
    assert code == 0
    got = json.loads(etcd_cluster.etcdctl("get", f"{P}/defaults", "--print-value-only"))
    assert got == {"minimum_calls": 11}
