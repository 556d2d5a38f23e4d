"""What a breaker shares with a fleet through a store (Redis): the seam's data.

A store syncs each breaker at most once per interval: ``breaker.sync_out()``
gives an ``Outbox`` (its counts since the last sync, by bucket age, its probe
outcomes, what it asks of the fleet), the store runs one atomic script, and
``breaker.sync_in(view)`` applies the ``FleetView`` it answers with. The hot
path never waits for any of this: between syncs a breaker judges with the last
fleet view plus its own unsent counts.

Two kinds of opening are kept apart. A *fleet* trip (the fleet's combined
window crossing a threshold) is asked of the store at once (``link.wake()``),
decided atomically there so exactly one process opens the fleet, and published
to every process. A *local* trip (this process's own window crossing) opens
this process alone and is not published: a local fault is not hidden by a
healthy fleet, and one bad process does not trip everyone.

``FleetLink`` is the breaker's companion for this: plain state, read and
changed only under the breaker's lock. The breaker's side of each sync, worked
on its ``Circuit``, is in ``fleet_sync.py`` (above both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from resilient.window import KINDS, SLOW_FAILURE, TimeWindow

if TYPE_CHECKING:
    from resilient.config import BreakerConfig

__all__ = ["FleetLink", "FleetView", "Outbox", "StoreLink"]

_OUTCOMES = SLOW_FAILURE + 1  # success, slow success, failure, slow failure: a bucket's first cells
_EVERY = -(2**63)  # ``sent_from`` when any live bucket may hold unsent counts


class StoreLink(Protocol):
    """What a breaker may ask of its store."""

    def wake(self) -> None:
        """Sync this breaker soon (thread-safe, never blocks)."""


@dataclass(frozen=True, slots=True)
class Outbox:
    """What a breaker sends its store at one sync (see docs/formats.md)."""

    name: str
    window_width: float  # seconds per bucket; 0.0 for count windows (state only)
    buckets: int
    deltas: tuple[tuple[int, int, int, int, int], ...]  # (age, ok, slow_ok, failed, slow_failed)
    probe_calls: int
    probe_failures: int
    probe_slow: int
    probe_generation: int
    tokens_wanted: int
    manual: str | None
    trip: str | None
    config: BreakerConfig
    jitter: float


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet's state and window, as the store answered (epoch times)."""

    state: str
    open_until: float | None
    now: float
    trips: int
    generation: int
    calls: int
    failures: int
    slow: int
    tokens: int = 0


class FleetLink:
    """A breaker's side of its store: what was sent, what the fleet said.

    Every method assumes the breaker's lock is held.
    """

    __slots__ = (
        "calls",
        "degraded",
        "failed_syncs",
        "failures",
        "generation",
        "heard",
        "manual",
        "probe_calls",
        "probe_failures",
        "probe_slow",
        "round",
        "sent",
        "sent_from",
        "sent_head",
        "sent_mark",
        "slow",
        "store",
        "tokens_wanted",
        "trip",
    )

    def __init__(self, store: StoreLink) -> None:
        self.store = store
        self.degraded = False
        self.failed_syncs = 0  # in a row; the fleet's half-open is given up at two
        self.generation = -1  # the last fleet transition applied here
        self.heard = False  # a view of the fleet was applied: there is a combined window
        self.round = False  # this OPEN / HALF_OPEN episode is the fleet's, not ours alone
        # The fleet window as last answered (our own sent counts included).
        self.calls = self.failures = self.slow = 0
        # Sent counts per absolute bucket number, to send only what is new.
        self.sent: dict[int, list[int]] = {}
        # The oldest bucket that may hold unsent counts: a window adds only to its
        # head, so every bucket older than the head at the last mark is as sent
        # (until a failed sync takes its counts back: then every live bucket).
        self.sent_from = _EVERY
        self.sent_head = 0  # the window's head at the last sync_out
        # (head, sum of the counts) when they were sent: the same now means nothing new,
        # since within one head the counts only grow (a quiet breaker's flush is cheap).
        self.sent_mark: tuple[int, int] | None = None
        # Asked of the fleet at the next sync.
        self.manual: str | None = None
        self.trip: str | None = None
        self.tokens_wanted = 0
        # Probe outcomes of the fleet's round already sent (the breaker keeps the totals).
        self.probe_calls = self.probe_failures = self.probe_slow = 0

    @property
    def active(self) -> bool:
        """Does the fleet decide now (store reachable)?"""
        return not self.degraded

    def unsent(self, window: TimeWindow) -> list[tuple[int, list[int]]]:
        """Counts added since the last sync, per live bucket: (age, [4 outcome counts])."""
        counts, n, head = window.counts, window.buckets, window.head
        if self.sent_mark == (head, sum(counts)):
            return []
        out = []
        sent = self.sent
        for age in range(head - max(self.sent_from, head - n + 1) + 1):  # newest first
            number = head - age
            start = (number % n) * KINDS
            now = counts[start : start + _OUTCOMES]
            before = sent.get(number)
            delta = now if before is None else [a - b for a, b in zip(now, before, strict=True)]
            if any(delta):
                out.append((age, delta))
        return out

    def mark_sent(self, window: TimeWindow, *, since_last: bool = False) -> None:
        """Everything in ``window`` is sent. ``since_last``: the window is the one
        last marked, so only its buckets from that mark's head on are read again."""
        counts, n, head = window.counts, window.buckets, window.head
        oldest = head - n + 1
        if not since_last:
            self.sent, self.sent_from = {}, _EVERY
        sent = self.sent
        for number in range(max(self.sent_from, oldest), head + 1):
            start = (number % n) * KINDS
            sent[number] = counts[start : start + _OUTCOMES]
        if len(sent) > n:  # buckets gone out of the window
            for number in [k for k in sent if k < oldest]:
                del sent[number]
        self.sent_from = head
        self.sent_mark = (head, sum(counts))

    def unmark(self, outbox: Outbox, head: int) -> None:
        """A sync failed: take its counts off what was sent, to send them again."""
        self.sent_mark = None
        self.sent_from = _EVERY
        for age, *delta in outbox.deltas:
            sent = self.sent.get(head - age)
            if sent is not None:
                self.sent[head - age] = [a - b for a, b in zip(sent, delta, strict=True)]
        self.manual = self.manual or outbox.manual
        self.trip = self.trip or outbox.trip
        self.probe_calls -= outbox.probe_calls
        self.probe_failures -= outbox.probe_failures
        self.probe_slow -= outbox.probe_slow

    def combined(self, window: TimeWindow) -> tuple[int, int, int]:
        """The fleet's window now, as best known: its last answer plus our unsent counts."""
        calls, failures, slow = self.calls, self.failures, self.slow
        for _, (ok, slow_ok, failed, slow_failed) in self.unsent(window):
            calls += ok + slow_ok + failed + slow_failed
            failures += failed + slow_failed
            slow += slow_ok + slow_failed
        return calls, failures, slow
