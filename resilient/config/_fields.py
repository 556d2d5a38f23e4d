"""BreakerConfig and the one table of its fields.

Every check of a breaker's configuration derives from ``FIELDS``: the
dataclass's ``__post_init__``, the JSON Schema that ``resilient config schema``
prints, and the validation of files and etcd values. A test checks they agree.
This module imports nothing heavy: it is part of ``import resilient``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from resilient.errors import ConfigError

__all__ = ["FIELDS", "BreakerConfig", "Field"]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of BreakerConfig: its JSON type, default, range and meaning.

    ``minimum``/``maximum`` are inclusive unless ``exclusive_minimum`` is set.
    ``choices`` lists the allowed strings of an enumerated field; ``auto``
    says the field also accepts the string ``"auto"``.
    """

    name: str
    kind: Literal["number", "integer", "string", "boolean"]
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    auto: bool = False

    def check(self, value: object) -> None:
        """Raise ConfigError naming this field if ``value`` is out of its type or range."""
        if self.auto and value == "auto":
            return
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise self._error(value, "must be true or false")
            return
        if self.kind == "string":
            if value not in self.choices:
                allowed = " or ".join(repr(c) for c in self.choices)
                raise self._error(value, f"must be {allowed}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            expected = "an integer" if self.kind == "integer" else "a number"
            if self.auto:
                expected += ' or "auto"'
            raise self._error(value, f"must be {expected}")
        if self.kind == "integer" and not (isinstance(value, int) or value.is_integer()):
            raise self._error(value, "must be a whole number")
        if not math.isfinite(value):
            raise self._error(value, "must be finite")
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value <= lo if self.exclusive_minimum else value < lo):
            bound = f"> {lo:g}" if self.exclusive_minimum else f">= {lo:g}"
            raise self._error(value, f"must be {bound}")
        if hi is not None and value > hi:
            raise self._error(value, f"must be <= {hi:g}")

    def _error(self, value: object, rule: str) -> ConfigError:
        return ConfigError(f"{self.name} {rule}, got {value!r}", field=self.name, value=value)


FIELDS: tuple[Field, ...] = (
    Field("window", "string", "time", "sliding window kind", choices=("time", "count")),
    Field(
        "window_size",
        "number",
        10,
        "seconds (time window) or calls (count window)",
        minimum=0,
        exclusive_minimum=True,
        maximum=1_000_000,
    ),
    Field(
        "buckets",
        "integer",
        10,
        "time window resolution (ignored by count windows)",
        minimum=1,
        maximum=1_000,
    ),
    Field(
        "failure_rate_threshold",
        "number",
        0.5,
        "failure rate that opens the breaker",
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
    ),
    Field(
        "slow_call_rate_threshold",
        "number",
        1.0,
        "slow-call rate that opens the breaker",
        minimum=0,
        exclusive_minimum=True,
        maximum=1,
    ),
    Field(
        "slow_call_duration",
        "number",
        2.0,
        'seconds after which a call is slow, or "auto" (learned from healthy latency)',
        minimum=0,
        exclusive_minimum=True,
        maximum=3_600,
        auto=True,
    ),
    Field(
        "minimum_calls",
        "integer",
        20,
        "calls in the window before rates are judged",
        minimum=1,
        maximum=1_000_000,
    ),
    Field(
        "half_open_calls",
        "integer",
        5,
        "probes admitted in HALF_OPEN, exactly",
        minimum=1,
        maximum=10_000,
    ),
    Field(
        "open_duration",
        "number",
        5.0,
        "seconds of the first break",
        minimum=0,
        exclusive_minimum=True,
        maximum=86_400,
    ),
    Field(
        "open_duration_max",
        "number",
        60.0,
        "cap of the backed-off open duration",
        minimum=0,
        exclusive_minimum=True,
        maximum=86_400,
    ),
    Field(
        "open_backoff",
        "number",
        2.0,
        "open-duration multiplier per consecutive trip",
        minimum=1,
        maximum=100,
    ),
    Field(
        "mode",
        "string",
        "threshold",
        "threshold breaking or adaptive (SRE) throttling",
        choices=("threshold", "adaptive"),
    ),
    Field(
        "adaptive_k",
        "number",
        1.5,
        "K of the SRE throttle: requests above K x accepts drop",
        minimum=1,
        maximum=100,
    ),
    Field(
        "cancel_on_open",
        "boolean",
        False,
        "on open, fail async calls already past slow_call_duration",
    ),
)

_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """A circuit breaker's configuration; frozen, validated on construction.

    See docs/concepts/breaker.md for every field. Build variants with
    ``dataclasses.replace`` or ``BreakerConfig.from_mapping``; a breaker never
    re-checks a config it is given.
    """

    window: Literal["time", "count"] = "time"
    window_size: float = 10
    buckets: int = 10
    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float | Literal["auto"] = 2.0
    minimum_calls: int = 20
    half_open_calls: int = 5
    open_duration: float = 5.0
    open_duration_max: float = 60.0
    open_backoff: float = 2.0
    mode: Literal["threshold", "adaptive"] = "threshold"
    adaptive_k: float = 1.5
    cancel_on_open: bool = False

    def __post_init__(self) -> None:
        for f in FIELDS:
            value = getattr(self, f.name)
            f.check(value)
            if f.kind == "integer" and not isinstance(value, int):
                object.__setattr__(self, f.name, int(value))  # 3.0 from JSON means 3
        if self.window == "count" and not float(self.window_size).is_integer():
            raise ConfigError(
                f"window_size must be a whole number of calls for a count window, "
                f"got {self.window_size!r}",
                field="window_size",
                value=self.window_size,
            )
        if self.open_duration_max < self.open_duration:
            raise ConfigError(
                f"open_duration_max ({self.open_duration_max!r}) must be >= "
                f"open_duration ({self.open_duration!r})",
                field="open_duration_max",
                value=self.open_duration_max,
            )

    @property
    def count_window_minimum(self) -> int:
        """The minimum number of calls judged: count windows use min(minimum_calls, size)."""
        if self.window == "count":
            return min(self.minimum_calls, int(self.window_size))
        return self.minimum_calls

    def window_shape(self) -> tuple[str, float, int]:
        """What a window is built from; a change of it starts an empty window."""
        return (self.window, self.window_size, self.buckets)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        base: BreakerConfig | None = None,
        unknown: Literal["error", "ignore"] = "error",
    ) -> BreakerConfig:
        """Build a config from plain data (a file's or etcd's JSON), over ``base``.

        Unknown keys raise ConfigError with ``unknown="error"`` (what the CLI
        does) and are skipped with ``unknown="ignore"`` (what a running
        process does, so a fleet can run two versions mid-rollout).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a breaker config must be an object, got {type(data).__name__}", value=data
            )
        extra = sorted(str(k) for k in data if k not in _BY_NAME)
        if extra and unknown == "error":
            raise ConfigError(f"unknown field(s): {', '.join(extra)}", field=extra[0])
        values = {k: v for k, v in data.items() if k in _BY_NAME}
        return dataclasses.replace(base or cls(), **values)  # __post_init__ checks each
