"""The chaos demo's engine without servers: scenarios, and the figures of a recorded run."""

from __future__ import annotations

import pytest

from resilient.demo import FAULTS, Result, Scenario, rows, scenario, summarize


def test_an_outage_scenario_has_three_phases_and_one_fault() -> None:
    s = scenario("outage", rate=150, healthy=4, faulty=6, healed=6)
    assert [(p.name, p.seconds, p.fault) for p in s.phases] == [
        ("healthy", 4, False),
        ("outage", 6, True),
        ("healed", 6, False),
    ]
    assert s.phases[1].behaviour == {"latency": 0.002, "hang": 1.0}
    assert s.duration == 16
    assert s.faults() == [(4.0, 10.0)]


def test_mixed_is_a_brownout_then_an_outage_counted_as_one_fault() -> None:
    s = scenario("mixed", faulty=8)
    assert [p.name for p in s.phases] == ["healthy", "brownout", "outage", "healed"]
    assert s.phases[1].behaviour == {"latency": 0.002, **FAULTS["brownout"]}
    assert s.faults() == [(4.0, 12.0)]


def test_a_custom_mix_and_its_errors() -> None:
    s = scenario("hang=0.25,error=0.5,status=502")
    assert s.phases[1].behaviour == {"latency": 0.002, "hang": 0.25, "error": 0.5, "status": 502}
    with pytest.raises(ValueError, match="fault must be one of"):
        scenario("meltdown")
    with pytest.raises(ValueError, match="hang must be a number"):
        scenario("hang=lots")
    with pytest.raises(ValueError, match="rate"):
        scenario("outage", rate=0)
    with pytest.raises(ValueError, match="healed"):
        scenario("outage", healed=-1)


def recorded(s: Scenario) -> Result:
    """A run at 10 requests/s: fine, failing fast in the fault, back 0.5 s after the heal."""
    result = Result("x", s)
    for i in range(int(s.duration * 10)):
        at = (i + 0.5) / 10  # off the window edges
        in_fault = 4.0 <= at < 10.5
        result.record(at, 0.002 if not in_fault else (2.0 if at < 4.5 else 0.0001), "200")
        if in_fault:
            result.ok[-1] = False
            result.kind[-1] = "HostCircuitOpenError"
    result.states = [(4.3, "open"), (9.9, "half_open"), (10.5, "closed")]
    result.hits = {"outage": 7}
    return result


def test_summary_of_a_recorded_run() -> None:
    s = scenario("outage", rate=10, healthy=4, faulty=6, healed=6)
    summary = summarize(recorded(s))
    assert summary.requests == 160
    assert summary.success == pytest.approx(95 / 160)
    assert summary.outside == pytest.approx(100 / 160)
    assert summary.p50 == 0.002
    assert summary.p99 == 2.0  # the five slow ones are 3% of 160
    assert summary.trip == pytest.approx(0.3)
    assert summary.recover == pytest.approx(0.6)  # the first fully good window after the heal
    assert summary.after_heal == 1.0
    assert summary.hits == 7
    assert summary.hits_by_phase == {"outage": 7}
    assert summary.opened
    table = rows([summary])
    assert table[0][0] == "client" and table[1][:2] == ["x", "2.0 ms"]
