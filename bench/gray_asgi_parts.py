"""Which part of the gray + deadline path costs a server's CPU: variants, each paired with plain.

    python -m bench.gray_asgi_parts [--rounds 10] [--duration 2] [--variants gray,no-timer,...]

Each variant is a uvicorn + Starlette hello-world (as ``bench.gray_asgi``)
with a part of the middleware taken out; each runs beside a plain server,
the two driven in turn by ``wrk`` (32 connections, gray traffic with a
deadline header, order alternating by round), and the server's CPU time per
request is read from /proc. The pairs run one after another; the first is
an A/A control (plain against plain), the bench's own resolution.

Variants (``--variants``):

- ``plain``: no middleware (the A/A control).
- ``gray``: ``GrayMiddleware`` as shipped (the deadline header armed).
- ``no-deadline``: ``GrayMiddleware(deadline_header=None)``.
- ``deadline``: ``DeadlineMiddleware`` alone.
- ``no-timer``: ``DeadlineMiddleware`` whose scope is published
  (``remaining()`` works) but arms no loop timer and holds no task.
- ``noop``: ``DeadlineMiddleware`` whose scope does nothing (the scope copy
  and the ``send`` wrapper are left).

``no-timer`` and ``noop`` replace ``resilient.asgi.deadline`` in the server
process: they are measurements, not behaviours anyone should ship.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.gray_asgi import GRAY_HEADERS, cpu_seconds, free_port, load_wrk, run_uvicorn

VARIANTS = ("plain", "gray", "no-deadline", "deadline", "no-timer", "noop")


def build_app(variant: str) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import resilient.asgi
    from resilient.asgi import DeadlineMiddleware, GrayMiddleware
    from resilient.deadline import deadline

    class Published(deadline):
        """Entered and left (published), never armed."""

        __slots__ = ()

        def arm(self) -> None:
            self.__enter__()

        def disarm(self, exc_type: Any, exc: Any) -> None:
            self.__exit__(None, None, None)

    class Nothing:
        fired = False

        def __init__(self, seconds: float, *, clock: Any = None) -> None:
            pass

        def arm(self) -> None:
            pass

        def disarm(self, exc_type: Any, exc: Any) -> None:
            pass

    if variant == "no-timer":
        resilient.asgi.deadline = Published  # type: ignore[misc]
    elif variant == "noop":
        resilient.asgi.deadline = Nothing  # type: ignore[misc,assignment]

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello, world")

    middleware = {
        "plain": [],
        "gray": [Middleware(GrayMiddleware)],
        "no-deadline": [Middleware(GrayMiddleware, deadline_header=None)],
        "deadline": [Middleware(DeadlineMiddleware)],
        "no-timer": [Middleware(DeadlineMiddleware)],
        "noop": [Middleware(DeadlineMiddleware)],
    }[variant]
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


def start(variant: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.gray_asgi_parts", "--serve", variant, "--port", str(port)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    time.sleep(3)  # uvicorn up (the first wrk run would fail loudly if not)
    return proc, port


def pair(variant: str, rounds: int, duration: int) -> tuple[float, float, list[float]]:
    """Median CPU per request of plain and of ``variant``, and the per-round ratios."""
    servers = {"base": start("plain"), "variant": start(variant)}  # two servers even for plain
    names = list(servers)
    try:
        for name in names:
            load_wrk(servers[name][1], GRAY_HEADERS, 1, 32)  # warm up
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            for name in names if i % 2 == 0 else reversed(names):
                proc, port = servers[name]
                before = cpu_seconds(proc.pid)
                _, count = load_wrk(port, GRAY_HEADERS, duration, 32)
                cpu[name].append((cpu_seconds(proc.pid) - before) / count)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in servers.values():
            proc.wait(10)
    base, other = cpu["base"], cpu["variant"]
    ratios = [a / b for a, b in zip(base, other, strict=True)]
    return statistics.median(base), statistics.median(other), ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_uvicorn(build_app(args.serve), args.port)
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    print(
        f"gray traffic with a deadline header, wrk 32 connections, {args.rounds} rounds of "
        f"{args.duration} s per server, each variant paired with plain "
        f"(load {os.getloadavg()[0]:.1f})"
    )
    print(f"  {'variant':12} {'plain CPU':>10} {'variant CPU':>12} {'ratio':>7}  per round")
    for variant in variants:
        plain, other, ratios = pair(variant, args.rounds, args.duration)
        print(
            f"  {variant:12} {plain * 1e6:8.1f}us {other * 1e6:10.1f}us {plain / other:7.3f}  "
            + " ".join(f"{r:.2f}" for r in ratios),
            flush=True,
        )


if __name__ == "__main__":
    main()
