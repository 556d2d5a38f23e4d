"""Process presence for a process with thousands of breakers: what it costs Redis.

    python -m bench.presence_cost [--breakers 5000] [--seconds 20]

A real redis-server on loopback (``resilient.testing.servers.RedisServer``).
One async ``Hub`` with a ``RedisStore`` (default sync interval) and
``--breakers`` breakers named with 40 characters, each called once; once the
first writes are in, the bench resets Redis's statistics and leaves the
process idle for ``--seconds``, then reports what reached Redis: commands
per second (every one a presence write: idle breakers send nothing), bytes
per second, the entry's and the names record's size, and whether the record
was written again (a record marked by the bench must still be there). The
presence targets: about 0.5 commands/s per process, and the record sent only
when the names change. Bounded: every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.redis_store import IN_SCRIPTS, OURS, command_stats

BOUND = 60.0  # seconds any wait may take


async def run(breakers: int, seconds: float) -> dict[str, Any]:
    from resilient import Hub
    from resilient.stores import _presence
    from resilient.stores.redis import RedisStore
    from resilient.testing.servers import RedisServer

    names = [f"svc-{i:05d}.{'x' * 30}" for i in range(breakers)]
    with RedisServer() as server, server.client(decode_responses=True) as client:
        entries, records = _presence.presence_key("bench"), _presence.names_key("bench")
        async with Hub("bench", store=RedisStore(server.url)) as hub:
            for name in names:
                hub.breaker(name)(lambda: 1)()
            end = time.monotonic() + BOUND
            while len(client.hvals(records)) != 1 or not client.hlen(entries):
                if time.monotonic() > end:
                    raise SystemExit("no names record within 60 s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(3.0)  # the breakers' first flushes are over
            (ident,) = client.hkeys(records)
            record = client.hget(records, ident)
            client.hset(records, ident, record + " ")  # marked: a rewrite would drop it
            client.config_resetstat()
            start = time.monotonic()
            await asyncio.sleep(seconds)
            stats = command_stats(server.url)
            info = client.info("stats")
            elapsed = time.monotonic() - start
            entry = client.hget(entries, ident)
            rewritten = client.hget(records, ident) != record + " "
    ours = OURS | {"hello"}  # the statistics' own connection
    sent = sum(v for k, v in stats.items() if k not in IN_SCRIPTS and k not in ours)
    return {
        "commands_per_s": sent / elapsed,
        "in_bytes_per_s": float(info["total_net_input_bytes"]) / elapsed,
        "entry_bytes": len(entry or ""),
        "record_bytes": len(record),
        "record_rewritten": rewritten,
        "by_command": {k: v for k, v in stats.items() if k not in ours},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--breakers", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    found = asyncio.run(run(args.breakers, args.seconds))
    print(
        f"{args.breakers} breakers, idle {args.seconds:.0f} s: "
        f"{found['commands_per_s']:.2f} commands/s, {found['in_bytes_per_s'] / 1024:.1f} KiB/s "
        f"in; entry {found['entry_bytes']} B, names record {found['record_bytes']} B, "
        f"record written again: {'yes' if found['record_rewritten'] else 'no'}"
    )
    print(f"  commands: {found['by_command']}")


if __name__ == "__main__":
    main()
