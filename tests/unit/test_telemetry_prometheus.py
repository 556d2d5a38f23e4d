"""``resilient.telemetry.prometheus``: the endpoint's contract, on loopback.

What a real Prometheus makes of the buckets is tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import itertools
import urllib.request

import pytest

from resilient import Hub
from resilient.telemetry import DURATION_BUCKETS, PROMETHEUS_BUCKETS, prometheus


def test_neighbouring_bounds_are_within_ten_percent() -> None:
    # Anywhere inside the right bucket is then within 10% of the truth.
    ratios = [b / a for a, b in itertools.pairwise(PROMETHEUS_BUCKETS)]
    assert max(ratios) < 1.092
    assert PROMETHEUS_BUCKETS[0] == 0.0005 and PROMETHEUS_BUCKETS[-1] > 30
    # The coarser default buckets could not promise it (why prometheus() has its own).
    coarse = [b / a for a, b in itertools.pairwise(DURATION_BUCKETS)]
    assert max(coarse) > 1.1


def test_serves_the_breaker_metrics_with_the_fine_buckets() -> None:
    hub = Hub("prom-unit")
    br = hub.breaker("api")
    with prometheus(0, hub=hub) as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        br(lambda: 1)()
        with urllib.request.urlopen(endpoint.url, timeout=5) as response:
            text = response.read().decode()
    buckets = [
        line
        for line in text.splitlines()
        if line.startswith("resilient_breaker_duration_seconds_bucket")
    ]
    assert len(buckets) == len(PROMETHEUS_BUCKETS) + 1  # and +Inf
    assert 'resilient_breaker_calls_total{breaker="api"' in text
    assert 'resilient_breaker_state{breaker="api"' in text
    assert "closed" in repr(endpoint)
    endpoint.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(endpoint.url, timeout=2)


def test_a_taken_port_is_an_oserror() -> None:
    with prometheus(0, hub=Hub("prom-taken")) as first, pytest.raises(OSError):
        prometheus(first.port, hub=Hub("prom-taken-2"))


@pytest.mark.parametrize("port", [-1, 65536, 1.5, "9464"])
def test_a_bad_port_is_refused(port: object) -> None:
    with pytest.raises(ValueError, match="port must be"):
        prometheus(port, hub=Hub("prom-bad"))  # type: ignore[arg-type]


@pytest.mark.parametrize("buckets", [[], [0.1, 0.05], [0.0, 1.0], [1.0, float("inf")], [0.1, 0.1]])
def test_bad_buckets_are_refused(buckets: list[float]) -> None:
    with pytest.raises(ValueError, match="buckets must be"):
        prometheus(0, hub=Hub("prom-bad"), buckets=buckets)
