"""``python -m resilient.testing redis|etcd``: a throwaway server for trying things by hand.

Starts the server on a free loopback port in a temporary directory, prints
where it is, and stops it (deleting the directory) on Ctrl-C or SIGTERM. The
steerable upstream has its own entry point: ``python -m resilient.testing.upstream``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from resilient.testing.servers import EtcdServer, MissingBinaryError, RedisServer, ServerStartError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resilient.testing", description=__doc__)
    parser.add_argument("server", choices=("redis", "etcd"))
    parser.add_argument("--password", default=None, help="redis requirepass (redis only)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = RedisServer(password=args.password) if args.server == "redis" else EtcdServer()
        with server:
            # repr, not url: a password is never printed.
            print(f"ready: {server!r}, pid {server.pid}; Ctrl-C stops it", flush=True)
            stop.wait()
    except (MissingBinaryError, ServerStartError) as exc:
        print(f"resilient.testing: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
