"""The httpx exchange's pure parts: the attempt's timeouts, timeouts named for the bound,
overruns reported lazily from the clock; and the demo's choice of client."""

from __future__ import annotations

import httpx
import pytest

from resilient.cli import EXIT_USAGE
from resilient.cli import main as cli_main
from resilient.demo._command import CLIENTS, _contenders
from resilient.errors import DeadlineExceeded
from resilient.http._attempt import HANG_OVERRUNS, AttemptLearner
from resilient.httpx import AttemptTimeoutError
from resilient.httpx._exchange import _clipped, _judged, _Overruns
from resilient.hub import Hub

REQUEST = httpx.Request("GET", "http://127.0.0.1:8080/x")


def test_the_attempts_timeouts_are_the_tighter_of_the_clients_and_the_bound() -> None:
    base: dict[str, float | None] = {"connect": 2.0, "read": None, "write": 0.1, "pool": 5.0}
    assert _clipped(base, 0.5) == {"connect": 0.5, "read": 0.5, "write": 0.1, "pool": 0.5}
    assert _clipped(base, None) == base
    assert _clipped(base, 0.5) is not base  # the client's own dict is never changed


def test_a_timeout_at_the_bound_is_named_for_the_bound() -> None:
    phases: dict[str, float | None] = {"connect": 0.5, "read": 0.5, "write": 0.1, "pool": 0.5}
    read = httpx.ReadTimeout("timed out")
    at_attempt = _judged(REQUEST, read, (0.5, "attempt", None, 0.5), phases)
    assert isinstance(at_attempt, AttemptTimeoutError)
    assert (at_attempt.bound, at_attempt.seconds) == ("attempt", 0.5)
    assert "http://127.0.0.1:8080" in str(at_attempt)
    assert isinstance(
        _judged(REQUEST, read, (0.5, "deadline", None, 0.5), phases), DeadlineExceeded
    )
    # The client's own, tighter write timeout stays httpx's error.
    write = httpx.WriteTimeout("timed out")
    assert _judged(REQUEST, write, (0.5, "attempt", None, 0.5), phases) is write
    other = httpx.ConnectError("refused")
    assert _judged(REQUEST, other, (0.5, "attempt", None, 0.5), phases) is other


def test_overruns_are_reported_when_the_next_attempt_starts_or_the_attempt_ends() -> None:
    learner = AttemptLearner(0.05, 2.0)
    overruns = _Overruns()
    keys = [object() for _ in range(HANG_OVERRUNS)]
    for n, key in enumerate(keys):
        learner.attempts += 1
        overruns.watch(key, 1.0 + n, learner)
    overruns.sweep(0.5)  # nothing has reached its bound
    assert learner.hung_until == 0
    overruns.end(keys[0], 0.9)  # ended before its bound: no overrun
    overruns.sweep(2.5)  # keys 1 and 2 reached theirs
    overruns.end(keys[3], 4.2)  # reached it, and ended after: reported at its end
    overruns.end(keys[1], 5.0)  # already reported by the sweep: not twice
    learner.attempts += 1
    later = object()
    overruns.watch(later, 6.0, learner)
    overruns.sweep(7.0)
    assert learner.hung_until > learner.attempts  # four overruns: hang symptoms


def test_the_demo_compares_within_one_client_library() -> None:
    hub = Hub()
    assert [[c.name for c in _contenders(client, hub)] for client in CLIENTS] == [
        ["aiohttp", "resilient"],
        ["httpx", "resilient-httpx"],
        ["grpc", "resilient-grpc"],
    ]


def test_the_demo_refuses_an_unknown_client(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--client", "urllib3"]) == EXIT_USAGE
