"""Adaptive throttling: the client-side throttle of Google's SRE book.

Instead of opening all at once, a breaker in adaptive mode rejects each call
with probability

    p = max(0, (requests - K * accepts) / (requests + 1))

over its window, where ``requests`` counts every admission attempt (drops
included) and ``accepts`` counts successes that were not slow. A healthy
dependency (accepts close to requests) sees no drops; a sick one keeps
receiving about ``K * accepts`` calls, so recovery is seen at once. Nothing is
dropped while ``requests < minimum_calls``.

Two refinements, after go-zero, keep recovery quick (drops count as requests,
so the plain formula would keep throttling a healed dependency for many
windows): each newest bucket in a row that saw only successes halves ``p``
(``RECOVERY``), and a call is let through whenever none was for
``FORCE_PASS`` seconds, so the throttle always sees fresh evidence.

Source: "Handling Overload", Site Reliability Engineering (2016), ch. 21,
"Client-side throttling"; go-zero's ``core/breaker/googlebreaker.go``.
"""

from __future__ import annotations

__all__ = ["FORCE_PASS", "RECOVERY", "drop_probability"]

FORCE_PASS = 1.0  # seconds without an admitted call before one is let through
RECOVERY = 0.5  # p is multiplied by this for each healthy newest bucket in a row


def drop_probability(
    requests: int, accepts: int, k: float, minimum: int, healthy_streak: int = 0
) -> float:
    """The probability of rejecting the next call (0.0 to below 1.0)."""
    if requests < minimum:
        return 0.0
    excess = requests - k * accepts
    if excess <= 0:
        return 0.0
    return excess / (requests + 1) * RECOVERY**healthy_streak
