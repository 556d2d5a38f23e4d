"""``resilient reconcile`` on JSONL files: bad lines, the gate, ``--json``, ``--plot``, ``--since``.

The files are written by a real ``JsonlSink`` (rotation included) or, for
bad lines, by hand; the command runs in this process through typer's runner.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from shadow_support import only_operation, reconcile

from resilient.shadow import JsonlSink
from resilient.shadow._record import call_record, write_record


def call(
    outcome: str,
    *,
    ts: float | None = None,
    operation: str = "feed",
    diffs: tuple[str, ...] = (),
    primary_s: float = 0.010,
    candidate_s: float = 0.020,
) -> dict[str, Any]:
    return call_record(
        ts=time.time() if ts is None else ts,
        operation=operation,
        trace_id=None,
        gray="canary",
        outcome=outcome,
        diffs=list(diffs),
        noise=[],
        primary=(primary_s, None),
        candidate=(candidate_s, "TimeoutError" if outcome == "error" else None),
        dropped=None,
    )


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    sink = JsonlSink(path)
    try:
        for row in rows:
            sink.write(row)
    finally:
        sink.close()
    return path


def test_bad_lines_are_reported_with_their_line_number_and_skipped(tmp_path: Path) -> None:
    good = json.dumps(call("match"))
    lines = [
        good.encode(),
        good[:40].encode(),  # truncated (a writer killed mid-line)
        json.dumps({**call("match"), "primary": {"latency_ms": "fast"}}).encode(),
        json.dumps({**call("match"), "ts": 10**400}).encode(),  # no float holds it
        json.dumps({**call("match"), "outcome": "great"}).encode(),
        b'["not", "an", "object"]',
        b"\xff\xfe not UTF-8",
        b"[" * 100_000,  # deeper than the JSON parser goes
        b"",  # blank lines are not records, nor bad ones
        good.encode(),
    ]
    path = tmp_path / "shadow.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = reconcile(str(path), "--json")
    assert run.code == 0
    report = run.json()
    assert only_operation(report)["mirrored"] == 2
    bad = {b["where"]: b["reason"] for b in report["bad_records"]}
    assert list(bad) == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8)]
    assert bad[f"{path}:2"].startswith("not JSON (truncated?)")
    assert "primary.latency_ms must be a number" in bad[f"{path}:3"]
    assert "ts must be a finite number" in bad[f"{path}:4"]
    assert "outcome must be one of" in bad[f"{path}:5"]
    assert "must be a JSON object" in bad[f"{path}:6"]
    assert bad[f"{path}:7"] == "the line is not UTF-8"
    for where in bad:
        assert f"skipped a bad record at {where}:" in run.stderr
    assert "bad records skipped: 7" in reconcile(str(path)).stdout


def test_fail_above_exits_5_only_when_a_rate_is_above_it(tmp_path: Path) -> None:
    rows = [call("match")] * 8 + [call("mismatch", diffs=("$.price",)), call("error")]
    path = write(tmp_path / "shadow.jsonl", rows)  # mismatch rate 0.2 (errors count)
    failed = reconcile(str(path), "--fail-above", "0.1")
    assert failed.code == 5
    assert "gate failed: feed (gray canary): mismatch rate 0.2000 > 0.1" in failed.stderr
    assert reconcile(str(path), "--fail-above", "0.2").code == 0  # at the limit passes
    assert reconcile(str(path)).code == 0  # no gate, no verdict
    gated = reconcile(str(path), "--json", "--fail-above", "0.1")
    assert gated.code == 5
    assert gated.json()["gate"]["failed"] == ["feed (gray canary): mismatch rate 0.2000 > 0.1"]


def test_a_missing_write_fails_the_gate_after_the_grace(tmp_path: Path) -> None:
    now = time.time()
    rows = [
        write_record(ts=now - 120, operation="order", key=f"order:{i}", side=side,
                     digest="d", trace_id=None, gray=None)
        for i in range(3) for side in ("stable", "gray")
    ] + [
        write_record(ts=now - 120, operation="order", key="order:9", side="stable",
                     digest="d", trace_id=None, gray=None)
    ]  # fmt: skip
    path = write(tmp_path / "shadow.jsonl", rows)
    assert reconcile(str(path), "--grace", "600", "--fail-above", "0").code == 0  # pending
    late = reconcile(str(path), "--grace", "60", "--fail-above", "0.2")
    assert late.code == 5
    assert "order (gray -): missing-write rate 0.2500 > 0.2" in late.stderr


def test_json_output_parses_and_holds_the_whole_report(tmp_path: Path) -> None:
    rows = [call("match", primary_s=0.001 * i, candidate_s=0.002 * i) for i in range(1, 101)] + [
        call("match", operation="cart")
    ]
    path = write(tmp_path / "shadow.jsonl", rows)
    report = reconcile(str(path), "--json").json()
    assert [(op["operation"], op["gray"]) for op in report["operations"]] == [
        ("cart", "canary"),
        ("feed", "canary"),
    ]
    feed = report["operations"][1]
    assert feed["mirrored"] == 100
    assert feed["primary"] == {"p50_ms": 50.0, "p99_ms": 99.0}
    assert feed["candidate"] == {"p50_ms": 100.0, "p99_ms": 198.0}
    assert (report["writes"], report["bad_records"], report["gate"]) == ([], [], None)


def test_since_keeps_only_recent_records(tmp_path: Path) -> None:
    now = time.time()
    rows = [call("mismatch", ts=now - 7200, diffs=("$.old",)), call("match", ts=now - 60)]
    path = write(tmp_path / "shadow.jsonl", rows)
    recent = only_operation(reconcile(str(path), "--since", "30m", "--json").json())
    assert (recent["mirrored"], recent["mismatches"]) == (1, 0)
    everything = only_operation(reconcile(str(path), "--since", "3h", "--json").json())
    assert everything["mirrored"] == 2
    bad = reconcile(str(path), "--since", "last week")
    assert bad.code == 2 and "--since must be a duration" in bad.stderr


def test_rotated_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "shadow.jsonl"
    sink = JsonlSink(path, max_bytes=1024, backups=3)
    try:
        for i in range(16):  # about 230 bytes a record: four to a file
            sink.write(call("match", ts=float(i)))
    finally:
        sink.close()
    assert path.with_name("shadow.jsonl.3").exists()
    assert not path.with_name("shadow.jsonl.4").exists()
    report = reconcile(str(path), "--json").json()
    assert only_operation(report)["mirrored"] == 16
    assert report["bad_records"] == []


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = write(tmp_path / "shadow.jsonl", [call("match"), call("mismatch", diffs=("$.a",))])
    png = tmp_path / "report.png"
    run = reconcile(str(path), "--plot", str(png))
    assert run.code == 0, run.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_source_that_cannot_be_read_exits_1(tmp_path: Path) -> None:
    run = reconcile(str(tmp_path / "nothing.jsonl"))
    assert run.code == 1
    assert "cannot read" in run.stderr


@pytest.mark.parametrize("password", ["s3cret-pw"])
def test_unreachable_redis_exits_3_without_the_password(password: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = reconcile(f"redis://:{password}@127.0.0.1:{port}/0", "--stream", "s")
    assert run.code == 3
    assert "unreachable" in run.stderr
    assert password not in run.stderr + run.stdout
