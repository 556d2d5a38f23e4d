"""``resilient reconcile SOURCE``: may the candidate take traffic? The shadow report and its gate.

One idea: read the shadow records (a JSONL file and its rotated siblings,
or a Redis stream through a consumer group), join them
(``resilient.shadow._reconcile``), print the report, and with
``--fail-above RATE`` exit 5 when any operation's mismatch rate or
missing-write rate is above RATE, so a rollout can be gated in CI/CD.

Bad records (a truncated line, a field of the wrong type, a stream entry
that is not a record) are reported on stderr with their line or entry id
and skipped; they are counted in ``--json`` output (``bad_records``).
Exit 0 done, 1 the source cannot be read, 2 usage (a bad ``--since``), 3
Redis unreachable, 5 the gate failed. A Redis URL's password never appears.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from resilient.cli._exit import EXIT_GATE, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_USAGE, fail

if TYPE_CHECKING:
    from resilient.shadow._sources import Loaded

__all__ = ["parse_since", "reconcile"]

#: Bad records listed one by one on stderr; the rest are only counted.
SHOWN_BAD = 20

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from now (``90``, ``90s``, ``15m``, ``2h``, ``1d``) or an
    ISO-8601 time (UTC unless it says otherwise); epoch seconds.

    Raises:
        ValueError: neither.
    """
    found = _DURATION.fullmatch(text.strip())
    if found:
        return now - float(found.group(1)) * _UNITS[found.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since must be a duration (90, 15m, 2h, 1d) or an ISO-8601 time, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def reconcile(
    source: Annotated[
        str, typer.Argument(help="A JSONL file of shadow records, or a redis:// URL (--stream).")
    ],
    stream: Annotated[
        str, typer.Option(help="The Redis stream (with a redis:// SOURCE).")
    ] = "resilient:shadow",
    group: Annotated[
        str,
        typer.Option(help="The consumer group reading the stream (each entry once per group)."),
    ] = "resilient-reconcile",
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds a write may wait for the other side's.")
    ] = 30.0,
    since: Annotated[
        str | None, typer.Option(help="Only records since: 15m, 2h, 1d, or an ISO-8601 time.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG plot of rates and latencies here.")
    ] = None,
    fail_above: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="Exit 5 if a mismatch or missing-write rate is above this."
        ),
    ] = None,
) -> None:
    """Join shadow records by operation, gray tag and trace id: mismatches, latencies, writes."""
    from resilient.shadow._reconcile import gate
    from resilient.shadow._reconcile import reconcile as build

    now = time.time()
    try:
        since_ts = None if since is None else parse_since(since, now)
    except ValueError as exc:
        fail(EXIT_USAGE, str(exc))
    loaded = _load(source, stream, group)
    for bad in loaded.bad[:SHOWN_BAD]:
        typer.echo(
            f"resilient: warning: skipped a bad record at {bad.where}: {bad.reason}", err=True
        )
    if len(loaded.bad) > SHOWN_BAD:
        typer.echo(f"resilient: warning: ... and {len(loaded.bad) - SHOWN_BAD} more", err=True)
    report = build(loaded.records, now=now, grace=grace, since=since_ts)
    report["bad_records"] = [{"where": b.where, "reason": b.reason} for b in loaded.bad]
    failed = gate(report, fail_above) if fail_above is not None else []
    report["gate"] = None if fail_above is None else {"fail_above": fail_above, "failed": failed}
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(render(report))
    if plot is not None:
        _plot(report, plot)
    if failed:
        for reason in failed:
            typer.echo(f"resilient: gate failed: {reason}", err=True)
        raise typer.Exit(EXIT_GATE)


