"""Judging a finished mirror: the record of how the candidate compared.

One idea: from the sides' outcomes to one record, by these rules (run on
the reporter's thread):

- The caller was cancelled: ``dropped: "cancelled"``, nothing compared.
- The primary failed: the candidate matches if it failed with the same
  exception type; otherwise the difference is at ``$``.
- The primary succeeded and the candidate failed (or timed out): ``error``.
- Both succeeded: both are normalised to JSON (``_normalize``) and diffed
  into paths (``_paths``), minus ``ignore``; ``compare(primary, candidate)``,
  when given, returns the differing paths instead (it gets the values as
  returned). With a noise sample, the paths where the two primary answers
  differ are learned first; differences on learned paths are noise.

A comparison that raises (a value nested too deep, a ``compare`` that
fails) is recorded as the candidate's ``error`` (``compare: <type>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from resilient.shadow._mirror import CANCELLED, CANDIDATE, PRIMARY, SECONDARY, Mirror, Outcome
from resilient.shadow._noise import NoiseModel
from resilient.shadow._normalize import JSONValue, to_json
from resilient.shadow._paths import Patterns, diff_paths
from resilient.shadow._record import call_record

__all__ = ["Compare", "Judge", "error_name"]

#: ``compare(primary, candidate)``: the paths where they differ.
Compare = Callable[[object, object], Iterable[str]]


def error_name(exc: BaseException | None) -> str | None:
    """An exception as recorded: its type's name (never its message, which may hold data)."""
    return None if exc is None else type(exc).__name__


class Judge:
    """How one operation's mirrors are compared (immutable but for the noise learned)."""

    __slots__ = ("compare", "ignore", "noise", "operation")

    def __init__(self, operation: str, ignore: Patterns, compare: Compare | None) -> None:
        self.operation = operation
        self.ignore = ignore
        self.compare = compare
        self.noise = NoiseModel()

    def record(self, mirror: Mirror) -> dict[str, JSONValue]:
        """The call record of a finished mirror."""
        primary = mirror.outcomes[PRIMARY]
        candidate = mirror.outcomes[CANDIDATE]
        assert primary is not None and candidate is not None
        if primary is CANCELLED or candidate is CANCELLED:
            return self.dropped(mirror.ts, mirror.trace_id, mirror.gray, "cancelled")
        candidate_error = error_name(candidate.error)
        diffs: list[str] = []
        noisy: list[str] = []
        try:
            outcome, diffs, noisy = self._compare(primary, candidate, mirror.outcomes[SECONDARY])
        except Exception as exc:  # a value we cannot compare: the candidate's side reports it
            outcome, candidate_error = "error", f"compare: {type(exc).__name__}"
        return call_record(
            ts=mirror.ts,
            operation=self.operation,
            trace_id=mirror.trace_id,
            gray=mirror.gray,
            outcome=outcome,
            diffs=diffs,
            noise=noisy,
            primary=(primary.seconds, error_name(primary.error)),
            candidate=(candidate.seconds, candidate_error),
            dropped=None,
        )

    def dropped(
        self, ts: float, trace_id: str | None, gray: str | None, reason: str
    ) -> dict[str, JSONValue]:
        """The record of a mirror refused (or abandoned) for ``reason``."""
        return call_record(
            ts=ts,
            operation=self.operation,
            trace_id=trace_id,
            gray=gray,
            outcome="dropped",
            diffs=[],
            noise=[],
            primary=(None, None),
            candidate=(None, None),
            dropped=reason,
        )

    def _compare(
        self, primary: Outcome, candidate: Outcome, secondary: Outcome | None
    ) -> tuple[str, list[str], list[str]]:
        if primary.error is not None:
            if candidate.error is not None and type(candidate.error) is type(primary.error):
                return "match", [], []
            return "mismatch", ["$"], []
        if candidate.error is not None:
            return "error", [], []
        if secondary is not None and secondary.error is None and secondary is not CANCELLED:
            self.noise.learn(self._paths(primary.value, secondary.value))
        real, noisy = self.noise.split(self._paths(primary.value, candidate.value))
        return ("mismatch" if real else "noise" if noisy else "match"), real, noisy

    def _paths(self, a: object, b: object) -> list[str]:
        if self.compare is not None:
            ignore = self.ignore
            return [p for p in self.compare(a, b) if not ignore.covers(p)]
        return diff_paths(to_json(a), to_json(b), self.ignore)
