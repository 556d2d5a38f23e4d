"""The hub: one breaker per name, layered config, last good config on bad input."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

import resilient
from resilient import BreakerConfig, Hub, State
from resilient.events import ConfigChanged, ConfigRejected, UnknownFieldsIgnored


def test_breaker_by_name_is_one_object_even_when_racing() -> None:
    hub = Hub("svc")
    got: list[object] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        got.append(hub.breaker("dep"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in got}) == 1
    assert list(hub.breakers()) == ["dep"]


def test_config_layers_and_last_good_on_bad_values() -> None:
    hub = Hub("svc", defaults={"minimum_calls": 7})
    events: list[object] = []
    hub.add_listener(events.append)
    br = hub.breaker("dep")
    assert br.config.minimum_calls == 7
    hub.apply_config(
        {"failure_rate_threshold": 0.3},
        {"dep": {"minimum_calls": 3}, "later": {"half_open_calls": 2}},
        revision=5,
    )
    assert (br.config.minimum_calls, br.config.failure_rate_threshold) == (3, 0.3)
    assert hub.breaker("later").config.half_open_calls == 2  # created after: gets its config
    hub.apply_config({}, {"dep": {"minimum_calls": -1, "new_field": 1}}, revision=6)
    assert br.config.minimum_calls == 3  # last good kept
    rejected = [e for e in events if isinstance(e, ConfigRejected)]
    assert rejected and rejected[-1].key == "breakers/dep" and rejected[-1].revision == 6
    assert "minimum_calls" in rejected[-1].reason
    ignored = [e for e in events if isinstance(e, UnknownFieldsIgnored)]
    assert ignored[-1].fields == ("new_field",)
    changed = [e for e in events if isinstance(e, ConfigChanged)]
    assert changed[0].revision == 5


def test_deleted_key_falls_back_to_defaults_without_reset() -> None:
    hub = Hub("svc")
    br = hub.breaker("dep")
    hub.apply_config(None, {"dep": {"minimum_calls": 1, "window": "count", "window_size": 5}})
    with contextlib.suppress(ZeroDivisionError):
        br(lambda: 1 / 0)()
    assert br.state is State.OPEN
    hub.apply_config(None, {})
    assert br.config == BreakerConfig()
    assert br.state is State.OPEN  # a config change never resets


def test_default_hub_and_module_breaker() -> None:
    assert resilient.breaker("default-one") is resilient.breaker("default-one")


async def test_hub_without_servers_needs_no_start() -> None:
    async with Hub("mem") as hub:
        assert hub.breaker("x").state is State.CLOSED
    with Hub("mem-sync") as hub:
        assert hub.breaker("x")(lambda: 2)() == 2


def test_import_resilient_stays_light() -> None:
    code = (
        "import resilient, sys; heavy = ('aiohttp', 'redis', 'aetcd', 'yaml', 'jsonschema', "
        "'typer', 'rich', 'opentelemetry', 'tenacity', 'grpc');"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_creator_defaults_survive_reloads() -> None:
    hub = Hub("svc", defaults={"minimum_calls": 7})
    br = hub.breaker(
        "api:443", defaults={"window": "count", "window_size": 20, "minimum_calls": 20}
    )
    assert (br.config.window, br.config.minimum_calls) == ("count", 20)
    hub.apply_config({"open_duration": 1.0}, {})
    assert (br.config.window, br.config.minimum_calls, br.config.open_duration) == (
        "count",
        20,
        1.0,
    )
    hub.apply_config(None, {"api:443": {"minimum_calls": 5}})
    assert (br.config.window, br.config.minimum_calls) == ("count", 5)
    assert hub.breaker("other").config.minimum_calls == 7
