"""Exact counts under threads and coroutines; exactly N probes however many race."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from resilient import BreakerConfig, CircuitBreaker, CircuitOpenError, State

THREADS = 8
CALLS_PER_THREAD = 100_000


def test_counts_are_exact_with_eight_threads() -> None:
    # A window far longer than the test, so nothing expires while we count.
    br = CircuitBreaker("threads", BreakerConfig(window="time", window_size=3600, buckets=1))
    call = br(lambda: None)
    start = threading.Barrier(THREADS)

    def worker() -> None:
        start.wait()
        for _ in range(CALLS_PER_THREAD):
            call()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = br.snapshot()
    assert snap.calls == THREADS * CALLS_PER_THREAD
    assert snap.running == 0


def test_failures_are_exact_with_threads() -> None:
    br = CircuitBreaker(
        "thread-failures",
        BreakerConfig(window="count", window_size=1_000_000, minimum_calls=1_000_000),
    )

    @br
    def flaky(i: int) -> None:
        if i % 4 == 0:
            raise OSError

    def worker() -> None:
        for i in range(20_000):
            with contextlib.suppress(OSError):
                flaky(i)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = br.snapshot()
    assert (snap.calls, snap.failures) == (THREADS * 20_000, THREADS * 5_000)


async def test_counts_are_exact_with_ten_thousand_coroutines() -> None:
    br = CircuitBreaker("coros", BreakerConfig(window="time", window_size=3600, buckets=1))

    @br
    async def call(i: int) -> None:
        await asyncio.sleep(0)
        if i % 10 == 0:
            raise ConnectionError

    results = await asyncio.gather(*(call(i) for i in range(10_000)), return_exceptions=True)
    snap = br.snapshot()
    assert sum(isinstance(r, ConnectionError) for r in results) == 1_000
    assert (snap.calls, snap.failures, snap.running) == (10_000, 1_000, 0)


async def test_exactly_n_probes_with_a_thousand_racing_coroutines() -> None:
    now = [0.0]
    br = CircuitBreaker(
        "race",
        BreakerConfig(window="count", window_size=10, minimum_calls=1, half_open_calls=7),
        clock=lambda: now[0],
    )
    br.force_open()
    br.reset()
    with contextlib.suppress(OSError):
        br(lambda: (_ for _ in ()).throw(OSError()))()
    assert br.state is State.OPEN
    now[0] = 100.0
    gate = asyncio.Event()
    admitted = 0

    @br
    async def probe() -> None:
        nonlocal admitted
        admitted += 1
        await gate.wait()

    tasks = [asyncio.ensure_future(probe()) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert admitted == 7
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 993
    assert br.state is State.CLOSED


def test_exactly_n_probes_with_racing_threads() -> None:
    now = [0.0]
    br = CircuitBreaker(
        "race-threads",
        BreakerConfig(window="count", window_size=10, minimum_calls=1, half_open_calls=5),
        clock=lambda: now[0],
    )
    with contextlib.suppress(OSError):
        br(lambda: (_ for _ in ()).throw(OSError()))()
    now[0] = 100.0
    start = threading.Barrier(16)
    permits = []
    rejected = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        for _ in range(50):
            try:
                permit = br.acquire()
            except CircuitOpenError:
                with lock:
                    rejected.append(1)
            else:
                with lock:
                    permits.append(permit)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(permits) == 5
    assert len(rejected) == 16 * 50 - 5
