"""Timeouts: validation, the ClientTimeout it builds, and the learned attempt timeout."""

from __future__ import annotations

import math

import aiohttp
import pytest

from resilient.errors import ConfigError
from resilient.http import AttemptTimeoutError, Timeouts
from resilient.http._timeouts import (
    ATTEMPT_FIRST,
    ATTEMPT_FLOOR,
    ATTEMPT_MULTIPLE,
    ATTEMPT_RELEARN,
    ATTEMPT_SAMPLES,
    _Learned,
)


def test_defaults_bound_every_request() -> None:
    t = Timeouts()
    assert (t.connect, t.sock_connect, t.sock_read, t.total, t.attempt) == (
        None,
        2.0,
        None,
        10.0,
        "auto",
    )


def test_positional_order_is_connect_sock_connect_sock_read_total() -> None:
    assert Timeouts(0.5, 1.0, 3.0, 4.0) == Timeouts(
        connect=0.5, sock_connect=1.0, sock_read=3.0, total=4.0
    )


def test_client_timeout_clips_every_layer_to_the_total() -> None:
    built = Timeouts(connect=5.0, sock_connect=5.0, sock_read=5.0, total=2.0).client_timeout()
    assert built == aiohttp.ClientTimeout(total=2.0, connect=2.0, sock_connect=2.0, sock_read=2.0)
    assert Timeouts(connect=0.5, total=2.0).client_timeout() == aiohttp.ClientTimeout(
        total=2.0, connect=0.5, sock_connect=2.0
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total", 0),
        ("total", -1.0),
        ("total", math.inf),
        ("total", math.nan),
        ("total", None),
        ("total", True),
        ("total", "2"),
        ("connect", 0.0),
        ("sock_connect", -0.1),
        ("sock_read", math.inf),
        ("attempt", 0),
        ("attempt", "fast"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Timeouts(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_attempt_may_be_a_number_auto_or_none() -> None:
    assert Timeouts(attempt=0.3).attempt == 0.3
    assert Timeouts(attempt=1).attempt == 1.0
    assert Timeouts(attempt=None).attempt is None
    assert Timeouts(attempt="auto").attempt == "auto"


def test_attempt_timeout_error_is_a_timeout_and_a_client_error() -> None:
    exc = AttemptTimeoutError("http://example.test", 0.1, "attempt")
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, aiohttp.ClientError)
    assert isinstance(exc, aiohttp.ServerTimeoutError)
    assert (exc.seconds, exc.bound) == (0.1, "attempt")
    assert "0.100s" in str(exc)


def feed(learned: _Learned, durations: list[float]) -> None:
    for d in durations:
        learned.observe(d)


def test_learned_attempt_timeout_is_the_total_until_enough_answers() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.002] * (ATTEMPT_FIRST - 1))
    assert learned.seconds == 2.0
    learned.observe(0.002)
    assert learned.seconds == ATTEMPT_FLOOR  # 10 x 2 ms is under the floor
    feed(learned, [0.02] * (ATTEMPT_RELEARN - 1))
    assert learned.seconds == ATTEMPT_FLOOR  # not learned again yet
    learned.observe(0.02)
    assert learned.seconds > ATTEMPT_FLOOR


def test_learned_attempt_timeout_is_a_multiple_of_the_90th_percentile() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    # 80% of answers at 20 ms, 20% at 30 ms: the 90th percentile is 30 ms.
    feed(learned, ([0.02] * 4 + [0.03]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_MULTIPLE * 0.03)
    # 95% at 20 ms: the slowest 5% do not count.
    feed(learned, ([0.02] * 19 + [0.5]) * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(ATTEMPT_MULTIPLE * 0.02)


def test_a_pause_that_delays_a_few_answers_does_not_move_it() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.02] * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(0.2)
    feed(learned, [0.5] * 10 + [0.02] * (ATTEMPT_RELEARN * 2 - 10))  # a 0.5 s pause
    assert learned.seconds == pytest.approx(0.2)


def test_learned_attempt_timeout_follows_a_host_that_slows_down_and_is_capped() -> None:
    learned = _Learned(ATTEMPT_FLOOR, 2.0)
    feed(learned, [0.02] * ATTEMPT_SAMPLES)
    feed(learned, [0.05] * ATTEMPT_SAMPLES)
    assert learned.seconds == pytest.approx(0.5)
    feed(learned, [0.5] * ATTEMPT_SAMPLES)
    assert learned.seconds == 2.0  # never above the total
