"""OpenTelemetry metrics and span events for a hub's breakers: the rim.

This module alone imports OpenTelemetry (the API; the SDK only in
``duration_view``), so ``import resilient`` never loads it. ``instrument(hub)``
is one more listener and call observer on the hub's breakers; the core knows
nothing of OpenTelemetry.

What it costs, and why it is decided once:

- ``instrument()`` looks at the providers when it is called. With no SDK (the
  API's global proxy with nothing set behind it, a ``NoOpMeterProvider``, or
  an SDK disabled by ``OTEL_SDK_DISABLED``) it installs nothing at all: no
  listener, no call observer. Breakers keep their lock-free success path, so
  instrumenting costs nothing per call. An SDK configured *later* is not
  noticed; call ``instrument()`` after configuring it (calling it again
  replaces the earlier instrumentation of that hub, so calling it at start-up
  and again once the SDK is set is harmless).
- With a meter SDK, counts are read at collection time from totals kept here:
  each observable instrument's callback reports cumulative counts, so only
  the latency histogram records per call. A call observer moves its breaker
  to the locked settle path (an int increment and a ``histogram.record``
  there); that is the price of recording, paid only when something records.
- With a tracer SDK, transitions and rejections add an event to the *current*
  span (the span of the call that tripped or was refused), only when that
  span is recording.

Following breakers: the hub's listener reaches every breaker's events, now
and later. Call observers go on the breakers the hub has when instrumented
and, through the hub's ``add_breaker_hook`` where it has one, on each breaker
as it is created; on a hub without that hook a new breaker is found at the
next metric collection or its first event, and its calls before that are not
counted.

Concurrency: observers run on whichever thread or task ends a call. Totals are
plain ints behind dict keys fixed when a breaker is followed, incremented
without a lock as the breaker's own counts are (one bytecode sequence with no
call in it, which standard CPython does not interleave). Rejection totals,
whose keys appear as rejections happen, and the set of followed breakers
change under a lock. One handle per hub is live: ``instrument()`` closes the
hub's earlier one, so nothing is counted twice.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    NoOpMeter,
    Observation,
)
from opentelemetry.trace import NoOpTracer, ProxyTracer, TracerProvider

from resilient import __version__
from resilient.breaker import OUTCOMES, CallObserver, CircuitBreaker
from resilient.events import CallRejected, Event, StateChanged
from resilient.hub import Hub, default_hub
from resilient.state import State

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.view import View

__all__ = [
    "CALLS",
    "DEGRADED",
    "DURATION",
    "DURATION_BUCKETS",
    "LIMIT",
    "LIMIT_INFLIGHT",
    "LIMIT_REJECTIONS",
    "METER_NAME",
    "PROMETHEUS_BUCKETS",
    "REJECTED_EVENT",
    "REJECTIONS",
    "STATE",
    "STATE_CHANGED_EVENT",
    "Instrumentation",
    "PrometheusEndpoint",
    "duration_view",
    "instrument",
    "prometheus",
]

METER_NAME: Final = "resilient"
CALLS: Final = "resilient.breaker.calls"
REJECTIONS: Final = "resilient.breaker.rejections"
STATE: Final = "resilient.breaker.state"
DEGRADED: Final = "resilient.breaker.degraded"
DURATION: Final = "resilient.breaker.duration"
STATE_CHANGED_EVENT: Final = "resilient.breaker.state_changed"
REJECTED_EVENT: Final = "resilient.breaker.rejected"
LIMIT: Final = "resilient.limit"
LIMIT_INFLIGHT: Final = "resilient.limit.inflight"
LIMIT_REJECTIONS: Final = "resilient.limit.rejections"

#: Upper bounds (seconds) of the duration histogram's buckets: 0.5 ms to 30 s,
#: about ten a decade (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8), no two neighbours
#: more than a third apart, so an interpolated P99 or P999 is off by less than
#: a third of its value (usually far less). Slower calls land in the overflow
#: bucket (> 30 s).
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.0006, 0.0008,
    0.001, 0.00125, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006, 0.008,
    0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08,
    0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8,
    1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 12.5, 15.0, 20.0, 25.0, 30.0,
)  # fmt: skip

#: The duration buckets ``prometheus()`` serves: 0.5 ms to 32 s, eight a
#: doubling (each bound 2^(1/8) = 1.09 times the one below), so an estimate
#: that lands anywhere in the right bucket is within 9.1% of the truth, which
#: keeps Prometheus's ``histogram_quantile`` (linear inside a bucket) within
#: 10% for P99 and P999 whatever the distribution. 129 bounds: the price of
#: that guarantee, paid in series per breaker and outcome.
PROMETHEUS_BUCKETS: Final[tuple[float, ...]] = tuple(
    float(f"{0.0005 * 2 ** (k / 8):.4g}") for k in range(129)
)

_STATES = tuple(State)


def instrument(
    hub: Hub | None = None,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Report metrics and span events for every breaker of ``hub``, now and later.

    Args:
        hub: the hub whose breakers to instrument (the default hub if omitted).
        meter_provider: where metrics go (the global one if omitted).
        tracer_provider: whether span events are wanted (the global one if
            omitted); events go on the current span, whoever made it.

    The providers are looked at now: with no SDK behind them nothing is
    installed (see the module docstring). A hub instrumented before is first
    un-instrumented, so counts are never reported twice.
    """
    hub = hub if hub is not None else default_hub()
    meter = _recording_meter(meter_provider)
    spans = _recording_tracer(tracer_provider)
    with _registry_lock:
        ref = _by_hub.get(hub)
        previous = ref() if ref is not None else None
        if previous is not None:
            previous.close()
        instruments = _instruments_for(meter) if meter is not None else None
        handle = Instrumentation(hub, instruments, spans)
        _by_hub[hub] = weakref.ref(handle)
    handle._start()
    return handle


