"""One sync of a breaker with its fleet: what it sends, and what the answer changes.

``outbox`` gives what to send the store (the counts since the last sync, probe
outcomes, what is asked of the fleet); ``apply`` takes the fleet's answer, or
a published transition, into the circuit; ``failed`` decides on local state
while the store cannot be reached. The breaker calls them from ``sync_out``,
``sync_in`` and ``sync_failed``, under its lock. ``fleet.py`` holds the data
they work on, ``circuit.py`` the transitions they make.
"""

from __future__ import annotations

from resilient.circuit import Circuit, Effects
from resilient.fleet import FleetLink, FleetView, Outbox
from resilient.state import State
from resilient.window import TimeWindow

__all__ = ["apply", "failed", "outbox"]


def outbox(link: FleetLink, circuit: Circuit, now: float) -> Outbox | None:
    """What to send the store now (counts, probe outcomes, requests), or None."""
    circuit.upkeep(now)
    window, probes = circuit.window, circuit.probes
    # Count windows share only state: their order of outcomes has no buckets to add up.
    timed = window if isinstance(window, TimeWindow) else None
    deltas: tuple[tuple[int, int, int, int, int], ...] = ()
    if timed is not None:
        deltas = tuple((age, d[0], d[1], d[2], d[3]) for age, d in link.unsent(timed))
    votes = (
        (
            probes.calls - link.probe_calls,
            probes.failures - link.probe_failures,
            probes.slow - link.probe_slow,
        )
        if link.round
        else (0, 0, 0)
    )
    wanted = deltas or any(votes) or link.tokens_wanted or link.manual or link.trip
    if not wanted and not link.degraded:  # degraded: ask anyway, to hear the fleet again
        return None
    box = Outbox(
        name=circuit.name,
        window_width=timed.width if timed is not None else 0.0,
        buckets=timed.buckets if timed is not None else 0,
        deltas=deltas,
        probe_calls=votes[0],
        probe_failures=votes[1],
        probe_slow=votes[2],
        probe_generation=link.generation,
        tokens_wanted=link.tokens_wanted,
        manual=link.manual,
        trip=link.trip,
        config=circuit.config,
        jitter=circuit.jitter(),
    )
    if timed is not None:
        link.mark_sent(timed, since_last=True)
        link.sent_head = timed.head
    link.probe_calls += votes[0]
    link.probe_failures += votes[1]
    link.probe_slow += votes[2]
    link.manual = link.trip = None
    return box


def apply(link: FleetLink, circuit: Circuit, view: FleetView, now: float, effects: Effects) -> None:
    """Take the fleet's answer (or a published transition)."""
    link.degraded = False
    link.failed_syncs = 0
    link.heard = True
    link.calls, link.failures, link.slow = view.calls, view.failures, view.slow
    if view.generation > link.generation:  # generations only grow; older views are late
        link.generation = view.generation
        _adopt(link, circuit, view, now, effects)
    if view.tokens and circuit.state is State.HALF_OPEN and link.round:
        circuit.probes.left += view.tokens
        link.tokens_wanted = max(0, link.tokens_wanted - view.tokens)
    circuit.refresh(now)


def failed(link: FleetLink, circuit: Circuit, outbox: Outbox | None) -> None:
    """The store could not be reached: decide on local state until it answers again.

    ``outbox`` (what could not be sent) is kept, to be sent at the next sync.
    """
    if outbox is not None:
        link.unmark(outbox, link.sent_head)
    link.failed_syncs += 1
    if link.failed_syncs == 2 and circuit.state is State.HALF_OPEN and link.round:
        # No fleet to grant permits (twice: one slow sync is not an
        # outage): probe locally so half-open cannot stick.
        probes = circuit.probes
        handed_out = len(probes.running) + probes.calls
        probes.left = max(0, circuit.config.half_open_calls - handed_out)
        link.tokens_wanted = 0
    link.degraded = True


def _adopt(
    link: FleetLink, circuit: Circuit, view: FleetView, now: float, effects: Effects
) -> None:
    """Take a fleet transition for this process (its own local trips stand)."""
    state, ours = State(view.state), circuit.state
    if state is State.OPEN and view.open_until is not None:
        if ours is State.CLOSED or link.round or ours is State.HALF_OPEN:
            circuit.trips = view.trips
            left = max(0.0, view.open_until - view.now)
            circuit.open_for(left, "the fleet opened", now, effects)
            link.round = True
    elif state is State.HALF_OPEN:
        if ours in (State.OPEN, State.CLOSED) and (link.round or ours is State.CLOSED):
            link.round = True
            circuit.transition(State.HALF_OPEN, "the fleet is probing", now, effects)
    elif state is State.CLOSED:
        if (link.round and ours in (State.OPEN, State.HALF_OPEN)) or (
            ours in (State.FORCED_OPEN, State.DISABLED)
        ):
            circuit.close("the fleet closed", now, effects)
    elif state is not ours:
        circuit.transition(state, f"fleet: {state.value}", now, effects)
