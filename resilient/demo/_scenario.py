"""Scenarios: phases of upstream behaviour under an open-loop load.

A ``Scenario`` is a name, a rate and phases; each ``Phase`` holds the
upstream in one ``Behaviour`` (``resilient.testing.upstream``) for some
seconds. ``scenario()`` builds the usual shape: healthy, faulty, healed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["FAULTS", "Phase", "Scenario", "scenario"]

#: Named fault mixes (``Behaviour`` fields): an outage hangs every request; a
#: brownout hangs a third of them and answers a sixth with 503.
FAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "outage": {"hang": 1.0},
    "brownout": {"hang": 1 / 3, "error": 1 / 6},
}


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of a scenario: the upstream behaves as ``behaviour`` for ``seconds``."""

    name: str
    seconds: float
    behaviour: Mapping[str, Any]
    fault: bool


@dataclass(frozen=True, slots=True)
class Scenario:
    """Phases run back to back under an open-loop load of ``rate`` requests/s."""

    name: str
    rate: float
    phases: tuple[Phase, ...]

    @property
    def duration(self) -> float:
        return sum(p.seconds for p in self.phases)

    def spans(self) -> list[tuple[Phase, float, float]]:
        """Each phase with its start and end, in seconds from the start."""
        out, at = [], 0.0
        for phase in self.phases:
            out.append((phase, at, at + phase.seconds))
            at += phase.seconds
        return out

    def faults(self) -> list[tuple[float, float]]:
        """The fault periods (consecutive fault phases merged)."""
        merged: list[tuple[float, float]] = []
        for phase, start, end in self.spans():
            if not phase.fault:
                continue
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged


def _mix(fault: str) -> dict[str, Any]:
    """A named fault mix, or ``"hang=0.3,error=0.2"`` (shares, ``status=``, ``retry_after=``)."""
    if fault in FAULTS:
        return dict(FAULTS[fault])
    mix: dict[str, Any] = {}
    for part in fault.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(
                f"fault must be one of {', '.join(FAULTS)}, 'mixed', or shares like "
                f"'hang=0.3,error=0.2'; got {fault!r}"
            )
        try:
            mix[key] = int(value) if key in ("status", "chunks") else float(value)
        except ValueError:
            raise ValueError(f"fault {key} must be a number, got {value.strip()!r}") from None
    return mix


def scenario(
    fault: str = "outage",
    *,
    rate: float = 150.0,
    healthy: float = 4.0,
    faulty: float = 6.0,
    healed: float = 6.0,
    latency: float = 0.002,
) -> Scenario:
    """A scenario: ``healthy`` s, then ``faulty`` s of ``fault``, then ``healed`` s.

    Args:
        fault: ``"outage"``, ``"brownout"``, ``"mixed"`` (a brownout, then an
            outage, half the fault time each) or a custom mix of
            ``Behaviour`` fields such as ``"hang=0.3,error=0.2"``.
        rate: requests per second, open loop.
        latency: the upstream's healthy latency, seconds.

    Raises:
        ValueError: an argument is out of range or the mix is malformed
            (the upstream validates the mix itself when it is installed).
    """
    if not (math.isfinite(rate) and 0 < rate <= 5000):
        raise ValueError(f"rate must be in (0, 5000] requests/s, got {rate!r}")
    for name, value in (("healthy", healthy), ("faulty", faulty), ("healed", healed)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    calm = {"latency": latency}
    middle: tuple[Phase, ...]
    if fault == "mixed":
        middle = (
            Phase("brownout", faulty / 2, {**calm, **FAULTS["brownout"]}, True),
            Phase("outage", faulty / 2, {**calm, **FAULTS["outage"]}, True),
        )
    else:
        name = fault if fault in FAULTS else "fault"
        middle = (Phase(name, faulty, {**calm, **_mix(fault)}, True),)
    phases = (Phase("healthy", healthy, calm, False), *middle, Phase("healed", healed, calm, False))
    return Scenario(f"{fault} @ {rate:g} req/s", rate, phases)
