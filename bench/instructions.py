"""Instructions per request through each HTTP client, counted by valgrind.

    python -m bench.instructions [--client aiohttp --client resilient ...]

A request's cost in instructions does not move with the machine's load,
which on a shared machine moves requests per second by 20% or more from one
round to the next. Each client sends ``--small`` and then ``--large``
requests (``python -m bench.http_throughput --count N --client NAME``,
32 workers, the upstream in its own process and outside valgrind) under
``valgrind --tool=callgrind``; the difference over the difference in
requests is one request's cost, start-up excluded.

Under valgrind the client runs about 80 times slower, so work that falls
due by the clock (the learners' samples, the retry budget's batches,
timers) would come round 80 times as often per request as at full speed.
The client's monotonic clock is therefore slowed by the same factor
(``--slow``) by a small shim preloaded into it (``bench/slowclock.c``,
built here with the C compiler), so that this work costs what it costs at
full speed. Needs ``valgrind`` and ``cc``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.http_throughput import ABLATIONS, CLIENTS

SHIM = Path(__file__).with_name("slowclock.c")
COLLECTED = re.compile(r"Collected : (\d+)")


def build_shim(directory: Path) -> Path:
    """The clock shim, compiled into ``directory``."""
    library = directory / "slowclock.so"
    subprocess.run(
        ["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(SHIM), "-ldl"], check=True
    )
    return library


def instructions(client: str, count: int, shim: Path, slow: int) -> int:
    """Instructions the client process runs to start, send ``count`` requests and stop."""
    env = {**os.environ, "LD_PRELOAD": str(shim), "SLOW_CLOCK": str(slow)}
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.http_throughput",
        "--count",
        str(count),
        "--client",
        client,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    known = [*CLIENTS, *ABLATIONS]
    parser.add_argument("--client", action="append", choices=known)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--slow", type=int, default=80, help="clock slowdown under valgrind")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "cc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (Debian: apt-get install {tool.replace('cc', 'gcc')})")
    clients = args.client or list(CLIENTS)
    with tempfile.TemporaryDirectory() as scratch:
        shim = build_shim(Path(scratch))
        per_request: dict[str, float] = {}
        for client in clients:
            small = instructions(client, args.small, shim, args.slow)
            large = instructions(client, args.large, shim, args.slow)
            per_request[client] = (large - small) / (args.large - args.small)
            print(f"  {client:<12} {per_request[client]:10,.0f} instructions per request")
    base = per_request.get("aiohttp")
    if base is not None:
        for client, cost in per_request.items():
            print(f"  {client:<12} {cost / base:.3f}x aiohttp's instructions, {cost - base:+,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
