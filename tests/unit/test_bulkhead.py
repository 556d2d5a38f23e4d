"""Bulkhead: the limit holds in threads and tasks, the queue is bounded, rejections are typed.

Queue waits use real (short, generously bounded) time only where a test must
see a waiter time out; everything else is ordered by events, not by sleeps.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import pytest

from resilient.bulkhead import Bulkhead
from resilient.deadline import deadline
from resilient.errors import BulkheadFullError, ConfigError, DeadlineExceeded, RejectedError


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    """Spin (briefly sleeping) until ``predicate()`` holds; fail after ``timeout``."""
    give_up = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < give_up, "condition not reached in time"
        time.sleep(0.001)


def test_the_limit_holds_and_rejections_are_typed() -> None:
    bh = Bulkhead(2)
    with bh, bh:
        assert bh.active == 2
        with pytest.raises(BulkheadFullError) as caught, bh:
            pass
    assert isinstance(caught.value, RejectedError)
    assert caught.value.limit == 2
    assert bh.active == 0
    with bh:
        assert bh.active == 1


def test_try_enter_takes_a_free_slot_or_none_and_never_queues() -> None:
    bh = Bulkhead(1, queue=3)
    assert bh.try_enter()
    assert not bh.try_enter()  # full: refused at once, though the queue has room
    assert (bh.active, bh.queued) == (1, 0)
    bh.__exit__(None, None, None)
    assert bh.try_enter()
    bh.__exit__(None, None, None)
    assert bh.active == 0


def test_a_failing_call_gives_its_slot_back() -> None:
    bh = Bulkhead(1)

    @bh
    def boom() -> None:
        raise ValueError

    for _ in range(3):
        with pytest.raises(ValueError):
            boom()
    assert bh.active == 0


def test_decorated_functions_keep_their_metadata() -> None:
    bh = Bulkhead(1)

    def f() -> int:
        """Doc."""
        return 1

    async def g() -> int:
        return 2

    wf, wg = bh(f), bh(g)
    assert (wf.__name__, wf.__doc__, wf.__wrapped__) == ("f", "Doc.", f)  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(wg) and not inspect.iscoroutinefunction(wf)


async def test_async_limit_and_release() -> None:
    bh = Bulkhead(2)
    gate = asyncio.Event()

    @bh
    async def hold() -> str:
        await gate.wait()
        return "done"

    running = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert bh.active == 2
    with pytest.raises(BulkheadFullError):
        await hold()
    gate.set()
    assert await asyncio.gather(*running) == ["done", "done"]
    assert bh.active == 0
    assert await hold() == "done"


async def test_async_queue_is_bounded_and_served_in_order() -> None:
    bh = Bulkhead(1, queue=2)
    order: list[str] = []
    gate = asyncio.Event()

    async def use(name: str) -> None:
        async with bh:
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(use(n)) for n in ("b", "c")]
    await asyncio.sleep(0)
    assert (bh.active, bh.queued) == (1, 2)
    with pytest.raises(BulkheadFullError):
        await use("d")  # the queue is full: rejected at once
    gate.set()
    await asyncio.gather(first, *queued)
    assert order == ["a", "b", "c"]
    assert (bh.active, bh.queued) == (0, 0)


async def test_async_queue_timeout_rejects() -> None:
    bh = Bulkhead(1, queue=1, queue_timeout=0.01)
    async with bh:
        started = time.monotonic()
        with pytest.raises(BulkheadFullError):
            async with bh:
                pass
        assert time.monotonic() - started < 5.0
        assert bh.queued == 0
    assert bh.active == 0


async def test_a_cancelled_waiter_leaves_and_the_next_one_is_served() -> None:
    bh = Bulkhead(1, queue=2)
    gate = asyncio.Event()
    served: list[str] = []

    async def use(name: str) -> None:
        async with bh:
            served.append(name)
            await gate.wait()

    holder = asyncio.create_task(use("a"))
    await asyncio.sleep(0)
    b = asyncio.create_task(use("b"))
    c = asyncio.create_task(use("c"))
    await asyncio.sleep(0)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert bh.queued == 1
    gate.set()
    await asyncio.wait_for(asyncio.gather(holder, c), timeout=10)
    assert served == ["a", "c"]


async def test_a_woken_waiter_that_is_cancelled_passes_its_wake_up_on() -> None:
    bh = Bulkhead(1, queue=2)
    served: list[str] = []

    async def use(name: str) -> None:
        async with bh:
            served.append(name)

    await bh.__aenter__()  # this task holds the one slot
    b = asyncio.create_task(use("b"))
    c = asyncio.create_task(use("c"))
    await asyncio.sleep(0)
    assert bh.queued == 2
    await bh.__aexit__(None, None, None)  # the release wakes b (no await in between) ...
    b.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await b
    await asyncio.wait_for(c, timeout=10)
    assert served == ["c"]
    assert (bh.active, bh.queued) == (0, 0)


async def test_the_deadline_bounds_an_async_queue_wait() -> None:
    bh = Bulkhead(1, queue=1)
    async with bh:
        with pytest.raises(DeadlineExceeded):
            async with deadline(0.01), bh:
                pass
        assert bh.queued == 0


def test_threads_queue_and_are_woken() -> None:
    bh = Bulkhead(1, queue=1, queue_timeout=30.0)
    release = threading.Event()
    got_it = threading.Event()

    def holder() -> None:
        with bh:
            release.wait(30)

    def waiter() -> None:
        with bh:
            got_it.set()

    t1 = threading.Thread(target=holder)
    t1.start()
    wait_until(lambda: bh.active == 1)
    t2 = threading.Thread(target=waiter)
    t2.start()
    wait_until(lambda: bh.queued == 1)
    with pytest.raises(BulkheadFullError):
        bh.__enter__()  # the one queue place is taken
    release.set()
    t1.join(30)
    t2.join(30)
    assert got_it.is_set()
    assert (bh.active, bh.queued) == (0, 0)


def test_a_thread_waits_no_longer_than_queue_timeout() -> None:
    bh = Bulkhead(1, queue=1, queue_timeout=0.01)
    with bh:
        started = time.monotonic()
        with pytest.raises(BulkheadFullError):
            bh.__enter__()
        assert time.monotonic() - started < 5.0
        assert bh.queued == 0


def test_a_thread_with_no_deadline_left_is_rejected_without_waiting() -> None:
    now = [10.0]
    bh = Bulkhead(1, queue=1, queue_timeout=60.0, clock=lambda: now[0])
    with bh, deadline(1.0, clock=lambda: now[0]):
        now[0] += 1.0
        with pytest.raises(BulkheadFullError):
            bh.__enter__()
    assert bh.active == 0


def test_the_limit_holds_under_many_threads() -> None:
    limit, threads, rounds = 3, 12, 300
    bh = Bulkhead(limit)
    lock = threading.Lock()
    inside = peak = admitted = rejected = 0
    start = threading.Barrier(threads)

    @bh
    def work() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0)
        with lock:
            inside -= 1

    def run() -> None:
        nonlocal admitted, rejected
        start.wait()
        for _ in range(rounds):
            try:
                work()
            except BulkheadFullError:
                with lock:
                    rejected += 1
            else:
                with lock:
                    admitted += 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert peak <= limit
    assert admitted + rejected == threads * rounds
    assert bh.active == 0


@pytest.mark.parametrize(
    ("field", "args", "kwargs"),
    [
        ("limit", (0,), {}),
        ("limit", (True,), {}),
        ("limit", (2.5,), {}),
        ("queue", (1,), {"queue": -1}),
        ("queue_timeout", (1,), {"queue_timeout": -0.5}),
        ("queue_timeout", (1,), {"queue_timeout": float("nan")}),
    ],
)
def test_bad_parameters_name_the_field(
    field: str, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigError) as caught:
        Bulkhead(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_repr_gives_the_counts() -> None:
    bh = Bulkhead(4, queue=2)
    with bh:
        assert repr(bh) == "<Bulkhead 1/4 active, 0/2 queued>"
