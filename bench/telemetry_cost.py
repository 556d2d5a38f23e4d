"""What telemetry costs a breaker: not instrumented, instrumented with no SDK, and with the SDK.

    python -m bench.telemetry_cost [--calls 200000] [--repeats 7]

Three breakers wrap the same trivial function, each in a hub of its own:

- ``plain``: never instrumented;
- ``no-sdk``: ``instrument(hub)`` with the API's default (no provider set), which
  must install nothing, so its success path stays the lock-free one;
- ``observed``: not instrumented, but with a call observer that does nothing:
  what the breaker's locked settle path alone costs (the part of ``sdk`` that
  is the breaker's, not OpenTelemetry's);
- ``sdk``: ``instrument(hub, meter_provider=..., tracer_provider=...)`` with a
  real SDK (an in-memory metric reader): every call is settled on the locked
  path, counted and recorded in the duration histogram.

Overhead is the time per call minus a bare call's, best of ``--repeats``
rounds, all contenders round-robin in the same process (see
``bench/breaker_overhead.py``). The rejection path (a forced-open breaker,
raise and catch included) is measured too: an SDK adds a listener there.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider

import resilient
from bench.breaker_overhead import (
    async_target,
    best,
    sync_target,
    time_async,
    time_rejections,
    time_sync,
)
from resilient.telemetry import Instrumentation, instrument

KINDS = ("plain", "no-sdk", "observed", "sdk")


def breakers(meters: MeterProvider, name: str) -> dict[str, resilient.CircuitBreaker]:
    """One breaker per kind, each in its own hub, instrumented as its kind says."""
    made: dict[str, resilient.CircuitBreaker] = {}
    handles: list[Instrumentation] = []
    for kind in KINDS:
        hub = resilient.Hub(kind)
        made[kind] = hub.breaker(name)
        if kind == "no-sdk":
            handles.append(instrument(hub))  # the global providers: none set here
        elif kind == "observed":
            made[kind].observe_calls(lambda outcome, seconds: None)
        elif kind == "sdk":
            handles.append(instrument(hub, meter_provider=meters, tracer_provider=TracerProvider()))
    assert [h.recording for h in handles] == [False, True], handles
    return made


def report(title: str, per_call: dict[str, float]) -> None:
    bare = per_call["bare"]
    overhead = {n: (t - bare) * 1e6 for n, t in per_call.items() if n != "bare"}
    plain = overhead["plain"]
    print(f"\n{title} (overhead over a bare call)")
    for name in KINDS:
        us = overhead[name]
        print(f"  {name:8s} {us:7.3f} us/call  {us - plain:+7.3f} us vs plain  {us / plain:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    made = breakers(meters, "bench")
    sync_fns: dict[str, Callable[[], object]] = {"bare": sync_target}
    async_fns: dict[str, Callable[[], Awaitable[object]]] = {"bare": async_target}
    sync_fns.update({kind: br(sync_target) for kind, br in made.items()})
    async_fns.update({kind: br(async_target) for kind, br in made.items()})
    rejecting: dict[str, Callable[[], object]] = {}
    for kind, br in breakers(meters, "bench-open").items():
        br.force_open()
        rejecting[kind] = br(sync_target)

    sync_rounds: dict[str, list[float]] = {n: [] for n in sync_fns}
    async_rounds: dict[str, list[float]] = {n: [] for n in async_fns}
    reject_rounds: dict[str, list[float]] = {n: [] for n in rejecting}
    for _ in range(args.repeats):
        for name, fn in sync_fns.items():
            sync_rounds[name].append(time_sync(fn, args.calls))
        for name, afn in async_fns.items():
            async_rounds[name].append(time_async(afn, args.calls // 2))
        for name, fn in rejecting.items():
            reject_rounds[name].append(time_rejections(fn, args.calls // 10))

    print(f"telemetry cost, best of {args.repeats} rounds of {args.calls} calls")
    report("success path, sync", best(sync_rounds))
    report("success path, async", best(async_rounds))
    print("\nrejection path, sync (time per rejected call, raise and catch included)")
    for name, t in best(reject_rounds).items():
        print(f"  {name:8s} {t * 1e6:7.3f} us/call")
    counted = 0
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "resilient.breaker.calls":
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        counted += int(point.value)
    print(f"\n(the SDK counted {counted} calls through the sdk breaker)")
    meters.shutdown()


if __name__ == "__main__":
    main()
