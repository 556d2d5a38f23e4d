"""Telemetry against the real OpenTelemetry SDK, with providers passed in (no global set).

Metrics are read from an ``InMemoryMetricReader``, spans from an
``InMemorySpanExporter``; breaker time comes from an injected clock. The
no-SDK paths (where nothing may be installed) run in a fresh interpreter
where they depend on the API's global state.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, NoOpTracerProvider

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConcurrencyLimit,
    Hub,
    LimitExceededError,
    State,
)
from resilient.hub import default_hub
from resilient.telemetry import (
    CALLS,
    DEGRADED,
    DURATION,
    DURATION_BUCKETS,
    LIMIT,
    LIMIT_INFLIGHT,
    LIMIT_REJECTIONS,
    REJECTED_EVENT,
    REJECTIONS,
    STATE,
    STATE_CHANGED_EVENT,
    Instrumentation,
    duration_view,
    instrument,
)

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Metrics:
    """A meter SDK with an in-memory reader; ``points(name)`` keyed by attributes."""

    def __init__(self, **options: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], **options)

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        data = self.reader.get_metrics_data()
        found: dict[frozenset[tuple[str, Any]], Any] = {}
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "resilient"
                for metric in sm.metrics:
                    if metric.name == name:
                        for p in metric.data.data_points:
                            found[frozenset((p.attributes or {}).items())] = p
        return found

    def values(self, name: str, **match: str) -> dict[frozenset[tuple[str, Any]], int]:
        """Data point values whose attributes include ``match``, without those keys."""
        out = {}
        for attrs, p in self.points(name).items():
            if set(match.items()) <= attrs:
                out[frozenset(a for a in attrs if a[0] not in match)] = p.value
        return out


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def events(self, span_name: str) -> list[tuple[str, dict[str, Any]]]:
        spans: list[ReadableSpan] = [
            s for s in self.exporter.get_finished_spans() if s.name == span_name
        ]
        assert len(spans) == 1
        return [(e.name, dict(e.attributes or {})) for e in spans[0].events]


@pytest.fixture
def sdk_metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


@pytest.fixture
def sdk_spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    return Hub(
        "telemetry",
        clock=clock,
        wall=lambda: 1.7e9,
        rng=lambda: 0.5,  # no jitter: open for exactly open_duration
        defaults={
            "window": "count",
            "window_size": 10,
            "minimum_calls": 4,
            "slow_call_duration": 1.0,
            "open_duration": 5.0,
            "half_open_calls": 2,
        },
    )


@pytest.fixture
def dep(hub: Hub) -> CircuitBreaker:
    """The breaker most tests drive, created before the hub is instrumented."""
    return hub.breaker("dep", ignore_exceptions=(KeyError,))


@pytest.fixture
def handle(
    hub: Hub, dep: CircuitBreaker, sdk_metrics: Metrics, sdk_spans: Spans
) -> Iterator[Instrumentation]:
    with instrument(
        hub, meter_provider=sdk_metrics.provider, tracer_provider=sdk_spans.provider
    ) as h:
        yield h


def taking(clock: Clock, seconds: float, error: BaseException | None = None) -> Callable[[], str]:
    """A call that takes ``seconds`` of the injected clock, then returns or raises."""

    def call() -> str:
        clock.advance(seconds)
        if error is not None:
            raise error
        return "ok"

    return call


def attempt(br: CircuitBreaker, fn: Callable[[], str]) -> object:
    try:
        return br(fn)()
    except Exception as exc:
        return exc


def trip(br: CircuitBreaker, clock: Clock) -> None:
    for _ in range(4):
        attempt(br, taking(clock, 0.01, OSError("down")))
    assert br.state is State.OPEN


def observers(br: CircuitBreaker) -> int:
    """How many call observers a breaker has (each one takes it off the lock-free path)."""
    return len(br._observers)


def key(**attrs: str) -> frozenset[tuple[str, str]]:
    return frozenset(attrs.items())


# ---------------------------------------------------------------------- metrics


def test_calls_are_counted_by_outcome(
    dep: CircuitBreaker, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    br = dep
    assert handle.metrics and handle.recording
    for _ in range(3):
        attempt(br, taking(clock, 0.01))
    attempt(br, taking(clock, 1.5))  # slower than slow_call_duration
    attempt(br, taking(clock, 0.01, OSError("refused")))
    attempt(br, taking(clock, 2.0, OSError("timed out")))
    attempt(br, taking(clock, 0.01, KeyError("ignored")))

    assert sdk_metrics.values(CALLS, breaker="dep") == {
        key(outcome="success"): 3,
        key(outcome="slow_success"): 1,
        key(outcome="failure"): 1,
        key(outcome="slow_failure"): 1,
        key(outcome="not_counted"): 1,
    }
    assert br.state is State.CLOSED  # 2 failures in 7 calls: under the threshold


async def test_async_calls_are_counted(
    dep: CircuitBreaker, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    @dep
    async def call() -> int:
        clock.advance(0.002)
        await asyncio.sleep(0)
        return 1

    for _ in range(5):
        await call()
    assert sdk_metrics.values(CALLS, breaker="dep")[key(outcome="success")] == 5


def test_duration_histogram_buckets(
    dep: CircuitBreaker, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    br = dep
    for seconds in (0.0004, 0.0007, 0.25, 0.25, 45.0):
        attempt(br, taking(clock, seconds))

    points = sdk_metrics.points(DURATION)
    fast = points[key(breaker="dep", outcome="success")]
    slow = points[key(breaker="dep", outcome="slow_success")]
    assert isinstance(fast, HistogramDataPoint)
    assert tuple(fast.explicit_bounds) == DURATION_BUCKETS
    counts = list(fast.bucket_counts)
    assert len(counts) == len(DURATION_BUCKETS) + 1
    assert counts[0] == 1  # 0.4 ms: at most 0.5 ms
    assert counts[DURATION_BUCKETS.index(0.0008)] == 1  # 0.7 ms: (0.6 ms, 0.8 ms]
    assert counts[DURATION_BUCKETS.index(0.25)] == 2  # a bound is its bucket's upper end
    assert sum(counts) == 4
    assert fast.sum == pytest.approx(0.5011)
    assert list(slow.bucket_counts)[-1] == 1  # past 30 s: the overflow bucket


def test_buckets_span_half_a_millisecond_to_thirty_seconds_finely() -> None:
    assert DURATION_BUCKETS[0] == 0.0005 and DURATION_BUCKETS[-1] == 30.0
    ratios = [b / a for a, b in itertools.pairwise(DURATION_BUCKETS)]
    assert all(1.0 < r <= 4 / 3 + 1e-9 for r in ratios)


def test_duration_view_applies_the_buckets() -> None:
    # An instrument made without the advisory (as an API before 1.30 makes it)
    # still gets the buckets through the view.
    m = Metrics(views=[duration_view()])
    try:
        m.provider.get_meter("resilient").create_histogram(DURATION, unit="s").record(0.0035)
        (point,) = m.points(DURATION).values()
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS
        assert point.bucket_counts[DURATION_BUCKETS.index(0.004)] == 1
    finally:
        m.provider.shutdown()


def test_rejections_are_counted_by_state_and_reason(
    dep: CircuitBreaker, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    br = dep
    trip(br, clock)
    for _ in range(3):
        assert isinstance(attempt(br, taking(clock, 0.01)), CircuitOpenError)
    br.force_open()
    assert isinstance(attempt(br, taking(clock, 0.01)), CircuitOpenError)

    assert sdk_metrics.values(REJECTIONS, breaker="dep") == {
        key(state="open", reason="open"): 3,
        key(state="forced_open", reason="forced open"): 1,
    }
    # A refused call never ran: it is not a call.
    assert sum(sdk_metrics.values(CALLS, breaker="dep").values()) == 4


def test_state_is_one_for_the_current_state_across_a_trip(
    dep: CircuitBreaker, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    br = dep

    def current() -> dict[str, int]:
        values = sdk_metrics.values(STATE, breaker="dep")
        assert len(values) == len(State)
        return {s.value: values[key(state=s.value)] for s in State}

    def only(state: State) -> dict[str, int]:
        return {s.value: int(s is state) for s in State}

    assert current() == only(State.CLOSED)
    trip(br, clock)
    assert current() == only(State.OPEN)
    clock.advance(5.0)
    attempt(br, taking(clock, 0.01))  # the first probe moves it to HALF_OPEN
    assert current() == only(State.HALF_OPEN)
    attempt(br, taking(clock, 0.01))
    assert current() == only(State.CLOSED)
    br.disable()
    assert current() == only(State.DISABLED)


def test_degraded_is_one_while_the_shared_store_is_unreachable(
    dep: CircuitBreaker, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    class Link:
        def wake(self) -> None:
            pass

    assert sdk_metrics.values(DEGRADED, breaker="dep") == {frozenset(): 0}
    dep.link_store(Link())
    dep.sync_failed()
    assert sdk_metrics.values(DEGRADED, breaker="dep") == {frozenset(): 1}


def test_a_hubs_limits_report_their_limit_inflight_and_rejections(
    hub: Hub, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    limit = ConcurrencyLimit(initial=2, min=1, max=2)
    hub.add_limit("payments:443", limit)
    first = limit.acquire()
    limit.acquire()
    with pytest.raises(LimitExceededError):
        limit.acquire()
    one = frozenset()
    assert sdk_metrics.values(LIMIT, limit="payments:443") == {one: 2}
    assert sdk_metrics.values(LIMIT_INFLIGHT, limit="payments:443") == {one: 2}
    assert sdk_metrics.values(LIMIT_REJECTIONS, limit="payments:443") == {one: 1}
    limit.release(first)
    assert sdk_metrics.values(LIMIT_INFLIGHT, limit="payments:443") == {one: 1}


# ---------------------------------------------------------------------- span events


def test_transitions_and_rejections_are_events_on_the_current_span(
    dep: CircuitBreaker, clock: Clock, sdk_spans: Spans, handle: Instrumentation
) -> None:
    br = dep
    with sdk_spans.tracer.start_as_current_span("tripping"):
        trip(br, clock)
    with sdk_spans.tracer.start_as_current_span("refused"):
        clock.advance(1.0)
        attempt(br, taking(clock, 0.01))
    with sdk_spans.tracer.start_as_current_span("forced"):
        br.force_open()
        attempt(br, taking(clock, 0.01))

    assert sdk_spans.events("tripping") == [
        (
            STATE_CHANGED_EVENT,
            {
                "breaker": "dep",
                "old": "closed",
                "new": "open",
                "reason": "failure rate 100% >= 50%",
            },
        )
    ]
    assert sdk_spans.events("refused") == [
        (
            REJECTED_EVENT,
            {"breaker": "dep", "state": "open", "reason": "open", "retry_after": 4.0},
        )
    ]
    assert sdk_spans.events("forced") == [
        (
            STATE_CHANGED_EVENT,
            {"breaker": "dep", "old": "open", "new": "forced_open", "reason": "forced open"},
        ),
        # retry_after is infinite in FORCED_OPEN: left out rather than exported as inf
        (REJECTED_EVENT, {"breaker": "dep", "state": "forced_open", "reason": "forced open"}),
    ]


def test_no_event_on_a_span_that_does_not_record(
    hub: Hub, clock: Clock, handle: Instrumentation
) -> None:
    class Spy(NonRecordingSpan):
        def __init__(self) -> None:
            super().__init__(INVALID_SPAN_CONTEXT)
            self.added: list[str] = []

        def add_event(self, name: str, *args: Any, **kwargs: Any) -> None:
            self.added.append(name)

    br = hub.breaker("dep")
    spy = Spy()
    with trace.use_span(spy):
        trip(br, clock)
        attempt(br, taking(clock, 0.01))
    assert spy.added == []
    # And with no span at all (the invalid span is current), nothing fails.
    attempt(br, taking(clock, 0.01))


def test_spans_only_leave_the_success_path_alone(hub: Hub, clock: Clock, sdk_spans: Spans) -> None:
    br = hub.breaker("dep")
    with instrument(
        hub, meter_provider=NoOpMeterProvider(), tracer_provider=sdk_spans.provider
    ) as h:
        assert h.spans and not h.metrics
        assert observers(br) == 0  # no call observer: the success path stays lock-free
        with sdk_spans.tracer.start_as_current_span("tripping"):
            trip(br, clock)
    assert [name for name, _ in sdk_spans.events("tripping")] == [STATE_CHANGED_EVENT]


# ---------------------------------------------------------------------- no SDK


def test_without_an_sdk_nothing_is_installed(hub: Hub) -> None:
    before = hub.breaker("before")
    h = instrument(hub, meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider())
    after = hub.breaker("after")
    assert not h.recording and not h.metrics and not h.spans
    for br in (before, after):
        assert observers(br) == 0
        assert br._listeners == ()
    h.close()


def test_a_disabled_sdk_installs_nothing(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # read when a provider is built
    meters, tracers = MeterProvider(), TracerProvider()
    br = hub.breaker("dep")
    with instrument(hub, meter_provider=meters, tracer_provider=tracers) as h:
        assert not h.recording
        assert observers(br) == 0 and br._listeners == ()


def test_the_default_hub_is_the_default() -> None:
    with instrument(meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider()) as h:
        assert h.hub is default_hub()


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_resilient_loads_no_opentelemetry() -> None:
    out = run_python(
        """
        import sys
        import resilient
        resilient.breaker("x")
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
        """
    )
    assert out.strip() == "[]"


def test_global_proxy_installs_nothing_until_instrumented_after_the_sdk() -> None:
    # The API's default: a proxy provider with no SDK behind it.
    out = run_python(
        """
        import resilient
        from resilient.telemetry import instrument
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        hub = resilient.Hub()
        br = hub.breaker("dep")
        early = instrument(hub)
        assert not early.recording
        assert br._observers == () and br._listeners == ()

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert br._observers == ()  # an SDK set later is not noticed by itself

        late = instrument(hub)  # what the docs say to do: instrument after the SDK
        assert late.metrics and not late.spans
        br(lambda: 1)()
        data = reader.get_metrics_data()
        (calls,) = [
            m for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics if m.name == "resilient.breaker.calls"
        ]
        print({p.attributes["outcome"]: p.value for p in calls.data.data_points})
        """
    )
    assert "'success': 1" in out


# ---------------------------------------------------------------------- following breakers


class HookedHub(Hub):
    """A hub with the creation hook telemetry uses when a hub offers one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks: list[Callable[[CircuitBreaker], object]] = []

    def add_breaker_hook(self, hook: Callable[[CircuitBreaker], object]) -> None:
        self.hooks.append(hook)
        for br in self.breakers().values():
            hook(br)

    def remove_breaker_hook(self, hook: Callable[[CircuitBreaker], object]) -> None:
        self.hooks.remove(hook)

    def breaker(self, name: str, **options: Any) -> CircuitBreaker:
        known = name in self.breakers()
        br = super().breaker(name, **options)
        if not known:
            for hook in self.hooks:
                hook(br)
        return br


