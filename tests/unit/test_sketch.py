"""LatencySketch: quantiles within 1% of the truth, merged across processes, a strict wire form."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from resilient.sketch import ALPHA, ZERO, LatencySketch, bucket, value


def true_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "exponential 5 ms": lambda r: r.expovariate(1 / 0.005),
    "lognormal": lambda r: r.lognormvariate(math.log(0.02), 1.0),
    "uniform 1-3 ms": lambda r: r.uniform(0.001, 0.003),
    # the long tail of the benchmarks: 2% twenty times slower
    "2% at 20x": lambda r: 0.060 if r.random() < 0.02 else r.uniform(0.0029, 0.0031),
    "pareto": lambda r: 0.001 * r.paretovariate(1.5),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_a_fleet_of_four_reads_its_quantiles_within_the_relative_error(name: str) -> None:
    draw = DISTRIBUTIONS[name]
    rng = random.Random(name)
    processes = [[draw(rng) for _ in range(rng.randrange(20_000, 40_000))] for _ in range(4)]
    fleet = LatencySketch()
    for durations in processes:
        own = LatencySketch()
        own.add_many(durations)
        fleet.merge(LatencySketch.from_counts(own.counts))  # through the wire form
    every = [d for durations in processes for d in durations]
    assert fleet.count == len(every)
    for q in (0.5, 0.9, 0.99, 0.999):
        truth = true_quantile(every, q)
        assert abs(fleet.quantile(q) - truth) <= ALPHA * truth * (1 + 1e-9), (q, truth)


def test_every_value_of_a_bucket_is_within_alpha_of_its_answer() -> None:
    rng = random.Random(3)
    for _ in range(10_000):
        seconds = math.exp(rng.uniform(math.log(2e-6), math.log(1e4)))
        assert abs(value(bucket(seconds)) - seconds) <= ALPHA * seconds * (1 + 1e-9)


def test_add_and_add_many_agree() -> None:
    rng = random.Random(5)
    durations = [rng.expovariate(100.0) for _ in range(1000)] + [0.0, -1.0, math.nan, 1e9]
    one, many = LatencySketch(), LatencySketch()
    for d in durations:
        one.add(d)
    many.add_many(durations)
    assert one.counts == many.counts and one.count == many.count == len(durations)
    assert one.counts[ZERO] == 3  # zero, negative and NaN are "no time"


def test_quantiles_need_calls_and_a_q_in_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        LatencySketch().quantile(0.5)
    sketch = LatencySketch()
    sketch.add(0.01)
    with pytest.raises(ValueError, match="q must be"):
        sketch.quantile(1.5)
    assert sketch.quantile(0.0) == sketch.quantile(1.0) == pytest.approx(0.01, rel=ALPHA)


def test_the_wire_form_takes_redis_strings_and_refuses_anything_else() -> None:
    sketch = LatencySketch.from_counts({b"-460": b"3", "12": "2", 7: 0})
    assert sketch.counts == {-460: 3, 12: 2} and sketch.count == 5
    for bad, message in (
        ({"x": 1}, "bucket must be an integer"),
        ({"1.5": 1}, "bucket must be an integer"),
        ({"10": "-1"}, "must be >= 0"),
        ({"10": True}, "count must be an integer"),
        ({"99999999": 1}, "out of range"),
        ({"\u00b2": 1}, "bucket must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            LatencySketch.from_counts(bad)


def test_a_batch_past_the_limit_is_a_weighted_stride_with_the_same_quantiles() -> None:
    rng = random.Random(11)
    durations = [rng.lognormvariate(math.log(0.01), 0.5) for _ in range(100_000)]
    full, thinned = LatencySketch(), LatencySketch()
    full.add_many(durations)
    thinned.add_many(durations, limit=8192)
    assert len(thinned.counts) <= len(full.counts)
    assert abs(thinned.count - full.count) <= 13  # within one stride
    for q in (0.5, 0.99):
        assert thinned.quantile(q) == pytest.approx(full.quantile(q), rel=0.03)
