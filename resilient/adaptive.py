"""Adaptive throttling: the client-side throttle of Google's SRE book.

Instead of opening all at once, a breaker in adaptive mode rejects each call
with probability

    p = max(0, (requests - K * accepts) / (requests + 1))

over its window, where ``requests`` counts every admission attempt (drops
included) and ``accepts`` counts successes that were not slow. A healthy
dependency (accepts close to requests) sees no drops; a sick one keeps
receiving about ``K * accepts`` calls, so recovery is seen at once. Nothing is
dropped while ``requests < minimum_calls``.

Source: "Handling Overload", Site Reliability Engineering (2016), ch. 21,
"Client-side throttling"; go-zero's ``core/breaker/googlebreaker.go``.
"""

from __future__ import annotations

__all__ = ["drop_probability"]


def drop_probability(requests: int, accepts: int, k: float, minimum: int) -> float:
    """The probability of rejecting the next call (0.0 to below 1.0)."""
    if requests < minimum:
        return 0.0
    excess = requests - k * accepts
    return excess / (requests + 1) if excess > 0 else 0.0
