"""The chaos benchmark over gRPC: a bare grpc.aio channel and resilient's interceptors.

    python -m bench.chaos_grpc [--scenario outage|outage-50|brownout ...] [--out DIR]

The scenarios, the open-loop load, the measurements and the targets are
bench/chaos.py's (``SCENARIOS``, ``bench``, ``targets``); the upstream is its
gRPC twin (``resilient.testing.grpc_upstream`` in its own process: the same
``Behaviour``, a 503 answered as ``UNAVAILABLE``), one client at a time, each
against a fresh upstream:

- ``grpc``: ``grpc.aio.insecure_channel(target)``, each call with
  ``timeout=2``: the baseline of every ratio.
- ``resilient-grpc``: the same channel with ``resilient.grpc``'s client
  interceptors (``resilient.grpc.channel(target, hub, idempotent=...)``, the
  method marked idempotent), each call with ``timeout=2``, every other
  setting default.

Targets (resilient-grpc against grpc, same run): the aiohttp targets of
DESIGN.md, as bench/chaos.py states them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.chaos import SCENARIOS, TOTAL, bench
from resilient.demo import Contender
from resilient.demo._grpc import grpc_baseline, grpc_contender

CONTENDERS: dict[str, Callable[[], Contender]] = {
    "grpc": lambda: grpc_baseline(TOTAL),
    "resilient-grpc": lambda: grpc_contender(TOTAL),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos_grpc", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default: all"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="where the plots go")
    args = parser.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    passed = asyncio.run(
        bench(
            names,
            list(CONTENDERS),
            args.out,
            contenders=CONTENDERS,
            pair=("grpc", "resilient-grpc"),
            grpc=True,
            prefix="chaos-grpc",
            title="chaos benchmark over gRPC",
        )
    )
    print(f"\nall targets met: {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
