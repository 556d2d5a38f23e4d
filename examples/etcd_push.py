"""Push a config file to etcd and watch a running hub pick it up.

    python examples/etcd_push.py [--etcd http://127.0.0.1:2379] [--prefix /resilient/example]

Without ``--etcd`` it starts a throwaway etcd on loopback (``etcd`` must be
installed). The same steps from a shell: ``resilient config validate``,
``resilient config push --dry-run``, ``resilient config push``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import resilient
from resilient.config import EtcdSource
from resilient.config.document import load, loads
from resilient.events import ConfigChanged, Event

HERE = Path(__file__).parent


async def demo(endpoint: str, prefix: str) -> None:
    document = load(HERE / "config.yaml")  # strict: any problem raises DocumentError
    pusher = EtcdSource(endpoint, prefix=prefix)

    plan = await pusher.push(document, dry_run=True)
    print(f"dry run against revision {plan.read_revision}:")
    for change in plan.changes:
        print(f"  {change.kind:>6} {prefix}/{change.key}")
    done = await pusher.push(document)  # one transaction; PushConflict if etcd moved meanwhile
    print(f"pushed at revision {done.revision}")

    changed = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, ConfigChanged):
            print(f"  {event.breaker}: failure_rate_threshold "
                  f"{event.old.failure_rate_threshold} -> {event.new.failure_rate_threshold} "
                  f"(revision {event.revision})")  # fmt: skip
            changed.set()

    async with resilient.Hub("example", config=EtcdSource(endpoint, prefix=prefix)) as hub:
        hub.add_listener(on_event)
        payments = hub.breaker("payments")
        print(
            f"payments starts with failure_rate_threshold={payments.config.failure_rate_threshold}"
        )

        # an operator tightens one threshold; the running hub applies it within milliseconds
        tightened = loads((HERE / "config.yaml").read_text().replace("0.25", "0.2"))
        await pusher.push(tightened)
        await asyncio.wait_for(changed.wait(), timeout=10)
        print(f"payments now has failure_rate_threshold={payments.config.failure_rate_threshold}")


@contextlib.contextmanager
def local_etcd() -> Iterator[str]:
    from resilient.testing.servers import EtcdServer

    with EtcdServer() as server:
        yield server.endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", help="an etcd endpoint (default: start one on loopback)")
    parser.add_argument("--prefix", default="/resilient/example")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        endpoint = args.etcd or stack.enter_context(local_etcd())
        asyncio.run(demo(endpoint, args.prefix))


if __name__ == "__main__":
    main()
