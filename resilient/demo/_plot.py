"""The plot: latency over time per contender, faults and breaker states shaded.

Needs matplotlib (the ``demo`` extra), imported when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from resilient.demo._run import Result
from resilient.demo._summary import hits_text, milliseconds, summarize

__all__ = ["plot"]


def plot(results: Sequence[Result], path: str | Path, *, title: str | None = None) -> Path:
    """Latency over time, one panel per contender, faults and breaker states shaded.

    Needs matplotlib (the ``demo`` extra); uses the Agg backend (no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    target = Path(path)
    fig, axes = pyplot.subplots(
        len(results), 1, figsize=(11, 2.6 * len(results) + 0.8), sharex=True, squeeze=False
    )
    for ax, result in zip(axes[:, 0], results, strict=True):
        scenario = result.scenario
        for phase, start, end in scenario.spans():
            if phase.fault:
                ax.axvspan(start, end, color="0.85", zorder=0)
                ax.text(
                    start + 0.05,
                    1.0,
                    phase.name,
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                    color="0.3",
                )
        for state, start, end in _state_spans(result):
            if state in ("open", "forced_open"):
                ax.axvspan(start, end, color="tab:red", alpha=0.18, zorder=1, lw=0)
            elif state == "half_open":
                ax.axvspan(start, end, color="tab:orange", alpha=0.3, zorder=1, lw=0)
        ms = [max(lat * 1000, 0.05) for lat in result.latency]
        good = [(t, m) for t, m, ok in zip(result.sent, ms, result.ok, strict=True) if ok]
        bad = [(t, m) for t, m, ok in zip(result.sent, ms, result.ok, strict=True) if not ok]
        if good:
            ax.scatter(*zip(*good, strict=True), s=3, color="tab:green", label="success", zorder=2)
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=3, color="tab:red", label="failure", zorder=2)
        summary = summarize(result)
        ax.set_yscale("log")
        ax.set_ylim(0.05, 10_000)
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"{result.name}: P99 {milliseconds(summary.p99)}, success {summary.success:.1%}, "
            f"hits at the sick upstream: {hits_text(summary)}",
            fontsize=10,
            loc="left",
        )
        ax.legend(loc="upper right", fontsize=8, markerscale=3)
    axes[-1, 0].set_xlabel("seconds (grey: upstream faulty; red: breaker open; orange: half-open)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    pyplot.close(fig)
    return target


def _state_spans(result: Result) -> list[tuple[str, float, float]]:
    spans: list[tuple[str, float, float]] = []
    end = result.scenario.duration
    for i, (at, state) in enumerate(result.states):
        until = result.states[i + 1][0] if i + 1 < len(result.states) else end
        spans.append((state, at, until))
    return spans
