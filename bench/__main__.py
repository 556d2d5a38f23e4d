"""Run the benchmarks: `python -m bench [name ...]` (default: the micro benchmarks).

Each benchmark is its own module (``python -m bench.<name> --help``); this runs
them one after the other in fresh processes, so one cannot warm or disturb
another. docs/benchmarks.md records the figures and the commands.
"""

from __future__ import annotations

import subprocess
import sys

MICRO = ["breaker_overhead", "policy_overhead", "telemetry_cost"]
ALL = [
    *MICRO,
    "redis_store",
    "gray_asgi",
    "etcd_reload",
    "http_throughput",
    "instructions",
    "long_tail",
    "hedging",
    "limit_step",
    "shadow_cost",
    "shadow_instructions",
    "soak",
    "chaos",
]


def main(argv: list[str]) -> int:
    names = argv or MICRO
    if names == ["all"]:
        names = ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
        return 2
    failed = 0
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        failed |= subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
