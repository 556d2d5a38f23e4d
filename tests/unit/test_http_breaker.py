"""The HTTP layer's breaker pieces: defaults, names, classification, the rejection type."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from resilient.errors import CircuitOpenError, ConfigError, RejectedError
from resilient.http import (
    HTTP_DEFAULTS,
    HostCircuitOpenError,
    breaker_middleware,
    host_key,
    http_auto_slow,
    is_failure,
    route_key,
)
from resilient.http._attempt import ATTEMPT_FLOOR
from resilient.http._breaker import _create
from resilient.hub import Hub


def _documented_defaults() -> dict[str, object]:
    """The HTTP defaults table of docs/guides/http.md, as field -> value."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "http.md").read_text()
    rows = text.split("`resilient.http.HTTP_DEFAULTS`", 1)[1].split("\n\n")[1]
    table: dict[str, object] = {}
    for line in rows.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not cells[0].startswith("`"):
            continue  # the header and its rule
        names = [n.strip(" `") for n in cells[0].split(",")]
        values = [v.strip() for v in cells[1].split(",")]
        for name, raw in zip(names, values, strict=True):
            raw = raw.strip("`").removesuffix(" s").lstrip("×")
            if raw.startswith('"'):
                table[name] = raw.strip('"')
            elif raw in ("True", "False"):
                table[name] = raw == "True"
            else:
                table[name] = float(raw)
    return table


def test_http_defaults_are_the_documented_ones() -> None:
    documented = _documented_defaults()
    assert len(documented) == 11
    for name, value in documented.items():
        assert getattr(HTTP_DEFAULTS, name) == value, name


def test_recovery_is_seen_within_a_second_of_the_heal() -> None:
    # The longest open period, jitter included, plus a probe's answer.
    longest = HTTP_DEFAULTS.open_duration_max * 1.1
    assert longest + ATTEMPT_FLOOR < 1.0


@pytest.mark.parametrize("total", [0.1, 0.5, 2.0, 10.0, 300.0])
def test_the_learned_slow_limit_stays_below_the_total(total: float) -> None:
    auto = http_auto_slow(total)
    assert auto.ceiling < total
    assert auto.floor <= auto.ceiling


def test_names_are_host_port_and_valid_breaker_names() -> None:
    assert host_key(URL("http://api.example.com/x?y=1")) == "api.example.com:80"
    assert host_key(URL("https://user:secret@api.example.com:8443/")) == "api.example.com:8443"
    assert host_key(URL("http://[::1]:8080/")) == "::1:8080"
    assert host_key(URL("http://bücher.example/")) == "xn--bcher-kva.example:80"
    assert route_key(URL("http://h:1/a/b?q")) == "h:1/a/b"
    assert route_key(URL("http://h:1/a b/%7E~")) == "h:1/a_20b/__"  # only [A-Za-z0-9._:/-]
    assert len(route_key(URL("http://h:1/" + "x" * 500))) == 200


def test_5xx_and_429_are_failures_other_statuses_are_answers() -> None:
    assert all(is_failure(s) for s in (500, 502, 503, 504, 599, 429))
    assert not any(is_failure(s) for s in (200, 204, 301, 400, 401, 404, 409, 428))


def test_the_rejection_is_a_circuit_open_and_a_client_connection_error() -> None:
    exc = HostCircuitOpenError("h:1", 0.25, "open")
    assert isinstance(exc, CircuitOpenError)
    assert isinstance(exc, RejectedError)
    assert isinstance(exc, aiohttp.ClientConnectionError)
    assert isinstance(exc, aiohttp.ClientError)
    assert (exc.name, exc.retry_after, exc.reason) == ("h:1", 0.25, "open")
    assert "h:1" in str(exc) and "0.250" in str(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is HostCircuitOpenError
    assert (copy.name, copy.retry_after) == ("h:1", 0.25)


def test_options_are_checked_when_the_middleware_is_built() -> None:
    with pytest.raises(ConfigError, match="per"):
        breaker_middleware(Hub(), per="path")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hub"):
        breaker_middleware("hub")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="total"):
        breaker_middleware(Hub(), total=0)
    with pytest.raises(ConfigError, match="open_duration"):
        breaker_middleware(Hub(), defaults={"open_duration": -1})
    with pytest.raises(ConfigError, match="breaker"):
        breaker_middleware(Hub(), defaults=3)  # type: ignore[arg-type]


def test_a_new_host_breaker_gets_the_http_defaults_under_the_config_source() -> None:
    # BreakerConfig() < the creator's defaults (here the HTTP layer's, not the
    # hub's) < the source's defaults < the source's key for the breaker.
    hub = Hub(defaults={"minimum_calls": 50})
    hub.apply_config({"open_duration": 0.5}, {"h:3": {"half_open_calls": 3}})
    br = _create(hub, "h:3", HTTP_DEFAULTS, http_auto_slow(2.0))
    assert br.config == dataclasses.replace(HTTP_DEFAULTS, open_duration=0.5, half_open_calls=3)
    assert hub.breaker("h:3") is br
    # An existing breaker keeps its config: the HTTP layer is not its creator.
    other = hub.breaker("h:2")
    assert _create(hub, "h:2", HTTP_DEFAULTS, http_auto_slow(2.0)).config == other.config
