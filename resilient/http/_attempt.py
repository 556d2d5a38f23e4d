"""The learned attempt timeout: a bound from one host's healthy answers, and its hang symptoms.

One idea: cut an attempt when it has become a hang, and only then.

``Timeouts(attempt="auto")`` (the default) learns each host's attempt
timeout from the answers it gives while healthy (``AttemptLearner``, one per
host, fed by the pipeline): ``ATTEMPT_MULTIPLE`` (10) times the 90th
percentile of the recent good answers (the typical answer; not the 99th, so
a pause that delays a few percent of them does not stretch it), or
``ATTEMPT_TAIL`` (2) times the slowest of them when that one is slower still
(the tail that succeeds is healthy too: the bound sits above it), never
below ``ATTEMPT_FLOOR`` (50 ms: fast hosts jitter, and a retry must be rare).
The timeout layer (``resilient.http._timeouts``) adds the breaker's slow
limit and ``total`` around it.

A learned bound is a guess from censored data: only answers faster than the
bound in force are ever seen. A host whose healthy tail lies above the bound
(2% of its answers at 60 ms behind a 50 ms bound) would have every answer of
that tail cut and retried for ever, each cut costing the caller the bound, a
backoff and a second request, and the learner would never see the tail that
proves the bound wrong. So an attempt that reaches its learned bound is cut
at once only when the host shows *hang symptoms*: ``HANG_OVERRUNS`` (4) of
its last ``HANG_WINDOW`` (40) attempts reached the bound, a share of 10% or
more, the share the 90th percentile sets aside (a tail is rarer; a brownout
where a third of the requests hang, or an outage, are far above it).
Otherwise the attempt is given ``ATTEMPT_PATIENCE`` (10) times the bound (as
much headroom over the bound as the bound has over the typical answer),
within ``total`` and the deadline. A slow answer then arrives, is neither cut
nor retried, and is learned from, so the bound rises above the tail; a hang
is cut at the longer bound. What it costs: at a host that was healthy, the
first three attempts that hang wait the longer bound (in an outage the
breaker cuts them when it opens, ``cancel_on_open``), and a host with a slow
tail has its hangs cut above that tail.

Rejected alternatives: a higher percentile or a larger floor (a constant:
some tail is always just above it, and it loosens the bound in a brownout,
where a third of the attempts hang); hedging at the bound (every tail answer
would cost a second request: 2% extra load on a healthy host); a bound that
only backs off after a cut, as TCP's retransmission timer does (Karn's rule:
the next fast answer brings it back down before the next slow one comes).

Concurrency: one event loop. A learner is touched only from the loop of the
session that made it.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from resilient.latency import SAMPLE_GAP, Recent

__all__ = [
    "ATTEMPT_FIRST",
    "ATTEMPT_FLOOR",
    "ATTEMPT_MULTIPLE",
    "ATTEMPT_PATIENCE",
    "ATTEMPT_QUANTILE",
    "ATTEMPT_RELEARN",
    "ATTEMPT_SAMPLES",
    "ATTEMPT_SAMPLE_GAP",
    "ATTEMPT_TAIL",
    "HANG_OVERRUNS",
    "HANG_WINDOW",
    "AttemptLearner",
]

#: "auto" attempt timeout: this many times ...
ATTEMPT_MULTIPLE: Final = 10.0
#: ... the 90th percentile of the host's recent healthy answers (not the 99th:
#: a pause that delays a few percent of them, a GC or a busy CPU, must not
#: inflate it) ...
ATTEMPT_QUANTILE: Final = 0.9
#: ... or this many times the slowest of them, when it is slower than that:
#: the tail that succeeds is healthy too, and the bound sits above it ...
ATTEMPT_TAIL: Final = 2.0
#: ... but never below this (seconds): fast hosts jitter, and a retry must be rare.
ATTEMPT_FLOOR: Final = 0.05
#: Hang symptoms: this many of the host's attempts reached the learned bound
#: within its last ``HANG_WINDOW`` attempts: a share of ``1 - ATTEMPT_QUANTILE``
#: (10%). A tail the 90th percentile sets aside is rarer; hangs are not.
HANG_OVERRUNS: Final = 4
HANG_WINDOW: Final = round(HANG_OVERRUNS / (1.0 - ATTEMPT_QUANTILE))
#: An attempt reaching its learned bound at a host without hang symptoms is
#: given this many times the bound before it is cut (as much headroom over the
#: bound as the bound has over the typical answer).
ATTEMPT_PATIENCE: Final = ATTEMPT_MULTIPLE
#: Answers the percentile is taken over, how many it is first learned from, and
#: how often (in answers) it is learned again.
ATTEMPT_SAMPLES: Final = 256
ATTEMPT_FIRST: Final = 32
ATTEMPT_RELEARN: Final = 64
#: Once learned, at most one answer per this many seconds is sampled (1,000 a
#: second, ``resilient.latency.SAMPLE_GAP``): at higher rates a sample
#: describes the host as well, and costs less.
ATTEMPT_SAMPLE_GAP: Final = SAMPLE_GAP


class AttemptLearner(Recent):
    """The attempt timeout learned from one host's healthy answers, and its hang symptoms.

    ``seconds`` is ``ATTEMPT_MULTIPLE`` times the ``ATTEMPT_QUANTILE`` of the
    last ``ATTEMPT_SAMPLES`` healthy answers, or ``ATTEMPT_TAIL`` times the
    slowest of them if that is more (an answer slower than the typical
    answers' bound is the host's tail, not noise: a pause shorter than that
    bound moves nothing), clipped to ``[floor, ceiling]``; it is ``ceiling``
    (the total) until ``ATTEMPT_FIRST`` answers were seen, and is learned
    again every ``ATTEMPT_RELEARN`` samples. Once learned, it takes at most
    one answer per ``ATTEMPT_SAMPLE_GAP`` (``Recent``): the pipeline skips
    the call while ``now < next_at``.

    Only answers shorter than the bound in force reach the learner, unless
    the bound waits on: ``attempts`` counts the attempts it bounded
    (``TimeoutLayer.arm``), ``overran`` each one that reached it
    (``Watchdog``). While fewer than ``HANG_OVERRUNS`` of the last
    ``HANG_WINDOW`` attempts overran (``attempts >= hung_until``), the host
    shows no hang symptoms and an overrunning attempt is given
    ``ATTEMPT_PATIENCE`` times the bound: a slow answer then arrives and is
    learned from, which lifts the bound above the tail.
    """

    __slots__ = ("_ceiling", "_floor", "_overruns", "attempts", "hung_until", "seconds")

    def __init__(self, floor: float, ceiling: float) -> None:
        super().__init__(ATTEMPT_SAMPLES, ATTEMPT_FIRST, ATTEMPT_RELEARN, ATTEMPT_SAMPLE_GAP)
        self._floor = floor
        self._ceiling = ceiling
        self.seconds = ceiling
        self.attempts = 0  # attempts the learned bound was in force for
        self._overruns: deque[int] = deque(maxlen=HANG_OVERRUNS)  # ``attempts`` at each
        self.hung_until = 0  # hang symptoms while ``attempts`` is below this

    def observe(self, duration: float, now: float) -> None:
        """A healthy answer that took ``duration`` ended at ``now`` (loop time)."""
        if self.add(duration, now):
            bound = max(self._floor, ATTEMPT_MULTIPLE * self.quantile(ATTEMPT_QUANTILE))
            slowest = self.slowest()
            if slowest > bound:  # the tail that succeeds: sit above it
                bound = ATTEMPT_TAIL * slowest
            self.seconds = min(self._ceiling, bound)

    def overran(self) -> bool:
        """An attempt reached the learned bound: True if the host still shows no hang symptoms."""
        overruns = self._overruns
        overruns.append(self.attempts)
        if len(overruns) == HANG_OVERRUNS:
            self.hung_until = overruns[0] + HANG_WINDOW
        return self.attempts >= self.hung_until