def test_breakers_created_later_are_counted_from_their_first_call(
    clock: Clock, sdk_metrics: Metrics
) -> None:
    hub = HookedHub(clock=clock)
    hub.breaker("early")
    with instrument(hub, meter_provider=sdk_metrics.provider, tracer_provider=NoOpTracerProvider()):
        late = hub.breaker("late")
        attempt(late, taking(clock, 0.01))
        assert sdk_metrics.values(CALLS, breaker="late")[key(outcome="success")] == 1
        assert sdk_metrics.values(STATE, breaker="early")[key(state="closed")] == 1
    assert hub.hooks == []  # closing took the hook off


def test_a_later_breaker_is_instrumented_as_the_hub_creates_it(
    hub: Hub, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    late = hub.breaker("late")
    assert observers(late) == 1  # the hub's breaker hook, before it is handed out
    assert sdk_metrics.values(STATE, breaker="late")[key(state="closed")] == 1
    assert observers(late) == 1
    attempt(late, taking(clock, 0.01))
    assert sdk_metrics.values(CALLS, breaker="late")[key(outcome="success")] == 1


def test_a_later_breaker_reports_its_first_event(
    hub: Hub, clock: Clock, sdk_metrics: Metrics, handle: Instrumentation
) -> None:
    late = hub.breaker("late")
    late.force_open()
    attempt(late, taking(clock, 0.01))
    assert sdk_metrics.values(REJECTIONS, breaker="late") == {
        key(state="forced_open", reason="forced open"): 1
    }


# ---------------------------------------------------------------------- lifecycle


def test_close_stops_reporting(
    hub: Hub, clock: Clock, sdk_metrics: Metrics, sdk_spans: Spans
) -> None:
    br = hub.breaker("dep")
    h = instrument(hub, meter_provider=sdk_metrics.provider, tracer_provider=sdk_spans.provider)
    attempt(br, taking(clock, 0.01))
    h.close()
    h.close()  # idempotent
    assert not h.recording
    assert br._listeners == ()  # the breaker dropped it
    assert hub._listeners == ()  # and so did the hub
    attempt(br, taking(clock, 0.01))
    with sdk_spans.tracer.start_as_current_span("after"):
        trip(br, clock)
    assert sdk_metrics.points(CALLS) == {}
    assert sdk_spans.events("after") == []


def test_instrumenting_again_replaces_and_never_double_counts(
    hub: Hub, clock: Clock, sdk_metrics: Metrics
) -> None:
    br = hub.breaker("dep")
    first = instrument(hub, meter_provider=sdk_metrics.provider)
    second = instrument(hub, meter_provider=sdk_metrics.provider)
    assert not first.recording and second.recording
    for _ in range(2):
        attempt(br, taking(clock, 0.01))
    assert sdk_metrics.values(CALLS, breaker="dep")[key(outcome="success")] == 2
    second.close()


def test_two_hubs_share_one_meter(clock: Clock, sdk_metrics: Metrics) -> None:
    a, b = Hub("a", clock=clock), Hub("b", clock=clock)
    one, two = a.breaker("one"), b.breaker("two")
    with (
        instrument(a, meter_provider=sdk_metrics.provider, tracer_provider=NoOpTracerProvider()),
        instrument(b, meter_provider=sdk_metrics.provider, tracer_provider=NoOpTracerProvider()),
    ):
        attempt(one, taking(clock, 0.01))
        for _ in range(2):
            attempt(two, taking(clock, 0.01))
        calls = sdk_metrics.values(CALLS, outcome="success")
    assert calls == {key(breaker="one"): 1, key(breaker="two"): 2}


def test_counts_are_exact_under_threads(hub: Hub, sdk_metrics: Metrics) -> None:
    threads, calls = 8, 5_000
    real = Hub("threads")  # the real clock: calls end concurrently
    br = real.breaker("dep")
    wrapped = br(lambda: None)
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            wrapped()

    with instrument(
        real, meter_provider=sdk_metrics.provider, tracer_provider=NoOpTracerProvider()
    ):
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        counted = sdk_metrics.values(CALLS, breaker="dep")
        (histogram,) = sdk_metrics.points(DURATION).values()
    assert sum(counted.values()) == threads * calls
    assert histogram.count == threads * calls
