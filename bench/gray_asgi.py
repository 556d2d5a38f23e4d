"""GrayMiddleware on a Starlette hello-world: requests/s with and without it, same run.

    python -m bench.gray_asgi [--rounds 5] [--duration 3] [--connections 32]
                              [--load auto|wrk|aiohttp] [--requests 20000]
                              [--micro-calls 100000]
    python -m bench.gray_asgi --instructions [--small 200] [--large 1200] [--read]

End to end: two uvicorn processes (one a plain Starlette hello-world, one the
same app under ``GrayMiddleware``) on loopback; a bounded load generator
(``wrk`` for ``--duration`` seconds if installed, else an aiohttp client with
``--connections`` workers sending ``--requests`` requests) drives each in
turn, interleaved over ``--rounds`` rounds with the order alternating, for
stable traffic (no gray headers), for gray traffic (traceparent and a
tracestate with a gray member) and for gray traffic with a deadline header
(so a deadline is armed for each request: ``gray+ddl``). It prints the
median requests/s ratio (target >= 0.97) and the per-request overhead in
microseconds.

On a shared machine wall-clock requests/s swing with whatever else runs, so
the bench also reads each server process's CPU time (user + system) over each
run: CPU microseconds per request is what a saturated server's capacity is
made of (capacity = 1 / CPU per request), and it is far steadier. Both are
printed; the CPU-based ratio and overhead are the figures to quote.

Micro: the same app called directly as ASGI in one event loop, no server, to
isolate the middleware's own cost per request for each kind of request.

``--instructions``: the figure the machine's load cannot move. Each server
runs under ``valgrind --tool=callgrind`` (outside valgrind, an aiohttp client
with 8 connections sends ``--small`` and then, to a fresh server, ``--large``
requests of one kind); the difference in instructions over the difference in
requests is one request's cost, start-up excluded. The ratio of the plain
server's to the gray server's is the requests/s ratio a saturated server
would show if every instruction cost the same. Needs ``valgrind``.

``--read``: the handler reads the tag (``resilient.gray.current()``), in both
servers. Recognition runs when the tag is first read, so without it a gray
request's figure leaves the rules out; with it, they are in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
GRAY_HEADERS = {
    "traceparent": TP,
    "tracestate": "congo=t61rcWkgMzE,gray=canary,rojo=00f067aa0ba902b7",
    "x-request-timeout-ms": "5000",
}
TRACE_ONLY = {k: v for k, v in GRAY_HEADERS.items() if k != "x-request-timeout-ms"}
KINDS = {"stable": {}, "gray": TRACE_ONLY, "gray+ddl": GRAY_HEADERS}


def build_app(gray: bool, read: bool = False) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from resilient.asgi import GrayMiddleware
    from resilient.gray import current

    async def hello(request: Request) -> PlainTextResponse:
        if read:
            current()  # what a handler that asks whether it serves gray traffic does
        return PlainTextResponse("hello, world")

    middleware = [Middleware(GrayMiddleware)] if gray else []
    return Starlette(routes=[Route("/", hello)], middleware=middleware)


def serve(variant: str, port: int, read: bool) -> None:
    run_uvicorn(build_app(variant == "gray", read), port)


def run_uvicorn(app: Any, port: int) -> None:
    """One uvicorn process on loopback, quiet, no websockets or lifespan."""
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        ws="none",
        lifespan="off",
    )


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    variant: str,
    wrapper: tuple[str, ...] = (),
    wait: float = 20,
    read: bool = False,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *wrapper,
            sys.executable,
            "-m",
            "bench.gray_asgi",
            "--serve",
            variant,
            "--port",
            str(port),
            *(["--read"] if read else []),
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        **popen,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the {variant} server did not start")


# -- load generators -------------------------------------------------------------------------


def load_wrk(
    port: int, headers: dict[str, str], duration: int, connections: int
) -> tuple[float, int]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*args, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    count = re.search(r"([0-9]+) requests in", out)
    if rate is None or count is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), int(count.group(1))


def load_aiohttp(
    port: int, headers: dict[str, str], requests: int, connections: int
) -> tuple[float, int]:
    import aiohttp

    async def run() -> float:
        url = f"http://127.0.0.1:{port}/"
        left = requests
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"status {resp.status}")

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return requests / (time.perf_counter() - start)

    return asyncio.run(run()), requests


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- micro: direct ASGI calls ------------------------------------------------------------------


def scope_for(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench"),
            (b"accept", b"*/*"),
            *((k.encode(), v.encode()) for k, v in headers.items()),
        ],
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello, world"})


def micro(calls: int, rounds: int) -> None:
    from resilient.asgi import GrayMiddleware

    headers_by_kind = {
        "no gray headers": {},
        "x-gray header": {"x-gray": "canary"},
        "traceparent + tracestate": TRACE_ONLY,
        "tracestate + deadline": GRAY_HEADERS,
    }

    async def per_call(app: Callable[..., Awaitable[None]], scope: dict[str, Any]) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await app(scope, receive, send)
        return (time.perf_counter() - start) / calls

    async def run() -> None:
        apps = {
            "bare ASGI app": (bare, GrayMiddleware(bare)),
            "Starlette hello-world": (build_app(False), build_app(True)),
        }
        for title, (plain, gray) in apps.items():
            print(f"\nmicro, direct ASGI calls into a {title} (best of {rounds} x {calls})")
            print(f"  {'request':28} {'without':>10} {'with':>10} {'overhead':>10} {'ratio':>7}")
            for kind, headers in headers_by_kind.items():
                scope = scope_for(headers)
                without, with_ = [], []
                for _ in range(rounds):
                    without.append(await per_call(plain, scope))
                    with_.append(await per_call(gray, scope))
                a, b = min(without), min(with_)
                print(
                    f"  {kind:28} {a * 1e6:8.2f}us {b * 1e6:8.2f}us "
                    f"{(b - a) * 1e6:8.2f}us {a / b:7.3f}"
                )

    asyncio.run(run())


# -- instructions per request, under valgrind --------------------------------------------------


def server_instructions(
    variant: str, headers: dict[str, str], requests: int, read: bool = False
) -> int:
    """Instructions a server runs to start, answer ``requests`` requests and stop."""
    valgrind = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    proc, port = start_server(variant, valgrind, wait=300, read=read, stderr=subprocess.PIPE)
    try:
        load_aiohttp(port, headers, requests, 8)
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn stops cleanly; valgrind then reports
        _, err = proc.communicate(timeout=300)
    found = re.search(rb"Collected : (\d+)", err)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{err[-2000:].decode()}")
    return int(found.group(1))


def instructions(small: int, large: int, read: bool = False) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    handler = ", the handler reads the tag" if read else ""
    print(f"\ninstructions per request under callgrind ({large} - {small} requests{handler})")
    print(f"  {'traffic':8} {'plain':>10} {'gray':>10} {'ratio':>7} {'overhead':>9}")
    for kind, headers in KINDS.items():
        cost = {}
        for variant in ("plain", "gray"):
            small_run = server_instructions(variant, headers, small, read)
            large_run = server_instructions(variant, headers, large, read)
            cost[variant] = (large_run - small_run) / (large - small)
        plain, gray = cost["plain"], cost["gray"]
        print(f"  {kind:8} {plain:10,.0f} {gray:10,.0f} {plain / gray:7.3f} {gray - plain:+9,.0f}")


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--requests", type=int, default=20000, help="requests per aiohttp run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--load", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--micro-calls", type=int, default=100_000)
    parser.add_argument("--instructions", action="store_true", help="count, under valgrind")
    parser.add_argument("--small", type=int, default=200, help="requests (--instructions)")
    parser.add_argument("--large", type=int, default=1200, help="requests (--instructions)")
    parser.add_argument("--serve", choices=["plain", "gray"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--read", action="store_true", help="the handler reads the tag")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.read)
        return
    if args.instructions:
        instructions(args.small, args.large, args.read)
        return

    micro(args.micro_calls, args.rounds)

    tool = args.load
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "aiohttp"

    def load(port: int, headers: dict[str, str]) -> tuple[float, int]:
        if tool == "wrk":
            return load_wrk(port, headers, args.duration, args.connections)
        return load_aiohttp(port, headers, args.requests, args.connections)

    servers = {variant: start_server(variant, read=args.read) for variant in ("plain", "gray")}
    try:
        for variant in servers:  # warm up both
            load(servers[variant][1], GRAY_HEADERS)
        print(
            f"\nend to end: uvicorn (one process each) + Starlette hello-world, load by {tool}, "
            f"{args.connections} connections, {args.rounds} interleaved rounds"
        )
        print(
            f"  {'traffic':8} {'plain rps':>10} {'gray rps':>10} {'ratio':>7} {'overhead':>9}"
            f" | {'plain CPU':>10} {'gray CPU':>10} {'ratio':>7} {'overhead':>9}"
        )
        for kind, headers in KINDS.items():
            rps: dict[str, list[float]] = {"plain": [], "gray": []}
            cpu: dict[str, list[float]] = {"plain": [], "gray": []}
            ratios = []
            for i in range(args.rounds):
                order = ("plain", "gray") if i % 2 == 0 else ("gray", "plain")
                got = {}
                for variant in order:
                    proc, port = servers[variant]
                    before = cpu_seconds(proc.pid)
                    rate, count = load(port, headers)
                    cpu[variant].append((cpu_seconds(proc.pid) - before) / count)
                    rps[variant].append(rate)
                    got[variant] = rate
                ratios.append(got["gray"] / got["plain"])
            plain, gray = statistics.median(rps["plain"]), statistics.median(rps["gray"])
            plain_cpu, gray_cpu = statistics.median(cpu["plain"]), statistics.median(cpu["gray"])
            print(
                f"  {kind:8} {plain:10.0f} {gray:10.0f} {statistics.median(ratios):7.3f} "
                f"{(1 / gray - 1 / plain) * 1e6:7.1f}us | {plain_cpu * 1e6:8.1f}us "
                f"{gray_cpu * 1e6:8.1f}us {plain_cpu / gray_cpu:7.3f} "
                f"{(gray_cpu - plain_cpu) * 1e6:7.1f}us"
            )
            print("           wall ratio per round: " + " ".join(f"{r:.3f}" for r in ratios))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
