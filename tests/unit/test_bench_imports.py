"""Every benchmark imports: the benchmarks are not run by the suite, but must not rot."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHES = sorted(
    p.stem for p in (Path(__file__).parents[2] / "bench").glob("*.py") if p.stem != "__init__"
)


def test_the_benchmarks_are_found() -> None:
    assert {"chaos", "http_throughput", "breaker_overhead"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_imports(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    if name != "__main__":
        assert callable(getattr(module, "main", None)), f"bench.{name} has no main()"
