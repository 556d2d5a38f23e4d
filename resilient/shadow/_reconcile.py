"""The reconciliation: records joined into a report that says whether a candidate may go live.

One idea: a pure function from records to a report (a JSON-ready dict),
per operation and gray tag:

- calls: mirrored (compared, not dropped), dropped, matches, mismatches,
  candidate errors, noise-only differences; the mismatch rate, which is
  ``(mismatches + errors) / mirrored`` (a candidate that fails where the
  primary did not is not fit to take traffic either);
- the top differing paths (general form, ``$.items[*].score``) with a count
  and one example trace id each, and the noisy paths apart;
- primary and candidate latency P50/P99 (nearest rank, milliseconds);
- writes joined by (trace id, key): ``matched`` (same digest on both sides),
  ``differs``, ``missing`` (one side only, older than ``grace`` seconds) or
  ``pending`` (one side only, younger; not judged); the missing-write rate,
  ``(missing + differs) / judged``.

Noise is applied across the whole source: a path learned as noise by any
record of an operation is noise in all its records, so a difference recorded
before the process had learned it is not counted as a mismatch here.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from resilient.shadow._paths import Patterns, generalize
from resilient.shadow._record import CallRecord, WriteRecord

__all__ = ["gate", "percentile", "reconcile"]

TOP_PATHS = 10


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``values``, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def reconcile(
    records: Iterable[CallRecord | WriteRecord],
    *,
    now: float,
    grace: float = 30.0,
    since: float | None = None,
) -> dict[str, Any]:
    """The report of ``records`` (those at or after ``since``, epoch seconds)."""
    calls: list[CallRecord] = []
    writes: list[WriteRecord] = []
    for r in records:
        if since is not None and r.ts < since:
            continue
        if isinstance(r, CallRecord):
            calls.append(r)
        else:
            writes.append(r)
    return {
        "operations": _calls(calls),
        "writes": _writes(writes, now=now, grace=grace),
    }


def gate(report: dict[str, Any], fail_above: float) -> list[str]:
    """The reasons the report fails a gate of ``fail_above`` (empty: it passes)."""
    failed = [
        f"{op['operation']} (gray {op['gray'] or '-'}): mismatch rate "
        f"{op['mismatch_rate']:.4f} > {fail_above:g}"
        for op in report["operations"]
        if op["mirrored"] and op["mismatch_rate"] > fail_above
    ]
    failed.extend(
        f"{w['operation']} (gray {w['gray'] or '-'}): missing-write rate "
        f"{w['rate']:.4f} > {fail_above:g}"
        for w in report["writes"]
        if w["judged"] and w["rate"] > fail_above
    )
    return failed


# ---------------------------------------------------------------------- calls


def _calls(calls: list[CallRecord]) -> list[dict[str, Any]]:
    noise_by_op: dict[str, set[str]] = defaultdict(set)
    for c in calls:
        noise_by_op[c.operation].update(generalize(p) for p in c.noise)
    patterns = {op: Patterns(sorted(paths)) for op, paths in noise_by_op.items()}
    groups: dict[tuple[str, str | None], list[CallRecord]] = defaultdict(list)
    for c in calls:
        groups[(c.operation, c.gray)].append(c)
    out = []
    for (operation, gray), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
    ):
        out.append(_call_group(operation, gray, group, patterns[operation]))
    return out


def _call_group(
    operation: str, gray: str | None, group: list[CallRecord], noise: Patterns
) -> dict[str, Any]:
    counts = Counter[str]()
    paths = Counter[str]()
    noisy = Counter[str]()
    examples: dict[str, str | None] = {}
    noise_examples: dict[str, str | None] = {}
    dropped = Counter[str]()
    primary_ms: list[float] = []
    candidate_ms: list[float] = []
    for c in group:
        if c.dropped is not None or c.outcome == "dropped":
            dropped[c.dropped or "unknown"] += 1
            continue
        if c.primary_ms is not None:
            primary_ms.append(c.primary_ms)
        if c.candidate_ms is not None and c.candidate_error is None:
            candidate_ms.append(c.candidate_ms)
        real = [p for p in c.diffs if not noise.covers(p)]
        seen_noise = [*c.noise, *(p for p in c.diffs if noise.covers(p))]
        for p in dict.fromkeys(generalize(p) for p in seen_noise):
            noisy[p] += 1
            noise_examples.setdefault(p, c.trace_id)
        outcome = c.outcome
        if outcome == "mismatch" and not real:
            outcome = "noise"  # every difference is on a path learned as noise
        counts[outcome] += 1
        if outcome == "mismatch":
            for p in dict.fromkeys(generalize(p) for p in real):
                paths[p] += 1
                if examples.get(p) is None:
                    examples[p] = c.trace_id
    mirrored = sum(counts.values())
    bad = counts["mismatch"] + counts["error"]
    return {
        "operation": operation,
        "gray": gray,
        "mirrored": mirrored,
        "dropped": sum(dropped.values()),
        "dropped_by": dict(sorted(dropped.items())),
        "matches": counts["match"],
        "mismatches": counts["mismatch"],
        "errors": counts["error"],
        "noise_only": counts["noise"],
        "mismatch_rate": (bad / mirrored) if mirrored else 0.0,
        "top_paths": [
            {"path": p, "count": n, "example_trace_id": examples.get(p)}
            for p, n in paths.most_common(TOP_PATHS)
        ],
        "noise_paths": [
            {"path": p, "count": n, "example_trace_id": noise_examples.get(p)}
            for p, n in noisy.most_common(TOP_PATHS)
        ],
        "primary": _latency(primary_ms),
        "candidate": _latency(candidate_ms),
    }


def _latency(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99)}


# ---------------------------------------------------------------------- writes


def _writes(writes: list[WriteRecord], *, now: float, grace: float) -> list[dict[str, Any]]:
    # The latest write of each side, per (trace id, key).
    joined: dict[tuple[str | None, str], dict[str, WriteRecord]] = defaultdict(dict)
    for w in sorted(writes, key=lambda w: w.ts):
        joined[(w.trace_id, w.key)][w.side] = w
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for (trace_id, key), sides in joined.items():
        first = min(sides.values(), key=lambda w: w.ts)
        gray_side = sides.get("gray")
        gray = gray_side.gray if gray_side is not None else first.gray
        g = groups.setdefault(
            (first.operation, gray),
            {"operation": first.operation, "gray": gray, "matched": 0, "differs": 0,
             "missing": 0, "pending": 0, "examples": []},
        )  # fmt: skip
        if len(sides) == 2:
            problem = None if sides["stable"].digest == sides["gray"].digest else "differs"
        elif now - first.ts >= grace:
            problem = "missing"
        else:
            g["pending"] += 1
            continue
        if problem is None:
            g["matched"] += 1
            continue
        g[problem] += 1
        if len(g["examples"]) < TOP_PATHS:
            g["examples"].append(
                {"key": key, "trace_id": trace_id, "problem": problem, "sides": sorted(sides)}
            )
    out = []
    for _, g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        judged = g["matched"] + g["differs"] + g["missing"]
        g["judged"] = judged
        g["rate"] = ((g["differs"] + g["missing"]) / judged) if judged else 0.0
        out.append(g)
    return out
