"""A breaker and a deadline around a flaky function, in memory: run it and watch it trip.

python examples/decorator.py
"""

from __future__ import annotations

import asyncio
import random

import resilient
from resilient import BreakerConfig, CircuitOpenError, Hub

hub = Hub(
    "example",
    defaults=BreakerConfig(window="count", window_size=20, minimum_calls=10, open_duration=0.3),
)
breaker = hub.breaker("inventory")
breaker.add_listener(lambda event: print("  event:", event))


@breaker
async def check_stock(item: int, *, sick: bool) -> int:
    await asyncio.sleep(0.002)
    if sick and random.random() < 0.8:
        raise ConnectionError("inventory is down")
    return item * 2


async def main() -> None:
    for phase, sick in (("healthy", False), ("outage", True), ("healed", False)):
        ok = failed = rejected = 0
        for item in range(60):
            async with resilient.deadline(0.1):
                try:
                    await check_stock(item, sick=sick)
                    ok += 1
                except CircuitOpenError:
                    rejected += 1  # answered at once; inventory was not called
                except ConnectionError:
                    failed += 1
            await asyncio.sleep(0.01)
        print(
            f"{phase:8s} ok={ok:3d} failed={failed:3d} rejected={rejected:3d} "
            f"state={breaker.state.value}"
        )


if __name__ == "__main__":
    asyncio.run(main())
