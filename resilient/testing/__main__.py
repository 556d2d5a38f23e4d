"""``python -m resilient.testing redis|etcd|redis-cluster|etcd-cluster``: throwaway servers.

Starts the server on a free loopback port in a temporary directory, prints
where it is, and stops it (deleting the directory) on Ctrl-C or SIGTERM.
``redis-cluster`` is 3 masters and 3 replicas (``--masters``, ``--replicas``),
``etcd-cluster`` 3 members (``--members``); each prints its URL and every
node's PID, to kill or pause one by hand (``kill -STOP PID``). The
steerable upstream has its own entry point: ``python -m resilient.testing.upstream``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from resilient.testing.clusters import EtcdCluster, RedisCluster
from resilient.testing.servers import EtcdServer, MissingBinaryError, RedisServer, ServerStartError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resilient.testing", description=__doc__)
    parser.add_argument("server", choices=("redis", "etcd", "redis-cluster", "etcd-cluster"))
    parser.add_argument("--password", default=None, help="redis requirepass (redis only)")
    parser.add_argument("--masters", type=int, default=3, help="redis-cluster masters")
    parser.add_argument("--replicas", type=int, default=1, help="redis-cluster replicas per master")
    parser.add_argument("--members", type=int, default=3, help="etcd-cluster members")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.server == "redis-cluster":
            with RedisCluster(args.masters, args.replicas) as cluster:
                pids = ", ".join(f"{n.port}: pid {n.pid}" for n in cluster.nodes)
                print(f"ready: {cluster.url} ({pids}); Ctrl-C stops it", flush=True)
                stop.wait()
            return 0
        if args.server == "etcd-cluster":
            with EtcdCluster(args.members) as etcd:
                pids = ", ".join(f"{m.name}: pid {m.pid}" for m in etcd.members)
                leader = etcd.leader().name
                print(f"ready: {etcd.endpoints} ({pids}; leader {leader}); Ctrl-C stops it")
                sys.stdout.flush()
                stop.wait()
            return 0
        server = RedisServer(password=args.password) if args.server == "redis" else EtcdServer()
        with server:
            # repr, not url: a password is never printed.
            print(f"ready: {server!r}, pid {server.pid}; Ctrl-C stops it", flush=True)
            stop.wait()
    except (MissingBinaryError, ServerStartError, ValueError) as exc:
        print(f"resilient.testing: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