def duration_view() -> View:
    """An SDK ``View`` giving ``resilient.breaker.duration`` the ``DURATION_BUCKETS``.

    SDKs from 1.30 on take the buckets from the instrument's advisory; pass
    this view to ``MeterProvider(views=[...])`` on older ones, or to make the
    buckets win over an exporter's preferred aggregation.
    """
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    return View(
        instrument_name=DURATION,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS),
    )


def prometheus(
    port: int = 9464,
    host: str = "127.0.0.1",
    *,
    hub: Hub | None = None,
    buckets: Iterable[float] = PROMETHEUS_BUCKETS,
) -> PrometheusEndpoint:
    """Serve ``hub``'s breaker metrics for Prometheus to scrape, at ``http://host:port/metrics``.

    Needs ``resilient[prometheus]`` (opentelemetry-sdk and
    opentelemetry-exporter-prometheus). The metrics are the ones
    ``instrument()`` reports, through an SDK ``MeterProvider`` of their own
    (the global provider is left alone) whose duration histogram has
    ``buckets`` (``PROMETHEUS_BUCKETS``: fine enough for a P999). The
    endpoint listens on loopback unless told otherwise; port 0 takes a free one.

    Raises:
        ValueError: a bad port or bucket list.
        OSError: the address cannot be listened on (in use, say).
        ModuleNotFoundError: the extra is not installed (the message says which).
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    bounds = tuple(float(b) for b in buckets)
    if (
        not bounds
        or any(not (0 < b < math.inf) for b in bounds)
        or list(bounds) != sorted(set(bounds))
    ):
        raise ValueError("buckets must be positive finite numbers in increasing order")
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from prometheus_client import CollectorRegistry, start_http_server
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"resilient.telemetry.prometheus needs {exc.name!r}: "
            "pip install 'resilient[prometheus]'",
            name=exc.name,
        ) from None
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    view = View(
        instrument_name=DURATION,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=bounds),
    )
    provider = SdkMeterProvider(metric_readers=[reader], views=[view])
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except BaseException:
        provider.shutdown()
        raise
    handle = instrument(hub, meter_provider=provider)
    return PrometheusEndpoint(handle, provider, server, thread)


class PrometheusEndpoint:
    """What ``prometheus()`` started: the scrape endpoint and its instrumentation.

    Attributes:
        url: where Prometheus scrapes (``http://host:port/metrics``).
        port: the port listened on (the one chosen, for port 0).
        instrumentation: the hub's ``Instrumentation``.

    ``close()`` (or leaving a ``with`` block) stops serving and instrumenting.
    """

    def __init__(
        self,
        handle: Instrumentation,
        provider: MeterProvider,
        server: Any,
        thread: threading.Thread,
    ) -> None:
        self.instrumentation = handle
        self._provider = provider
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port = int(port)
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and instrumenting; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self.instrumentation.close()
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PrometheusEndpoint {self.url} {'closed' if self._server is None else 'serving'}>"


class Instrumentation:
    """What ``instrument()`` installed on one hub; ``close()`` takes it off.

    Attributes:
        hub: the instrumented hub.
        metrics: True when a meter SDK records (call observers are installed).
        spans: True when a tracer SDK records (span events are added).

    A handle that records neither installed nothing. Use it as a context
    manager, or call ``close()`` (alias ``uninstrument()``).
    """

    def __init__(self, hub: Hub, instruments: _Instruments | None, spans: bool) -> None:
        self.hub = hub
        self.metrics = instruments is not None
        self.spans = spans
        self._instruments = instruments
        self._closed = False
        # Followed breakers by name: replaced whole under the lock, read without it.
        self._lock = threading.Lock()
        self._followed: dict[str, _Followed] = {}

    @property
    def recording(self) -> bool:
        """Does this handle report anything (an SDK for metrics or spans)?"""
        return (self.metrics or self.spans) and not self._closed

    def close(self) -> None:
        """Stop reporting; idempotent.

        The hub and its breakers drop this handle's listener, hook and call
        observers where they offer a way to; whatever stays does nothing once
        closed, and the instruments report nothing more for this hub.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            followed = self._followed
        if self._instruments is not None:
            self._instruments.remove(self)
        self.hub.remove_listener(self._on_event)
        self.hub.remove_breaker_hook(self._follow)
        for f in followed.values():
            f.breaker.remove_listener(self._on_event)
            if f.observer is not None:
                f.breaker.unobserve_calls(f.observer)
        with _registry_lock:
            ref = _by_hub.get(self.hub)
            if ref is not None and ref() is self:
                del _by_hub[self.hub]

    uninstrument = close

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"metrics={self.metrics} spans={self.spans}"
        return f"<Instrumentation {self.hub.namespace!r} {state}>"

    # ------------------------------------------------------------------ following breakers

    def _start(self) -> None:
        if not (self.metrics or self.spans):
            return  # no SDK: install nothing, keep every success path lock-free
        if self._instruments is not None:
            self._instruments.add(self)
        self.hub.add_listener(self._on_event)  # events of every breaker, now and later
        self.hub.add_breaker_hook(self._follow)  # every breaker, now and as each is created

    def _follow(self, br: CircuitBreaker) -> None:
        with self._lock:
            if self._closed or br.name in self._followed:
                return
            followed = _Followed(br)
            if self._instruments is not None:
                followed.observer = followed.observe(self._instruments.duration.record, self)
            self._followed = {**self._followed, br.name: followed}
        if followed.observer is not None:
            br.observe_calls(followed.observer)

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if self._closed or not isinstance(event, (CallRejected, StateChanged)):
            return
        if isinstance(event, CallRejected):
            if self.metrics:
                self._count_rejection(event)
            if self.spans:
                attributes: dict[str, str | float] = {
                    "breaker": event.breaker,
                    "state": event.state.value,
                    "reason": event.reason,
                }
                if math.isfinite(event.retry_after):  # inf (FORCED_OPEN) is left out
                    attributes["retry_after"] = event.retry_after
                _add_span_event(REJECTED_EVENT, attributes)
        elif self.spans:
            _add_span_event(
                STATE_CHANGED_EVENT,
                {
                    "breaker": event.breaker,
                    "old": event.old.value,
                    "new": event.new.value,
                    "reason": event.reason,
                },
            )

    def _count_rejection(self, event: CallRejected) -> None:
        followed = self._followed.get(event.breaker)
        if followed is not None:
            key = (event.state.value, event.reason)
            with self._lock:
                followed.rejections[key] = followed.rejections.get(key, 0) + 1

    # ------------------------------------------------------------------ observations

    def _observe_calls(self) -> Iterator[Observation]:
        for f in self._followed.values():
            for outcome, n in f.calls.items():
                yield Observation(n, f.call_attributes[outcome])

    def _observe_rejections(self) -> Iterator[Observation]:
        for f in self._followed.values():
            with self._lock:
                counts = list(f.rejections.items())
            for (state, reason), n in counts:
                yield Observation(n, {"breaker": f.breaker.name, "state": state, "reason": reason})

    def _observe_states(self) -> Iterator[Observation]:
        for f in self._followed.values():
            now = f.breaker.state
            for state, attributes in zip(_STATES, f.state_attributes, strict=True):
                yield Observation(1 if state is now else 0, attributes)

    def _observe_degraded(self) -> Iterator[Observation]:
        for f in self._followed.values():
            yield Observation(int(f.breaker.snapshot().degraded), {"breaker": f.breaker.name})

    def _observe_limits(self, field: str) -> Iterator[Observation]:
        # Read at collection time from the hub's limits: nothing per call.
        for name, limit in self.hub.limits().items():
            yield Observation(getattr(limit.snapshot(), field), {"limit": name})


class _Followed:
    """One followed breaker: its totals and its attribute sets, built once."""

    __slots__ = (
        "breaker",
        "call_attributes",
        "calls",
        "observer",
        "rejections",
        "state_attributes",
    )

    def __init__(self, br: CircuitBreaker) -> None:
        self.breaker = br
        self.observer: CallObserver | None = None
        # Keys fixed here, so the observer's increment never adds one.
        self.calls: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.call_attributes = {o: {"breaker": br.name, "outcome": o} for o in OUTCOMES}
        self.state_attributes = tuple({"breaker": br.name, "state": s.value} for s in _STATES)
        self.rejections: dict[tuple[str, str], int] = {}

    def observe(
        self, record: Callable[[float, dict[str, str]], None], owner: Instrumentation
    ) -> CallObserver:
        """The call observer: count the outcome, record the duration."""
        calls, attributes = self.calls, self.call_attributes

        def observe(outcome: str, seconds: float) -> None:
            if owner._closed:
                return
            calls[outcome] += 1
            record(seconds, attributes[outcome])

        return observe


class _Instruments:
    """The instruments on one meter, created once and shared by every handle using it.

    The SDK keeps the first callbacks registered under a name and ignores
    later ones, and has no way to remove a callback; so each instrument is
    created once per meter, and its callback reports for the live handles.
    """

    def __init__(self, meter: Meter) -> None:
        self._handles: tuple[Instrumentation, ...] = ()
        self.duration = _duration_histogram(meter)
        meter.create_observable_counter(
            CALLS,
            callbacks=[self._calls],
            unit="{call}",
            description="Calls through a circuit breaker that ended, by outcome.",
        )
        meter.create_observable_counter(
            REJECTIONS,
            callbacks=[self._rejections],
            unit="{call}",
            description="Calls a circuit breaker refused, by its state and the reason.",
        )
        meter.create_observable_up_down_counter(
            STATE,
            callbacks=[self._states],
            unit="1",
            description="1 for a circuit breaker's current state, 0 for the others.",
        )
        meter.create_observable_up_down_counter(
            DEGRADED,
            callbacks=[self._degraded],
            unit="1",
            description="1 while a breaker's shared store is unreachable (deciding locally).",
        )
        meter.create_observable_gauge(
            LIMIT,
            callbacks=[partial(self._limits, "limit")],
            unit="{call}",
            description="The calls an adaptive concurrency limit admits at once, now.",
        )
        meter.create_observable_up_down_counter(
            LIMIT_INFLIGHT,
            callbacks=[partial(self._limits, "inflight")],
            unit="{call}",
            description="Calls an adaptive concurrency limit admitted that have not ended.",
        )
        meter.create_observable_counter(
            LIMIT_REJECTIONS,
            callbacks=[partial(self._limits, "rejected")],
            unit="{call}",
            description="Calls an adaptive concurrency limit refused.",
        )

    def add(self, handle: Instrumentation) -> None:
        with _registry_lock:
            self._handles = (*self._handles, handle)

    def remove(self, handle: Instrumentation) -> None:
        with _registry_lock:
            self._handles = tuple(h for h in self._handles if h is not handle)

    def _calls(self, options: CallbackOptions) -> Iterable[Observation]:
        return [o for h in self._handles for o in h._observe_calls()]

    def _rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        return [o for h in self._handles for o in h._observe_rejections()]

    def _states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [o for h in self._handles for o in h._observe_states()]

    def _degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        return [o for h in self._handles for o in h._observe_degraded()]

    def _limits(self, field: str, options: CallbackOptions) -> Iterable[Observation]:
        return [o for h in self._handles for o in h._observe_limits(field)]


def _duration_histogram(meter: Meter) -> Histogram:
    name, unit = DURATION, "s"
    description = "How long calls through a circuit breaker took, by outcome."
    try:
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    except TypeError:  # opentelemetry-api before 1.30: no advisory (see duration_view)
        return meter.create_histogram(name, unit, description)


def _add_span_event(name: str, attributes: dict[str, str | float]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


# ---------------------------------------------------------------------- providers


def _recording_meter(provider: MeterProvider | None) -> Meter | None:
    """The ``resilient`` meter if an SDK stands behind ``provider``, else None."""
    if provider is None or _is_proxy(provider):
        provider = metrics.get_meter_provider()  # the one set since, if any
        if _is_proxy(provider):
            return None  # nothing set: asking the proxy for a meter would keep one
    meter = provider.get_meter(METER_NAME, __version__)
    return None if isinstance(meter, NoOpMeter) else meter


def _is_proxy(provider: MeterProvider) -> bool:
    # The API's global stand-in (opentelemetry.metrics._internal._ProxyMeterProvider),
    # which get_meter_provider() returns until a provider is set; it is not public.
    return type(provider).__name__ == "_ProxyMeterProvider"


def _recording_tracer(provider: TracerProvider | None) -> bool:
    """Does an SDK stand behind ``provider`` (the global one if None)?"""
    if provider is None:
        provider = trace.get_tracer_provider()
    tracer = provider.get_tracer(METER_NAME, __version__)
    return not isinstance(tracer, (NoOpTracer, ProxyTracer))


# ---------------------------------------------------------------------- registries

_registry_lock = threading.RLock()
# The live handle of each hub (weak both ways: a hub or a dropped handle may go).
_by_hub: weakref.WeakKeyDictionary[Hub, weakref.ref[Instrumentation]] = weakref.WeakKeyDictionary()
# The instruments of each meter (an SDK meter lives as long as its provider).
_by_meter: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_for(meter: Meter) -> _Instruments:
    with _registry_lock:
        found = _by_meter.get(meter)
        if found is None:
            found = _by_meter[meter] = _Instruments(meter)
        return found
