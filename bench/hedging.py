"""Hedged requests on a long tail: ``session(hedge=hedge("p95"))`` against the same without.

    python -m bench.hedging [--shape 20x|50x ...] [--seconds 30] [--rate 200] [--rounds 1]

The upstream and the load are ``bench.long_tail``'s (one upstream process on
loopback; most answers in 3 ms, a share far later: ``20x`` is 2% at 60 ms,
``50x`` 1% at 150 ms; open loop, every client at ``--rate`` requests/s at
once, each on its own path, every request from the first). Three clients:

- ``aiohttp``: a bare ``aiohttp.ClientSession()``;
- ``retry-only``: ``resilient.http.session()`` with every default (budgeted
  retries, breaker, learned timeouts: what a user has before hedging);
- ``hedged``: ``resilient.http.session(hedge=hedge("p95"))``, nothing else
  changed: a second request once the first has taken longer than the
  host's recent P95, within the hedge budget (5% of requests plus one a
  second per host).

Reported per client: P50, P99, P999, failures and upstream requests per
request sent. Targets (DESIGN.md, issue 18), ``hedged`` against each of the
other two in the same run: P99 <= 0.35x, P999 <= 0.5x, and at most 5% extra
requests to the upstream. (In the ``50x`` shape only 1% of answers are slow,
so the unhedged P99 falls on the edge of the tail, either side of it by
chance: only its P999 is judged.) The delay is learned: the first calls (until the
percentile has 32 samples) are not hedged, and they count.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import aiohttp

from bench import long_tail
from bench.long_tail import SHAPES, Factory, Seen, percentile, print_table
from resilient import hedge
from resilient.http import session
from resilient.hub import Hub

CLIENTS: dict[str, Factory] = {
    "aiohttp": aiohttp.ClientSession,
    "retry-only": lambda: session(hub=Hub(namespace="bench-hedging")),
    "hedged": lambda: session(hub=Hub(namespace="bench-hedging"), hedge=hedge("p95")),
}
#: (quantile, label, the most the hedged client's may be of an unhedged one's)
TAIL_TARGETS = ((0.99, "P99", 0.35), (0.999, "P999", 0.5))
EXTRA_TARGET = 0.05


def report(shape: str, seen: dict[str, Seen]) -> bool:
    print_table(seen)
    ours = seen["hedged"]
    passed = True
    share = SHAPES[shape][0]
    for peer in ("aiohttp", "retry-only"):
        for q, label, most in TAIL_TARGETS:
            if 1.0 - q >= share:
                print(f"  [----] {shape}: {label} not judged: it falls at the edge of the tail")
                continue
            ratio = percentile(ours.latency, q) / percentile(seen[peer].latency, q)
            ok = ratio <= most
            passed &= ok
            print(
                f"  [{'PASS' if ok else 'FAIL'}] {shape}: hedged {label} {ratio:.3f}x "
                f"{peer}'s (<= {most:g}x)"
            )
    extra = ours.hits / ours.sent - 1.0
    ok = extra <= EXTRA_TARGET and not ours.failed
    passed &= ok
    print(
        f"  [{'PASS' if ok else 'FAIL'}] {shape}: {extra:+.2%} upstream requests, "
        f"{sum(ours.failed.values())} failed (<= +{EXTRA_TARGET:.0%}, none failed)"
    )
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    return long_tail.main(
        argv, prog="python -m bench.hedging", doc=__doc__, clients=CLIENTS, judge=report
    )


if __name__ == "__main__":
    sys.exit(main())