def _load(source: str, stream: str, group: str) -> Loaded:
    from resilient.shadow._sources import read_jsonl, read_redis

    if source.startswith(("redis://", "rediss://", "unix://")):
        import redis

        from resilient.stores.redis import redact_url, scrub, url_secrets

        where, secrets = redact_url(source), url_secrets(source)
        try:
            return read_redis(source, stream, group)
        except (redis.RedisError, OSError) as exc:
            message = scrub(f"{type(exc).__name__}: {exc}", secrets)
            fail(EXIT_UNREACHABLE, f"Redis at {where} unreachable or refusing: {message}")
        except ValueError as exc:
            fail(EXIT_INVALID, scrub(str(exc), secrets))
    try:
        return read_jsonl(Path(source))
    except OSError as exc:
        fail(EXIT_INVALID, f"cannot read {source}: {exc.strerror or exc}")


# ---------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value >= 1 else f"{value:.3f} ms"


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines: list[str] = []
    if not report["operations"] and not report["writes"]:
        lines.append("no shadow records")
    for op in report["operations"]:
        lines.append(f"operation {op['operation']}  gray {op['gray'] or '-'}")
        dropped = ", ".join(f"{k} {v}" for k, v in op["dropped_by"].items())
        lines.append(
            f"  mirrored {op['mirrored']}  match {op['matches']}  mismatch {op['mismatches']}  "
            f"error {op['errors']}  noise-only {op['noise_only']}  "
            f"dropped {op['dropped']}{f' ({dropped})' if dropped else ''}"
        )
        lines.append(f"  mismatch rate {op['mismatch_rate']:.2%}")
        p, c = op["primary"], op["candidate"]
        lines.append(
            f"  latency  primary p50 {_ms(p['p50_ms'])} p99 {_ms(p['p99_ms'])}   "
            f"candidate p50 {_ms(c['p50_ms'])} p99 {_ms(c['p99_ms'])}"
        )
        if op["top_paths"]:
            lines.append("  differing paths:")
            lines.extend(
                f"    {d['count']:>6}  {d['path']}  (e.g. trace {d['example_trace_id'] or '-'})"
                for d in op["top_paths"]
            )
        if op["noise_paths"]:
            lines.append("  noise (the primary differs from itself; not counted):")
            lines.extend(f"    {d['count']:>6}  {d['path']}" for d in op["noise_paths"])
    for w in report["writes"]:
        lines.append(
            f"writes {w['operation']}  gray {w['gray'] or '-'}: judged {w['judged']}  "
            f"matched {w['matched']}  differs {w['differs']}  missing {w['missing']}  "
            f"pending {w['pending']}  rate {w['rate']:.2%}"
        )
        lines.extend(
            f"    {e['problem']:<8} {e['key']}  trace {e['trace_id'] or '-'}  "
            f"(written by: {', '.join(e['sides'])})"
            for e in w["examples"]
        )
    if report["bad_records"]:
        lines.append(f"bad records skipped: {len(report['bad_records'])}")
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        fail(EXIT_INVALID, "--plot needs matplotlib: pip install 'resilient[demo]'")
    ops = report["operations"]
    labels = [f"{op['operation']}\n{op['gray'] or '-'}" for op in ops] or ["(none)"]
    fig, (rates, lat) = plt.subplots(1, 2, figsize=(11, 4))
    rates.bar(labels, [op["mismatch_rate"] * 100 for op in ops] or [0])
    rates.set_ylabel("mismatch rate (%)")
    rates.set_title("candidate vs primary")
    positions = range(len(ops))
    for offset, (side, q, name) in enumerate(
        [("primary", "p50_ms", "primary P50"), ("primary", "p99_ms", "primary P99"),
         ("candidate", "p50_ms", "candidate P50"), ("candidate", "p99_ms", "candidate P99")]
    ):  # fmt: skip
        lat.bar(
            [i + (offset - 1.5) * 0.2 for i in positions],
            [op[side][q] or 0 for op in ops],
            width=0.2,
            label=name,
        )
    lat.set_xticks(list(positions), labels[: len(ops)])
    lat.set_ylabel("latency (ms)")
    lat.legend()
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        fail(EXIT_INVALID, f"cannot write {path}: {exc.strerror or exc}")
    finally:
        plt.close(fig)
