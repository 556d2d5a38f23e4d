"""Start the three services, send a bounded load through the front, stop them, reconcile.

    python -m examples.shadow [--quotes 400] [--orders 60] [--out DIR] [--fail-above 0.05]

1. ``services.py stable``, ``services.py candidate`` and ``front.py`` start
   as child processes; each binds a free 127.0.0.1 port and prints it.
2. ``--quotes`` GET requests for random SKUs and ``--orders`` POSTed orders
   go to the front, 8 at a time, each with a ``traceparent`` of its own
   (seeded: the same trace ids, so the same draws, on every run).
3. The front, then the two services, are stopped by their process handles
   (SIGTERM; the front records its last mirrors before it exits).
4. ``resilient reconcile DIR/shadow.jsonl --fail-above RATE`` prints the
   report; this script exits with its status: 5 when the gate fails, which
   it should with this candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a child may take to start, or to stop after SIGTERM.
PATIENCE = 20.0


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    """A child ``python -m examples.shadow.<args>`` and the URL it says it listens on."""
    child = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # the child prints one line once it listens (or exits)
    if not line.startswith("listening "):
        stop(child)
        raise RuntimeError(f"{' '.join(args)} did not start (exit status {child.returncode})")
    return child, line.split()[1]


def stop(child: subprocess.Popen[str]) -> None:
    """SIGTERM the child by its handle; kill it if it has not exited in time."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if child.stdout is not None:
        child.stdout.close()


async def load(front: str, quotes: int, orders: int, seed: int) -> dict[int, int]:
    """Send the requests, 8 at a time; the count of answers by status."""
    rng = random.Random(seed)
    jobs: list[tuple[str, str, object]] = [
        ("GET", f"/quote/{rng.randrange(1, 500)}", None) for _ in range(quotes)
    ]
    jobs += [
        ("POST", f"/orders/{n}", {"sku": rng.randrange(1, 500), "qty": rng.randrange(1, 4)})
        for n in range(1, orders + 1)
    ]
    rng.shuffle(jobs)
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[tuple[str, str, object]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            method, path, body = queue.get_nowait()
            trace = f"{rng.getrandbits(128):032x}"
            headers = {"traceparent": f"00-{trace}-{rng.getrandbits(64):016x}-01"}
            async with session.request(method, front + path, json=body, headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(8)))
    return statuses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.shadow", description=__doc__)
    parser.add_argument("--quotes", type=int, default=400, help="GET requests to send")
    parser.add_argument("--orders", type=int, default=60, help="orders to POST (dual-written)")
    parser.add_argument("--out", type=Path, default=Path(".resilient/shadow-example"))
    parser.add_argument("--fail-above", default="0.05", help="the gate's rate")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = (args.out / "shadow.jsonl").resolve()
    for old in args.out.glob("shadow.jsonl*"):
        old.unlink()  # a fresh file: the report is this run's alone

    children: list[subprocess.Popen[str]] = []
    try:
        stable_proc, stable = start("examples.shadow.services", "stable")
        children.append(stable_proc)
        candidate_proc, candidate = start("examples.shadow.services", "candidate")
        children.append(candidate_proc)
        front_proc, front = start(
            "examples.shadow.front", "--stable", stable, "--candidate", candidate,
            "--records", str(records),
        )  # fmt: skip
        children.insert(0, front_proc)  # stopped first: it flushes while the others still answer
        print(f"stable {stable}, candidate {candidate}, front {front}")
        started = time.perf_counter()
        statuses = asyncio.run(load(front, args.quotes, args.orders, args.seed))
        took = time.perf_counter() - started
        print(f"sent {sum(statuses.values())} requests in {took:.1f} s: statuses {statuses}")
    finally:
        for child in children:
            stop(child)
    print(f"records: {records}\n")
    command = ["reconcile", str(records), "--fail-above", args.fail_above]
    print("$ resilient " + " ".join(command), flush=True)
    done = subprocess.run([sys.executable, "-m", "resilient", *command], check=False)
    print(f"(exit status {done.returncode})")
    return done.returncode
