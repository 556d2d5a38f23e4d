"""``Shadow`` itself, no server: the draw, sync functions, refusals, and the OpenTelemetry rim.

Latencies come from an injected clock that only the candidate moves, so
they are exact; the candidates' timeouts run on real time (the reporter's
thread), with bounds far from anything the assertions depend on.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shadow_support import jsonl_sink, read_records, traced

from resilient.breaker import CircuitBreaker
from resilient.bulkhead import Bulkhead
from resilient.errors import ConfigError
from resilient.gray import bucket
from resilient.shadow import JsonlSink, Shadow


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def never() -> float:
    raise AssertionError("the draw is the trace id's hash, never random, inside a trace")


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[JsonlSink]:
    with jsonl_sink(tmp_path) as jsonl:
        yield jsonl


def wait_for(condition: Any, within: float = 10.0) -> None:
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.005)


# ---------------------------------------------------------------------- the draw


async def test_calls_are_mirrored_by_the_hash_of_their_trace_id(sink: JsonlSink) -> None:
    mirrored: list[int] = []

    async def candidate(n: int) -> int:
        mirrored.append(n)
        return n

    shadow = Shadow("draw", candidate, sample=0.25, noise=0.0, sink=sink, rng=never)

    @shadow
    async def primary(n: int) -> int:
        await asyncio.sleep(0)  # the candidates run meanwhile (else the bulkhead fills)
        return n

    for _ in range(2):  # the same trace is drawn the same way every time
        for n in range(1, 401):
            with traced(n):
                assert await primary(n) == n
    assert await shadow.aflush()
    expected = [n for n in range(1, 401) if bucket(f"{n:032x}") < 2500]
    assert 0.15 < len(expected) / 400 < 0.35
    assert mirrored == expected * 2
    assert [int(r["trace_id"], 16) for r in read_records(sink)] == expected * 2


def test_the_inlined_draw_is_the_percentage_rule_of_the_hex_trace_id() -> None:
    from resilient.shadow._trace import current_trace_id, draw

    assert draw(10_000, lambda: 0.0) == (True, None)  # no trace: random
    assert draw(0, lambda: 0.0) == (False, None)
    for trace_id in (1, 0xFF, 2**64 + 7, 2**127, 2**128 - 1, *range(1000, 1200)):
        with traced(trace_id) as hex_id:
            assert current_trace_id() == hex_id
            for threshold in (0, 1, 1000, 5000, 9999, 10_000):
                assert draw(threshold, never) == (bucket(hex_id) < threshold, hex_id)


async def test_without_a_trace_the_draw_is_random(sink: JsonlSink) -> None:
    mirrored: list[int] = []

    async def candidate(n: int) -> int:
        mirrored.append(n)
        return n

    draws = iter([0.1, 0.9, 0.49, 0.5])
    shadow = Shadow("random", candidate, sample=0.5, noise=0.0, sink=sink, rng=draws.__next__)

    @shadow
    async def primary(n: int) -> int:
        return n

    for n in range(4):
        await primary(n)
    assert await shadow.aflush()
    assert mirrored == [0, 2]
    assert [r["trace_id"] for r in read_records(sink)] == [None, None]


async def test_sample_zero_never_draws_and_may_be_raised_live(sink: JsonlSink) -> None:
    mirrored: list[int] = []

    async def candidate(n: int) -> int:
        mirrored.append(n)
        return -n

    draws: list[float] = []

    def rng() -> float:
        draws.append(0.0)
        return 0.0

    shadow = Shadow("live", candidate, sample=0.0, noise=0.0, sink=sink, rng=rng)

    @shadow
    async def primary(n: int) -> int:
        return n

    assert await primary(1) == 1
    assert draws == []  # nothing drawn at all
    shadow.sample = 1.0
    assert await primary(2) == 2
    assert await shadow.aflush()
    assert (mirrored, len(draws)) == ([2], 1)
    with pytest.raises(ConfigError, match="sample"):
        shadow.sample = 1.5


# ---------------------------------------------------------------------- sync functions


def test_a_sync_candidate_runs_on_a_worker_thread(sink: JsonlSink) -> None:
    clock = Clock(100.0)
    threads: dict[str, threading.Thread] = {}

    def candidate(n: int) -> dict[str, int]:
        threads["candidate"] = threading.current_thread()
        clock.now += 0.25  # only the candidate moves the clock: exact latencies
        return {"n": n, "v": 2}

    shadow = Shadow("sync", candidate, sample=1.0, noise=0.0, sink=sink, clock=clock)

    @shadow
    def primary(n: int) -> dict[str, int]:
        threads["primary"] = threading.current_thread()
        return {"n": n, "v": 1}

    assert primary(7) == {"n": 7, "v": 1}
    assert shadow.flush()
    assert threads["primary"] is threading.current_thread()
    assert threads["candidate"] is not threads["primary"]
    assert threads["candidate"].name.startswith("resilient-shadow-")
    (rec,) = read_records(sink)
    assert (rec["outcome"], rec["diffs"]) == ("mismatch", ["$.v"])
    assert rec["primary"]["latency_ms"] == 0.0
    assert rec["candidate"]["latency_ms"] == 250.0


def test_a_sync_primary_exception_reaches_the_caller_as_is(sink: JsonlSink) -> None:
    raised = KeyError("k")

    def candidate(fail: bool) -> str:
        if fail:
            raise KeyError("another")
        return "fine"

    shadow = Shadow("sync-errors", candidate, sample=1.0, noise=0.0, sink=sink)

    @shadow
    def primary(fail: bool) -> str:
        raise raised

    for fail in (False, True):
        with pytest.raises(KeyError) as info:
            primary(fail)
        assert info.value is raised
    assert shadow.flush()
    found = read_records(sink)
    assert [(r["outcome"], r["diffs"]) for r in found] == [("mismatch", ["$"]), ("match", [])]
    assert {r["primary"]["error"] for r in found} == {"KeyError"}


def test_a_hanging_sync_candidate_is_settled_at_its_timeout_and_holds_its_slot(
    sink: JsonlSink,
) -> None:
    release = threading.Event()
    calls = itertools.count()

    def candidate(n: int) -> int:
        next(calls)
        if n == 1:
            release.wait(30.0)
        return n

    shadow = Shadow("hang", candidate, sample=1.0, noise=0.0, sink=sink, timeout=0.2, bulkhead=1)
    primary = shadow(lambda n: n)
    try:
        assert primary(1) == 1
        assert shadow.flush()  # settled by the timeout while the thread still hangs
        assert primary(2) == 2  # the hanging thread keeps the one slot: dropped, not queued
        assert shadow.flush()
    finally:
        release.set()
    wait_for(lambda: shadow.bulkhead.active == 0)
    assert primary(3) == 3
    assert shadow.flush()
    found = read_records(sink)
    assert [(r["outcome"], r["candidate"]["error"], r["dropped"]) for r in found] == [
        ("error", "TimeoutError", None),
        ("dropped", None, "bulkhead"),
        ("match", None, None),
    ]
    assert found[0]["candidate"]["latency_ms"] == 200.0
    assert next(calls) == 2  # the candidate was called for 1 and 3 only


def test_the_sync_timeout_runs_on_real_time_whatever_the_clock(sink: JsonlSink) -> None:
    # Latencies come from the injected clock; the timeout is enforced by the
    # reporter's thread on real time, so a clock far from time.monotonic must
    # neither fire it at once nor delay it.
    release = threading.Event()

    def candidate(n: int) -> int:
        release.wait(30.0)
        return n

    shadow = Shadow(
        "clocked", candidate, sample=1.0, noise=0.0, sink=sink, timeout=30.0, clock=Clock(-1e9)
    )
    primary = shadow(lambda n: n)
    try:
        assert primary(1) == 1
        assert not shadow.flush(timeout=0.3)  # still running: 30 s have not passed
    finally:
        release.set()
    assert shadow.flush()
    (rec,) = read_records(sink)
    assert (rec["outcome"], rec["candidate"]["error"]) == ("match", None)


def test_a_bulkhead_with_a_queue_still_drops_and_never_waits(sink: JsonlSink) -> None:
    release = threading.Event()

    def candidate(n: int) -> int:
        release.wait(30.0)
        return n

    bulkhead = Bulkhead(1, queue=4)
    shadow = Shadow("queued", candidate, sample=1.0, noise=0.0, sink=sink, bulkhead=bulkhead)
    primary = shadow(lambda n: n)
    results: list[int] = []
    try:
        assert primary(1) == 1
        second = threading.Thread(target=lambda: results.append(primary(2)), daemon=True)
        second.start()
        second.join(10.0)
        assert not second.is_alive(), "the caller waited in the bulkhead's queue"
        assert results == [2]
    finally:
        release.set()
    assert shadow.flush()
    assert [r["dropped"] for r in read_records(sink)] == ["bulkhead", None]


async def test_an_open_breaker_drops_the_mirror(sink: JsonlSink) -> None:
    mirrored: list[int] = []

    async def candidate(n: int) -> int:
        mirrored.append(n)
        return n

    breaker = CircuitBreaker("shadow:open")
    breaker.force_open()
    shadow = Shadow("open", candidate, sample=1.0, noise=0.0, sink=sink, breaker=breaker)

    @shadow
    async def primary(n: int) -> int:
        return n

    assert await primary(1) == 1
    breaker.reset()
    assert await primary(2) == 2
    assert await shadow.aflush()
    assert mirrored == [2]
    assert [(r["outcome"], r["dropped"]) for r in read_records(sink)] == [
        ("dropped", "breaker"),
        ("match", None),
    ]


async def test_cancelling_the_caller_cancels_the_candidate_at_once(sink: JsonlSink) -> None:
    cancelled = asyncio.Event()
    started = {"primary": asyncio.Event(), "candidate": asyncio.Event()}

    async def candidate() -> None:
        started["candidate"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    shadow = Shadow("cancel", candidate, sample=1.0, noise=0.0, sink=sink, timeout=60.0)

    @shadow
    async def primary() -> None:
        started["primary"].set()
        await asyncio.Event().wait()

    caller = asyncio.ensure_future(primary())
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 10.0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 10.0)
    assert await shadow.aflush()
    assert shadow.bulkhead.active == 0
    assert [(r["outcome"], r["dropped"]) for r in read_records(sink)] == [("dropped", "cancelled")]


# ---------------------------------------------------------------------- OpenTelemetry


async def test_the_calls_counter_and_the_span_event_say_each_outcome(sink: JsonlSink) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracers.get_tracer("test")
    stamps = itertools.count()

    async def primary_fn(kind: str) -> dict[str, object]:
        if kind == "noisy":
            return {"at": next(stamps)}  # differs between two calls of the primary
        return {"v": kind}

    async def candidate(kind: str) -> dict[str, object]:
        if kind == "error":
            raise RuntimeError("candidate down")
        if kind == "noisy":
            return {"at": -1}
        return {"v": "changed" if kind == "mismatch" else kind}

    breaker = CircuitBreaker("shadow:otel")
    shadow = Shadow(
        "otel", candidate, sample=1.0, noise=1.0, sink=sink, breaker=breaker, meter_provider=meters
    )
    primary = shadow(primary_fn)
    try:
        for kind in ("match", "mismatch", "noisy", "error", "dropped"):
            if kind == "dropped":
                breaker.force_open()
            with tracer.start_as_current_span(kind):
                await primary(kind)
                assert await shadow.aflush()  # the event lands while the span records
        data = reader.get_metrics_data()
        assert data is not None
        counts = {
            tuple(sorted((p.attributes or {}).items())): p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "resilient.shadow.calls"
            for p in m.data.data_points
        }
        assert counts == {
            (("operation", "otel"), ("outcome", o)): 1
            for o in ("match", "mismatch", "noise", "error", "dropped")
        }
        events = {
            s.name: [(e.name, dict(e.attributes or {})) for e in s.events]
            for s in exporter.get_finished_spans()
        }
        (name, attributes) = events["mismatch"][0]
        assert name == "resilient.shadow"
        assert attributes["outcome"] == "mismatch" and attributes["diffs"] == 1
        assert attributes["trace_id"] == read_records(sink)[1]["trace_id"]
        assert "candidate.latency_ms" in attributes
        assert [events[k][0][1]["outcome"] for k in ("noisy", "error", "dropped")] == [
            "noise",
            "error",
            "dropped",
        ]
        assert events["dropped"][0][1]["dropped"] == "breaker"
    finally:
        meters.shutdown()
        tracers.shutdown()
