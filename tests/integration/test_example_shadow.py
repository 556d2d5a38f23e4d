"""examples/shadow end to end: three real services on loopback, a bounded load, the report.

The example's candidate has one regression (``price`` on clearance SKUs)
and, like the stable service, a ``generated_at`` that differs on every
answer. The report must name the regression as the one differing path,
report the timestamp as noise and never as a mismatch, find every
dual-written order on both sides with the same digest, and fail the gate
(exit 5) with ``--fail-above 0.05``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.shadow.services import on_clearance

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
QUOTES, ORDERS = 240, 30


@pytest.fixture(scope="module")
def example(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("shadow")
    done = subprocess.run(
        [sys.executable, "-m", "examples.shadow", "--out", str(out),
         "--quotes", str(QUOTES), "--orders", str(ORDERS)],
        cwd=ROOT, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    return done, out / "shadow.jsonl"


def reconcile_json(records: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "resilient", "reconcile", str(records), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_the_gate_fails_on_the_regression(
    example: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, _ = example
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"sent {QUOTES + ORDERS} requests" in done.stdout
    assert "$.body.price" in done.stdout
    assert "gate failed: quote" in done.stderr


def test_the_report_finds_the_regression_and_the_noise(
    example: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, records = example
    report = reconcile_json(records)
    assert report["bad_records"] == []
    [quote] = [op for op in report["operations"] if op["operation"] == "quote"]
    assert quote["mirrored"] > QUOTES // 4  # sample=0.5, drawn by trace id
    assert quote["errors"] == 0 and quote["dropped"] == 0
    # The regression: the only differing path, in about one mirrored call in 8.
    assert [p["path"] for p in quote["top_paths"]] == ["$.body.price"]
    assert 0 < quote["mismatches"] < quote["mirrored"] // 3
    assert quote["top_paths"][0]["count"] == quote["mismatches"]
    # The timestamp differs between (almost) every primary and candidate answer (two may
    # fall in the same microsecond): noise, never a mismatch.
    noise = {p["path"]: p["count"] for p in quote["noise_paths"]}
    assert noise.get("$.body.generated_at", 0) >= 0.95 * quote["mirrored"]
    assert quote["noise_only"] + quote["matches"] == quote["mirrored"] - quote["mismatches"]
    assert quote["matches"] <= 0.05 * quote["mirrored"]
    # The dual-written orders: every one on both sides, the same digest.
    [orders] = report["writes"]
    assert orders["operation"] == "order"
    assert (orders["judged"], orders["matched"], orders["missing"], orders["differs"]) == (
        ORDERS, ORDERS, 0, 0,
    )  # fmt: skip


def test_the_records_differ_on_the_two_fields_only(
    example: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Record by record: price on about 1 call in 8 (the clearance SKUs), the timestamp on all.

    A record written before the front had learned the noise still lists the
    timestamp in ``diffs``; the report applies the noise learned anywhere.
    """
    _, records = example
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    calls = [c for c in lines if c["type"] == "call"]
    assert calls and all(c["trace_id"] for c in calls)
    assert {c["outcome"] for c in calls} <= {"mismatch", "noise", "match"}
    seen = [set(c["diffs"]) | set(c["noise"]) for c in calls]
    assert all(paths <= {"$.body.price", "$.body.generated_at"} for paths in seen)
    assert sum("$.body.generated_at" in paths for paths in seen) >= 0.95 * len(calls)
    assert any(c["noise"] == ["$.body.generated_at"] for c in calls)  # learned in the front too
    share = sum("$.body.price" in c["diffs"] for c in calls) / len(calls)
    expected = sum(on_clearance(sku) for sku in range(1, 500)) / 499
    assert abs(share - expected) < 0.08
