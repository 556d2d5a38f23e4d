"""The chaos demo: what `resilient` does to P99 and the error rate when a dependency fails.

``resilient demo`` (``main()``) starts a steerable upstream in its own
process (``python -m resilient.testing.upstream``; no other server needed),
drives one open-loop load through two clients at once, a bare
``aiohttp.ClientSession`` with a 2 s timeout (what most code does today) and
``resilient.http.session(timeouts=Timeouts(total=2.0))``, while the upstream
goes through a scenario (healthy, then a brownout and/or an outage, then
healed). It shows live progress, prints a side-by-side table (P50, P99, P999,
success rate, requests that reached the sick upstream, time to trip and to
recover) and writes a PNG plot of latency over time with the breaker's state
shaded.

The engine here is shared with bench/chaos.py, which runs the same
scenarios with more contenders, one at a time:

- ``Scenario``: phases, each an upstream ``Behaviour`` held for some seconds.
- ``Contender``: a name and a way to open a client (``fetch(url) -> status``)
  that reports its breaker's state changes.
- ``run()``: an open-loop schedule (request ``i`` is sent at ``i / rate``
  whatever happened to the others), every request timed from send to the end
  of its body or its error, so failures and rejections count at the time
  they took; hits at the upstream counted per contender (its own path)
  across the fault phases.
- ``summarize()`` and ``plot()``.

One module each: ``_scenario``, ``_upstream``, ``_run``, ``_summary``,
``_plot``, ``_command``. Optional packages (rich, matplotlib) are imported
where used.
"""

from __future__ import annotations

from resilient.demo._command import main
from resilient.demo._plot import plot
from resilient.demo._run import Contender, Fetch, Result, StateSink, baseline, contender, run
from resilient.demo._scenario import FAULTS, Phase, Scenario, scenario
from resilient.demo._summary import Summary, rows, summarize
from resilient.demo._upstream import AsyncUpstreamProcess

__all__ = [
    "FAULTS",
    "AsyncUpstreamProcess",
    "Contender",
    "Fetch",
    "Phase",
    "Result",
    "Scenario",
    "StateSink",
    "Summary",
    "baseline",
    "contender",
    "main",
    "plot",
    "rows",
    "run",
    "scenario",
    "summarize",
]
