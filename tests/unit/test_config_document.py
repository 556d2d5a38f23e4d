"""The config document (parsing, keys, merging, diff) and FileSource."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from resilient.config import BreakerConfig, ConfigError
from resilient.config.document import (
    ConfigDocument,
    KeyChange,
    decode_value,
    diff,
    encode_value,
    key_for,
    load,
    loads,
    merge,
    name_of,
    parse,
)
from resilient.config.file import FileSource
from resilient.config.schema import DocumentError

FLEET = """\
defaults: &base
  failure_rate_threshold: 0.4
  minimum_calls: 10
breakers:
  payments:
    <<: *base
    failure_rate_threshold: 0.25
  api.example.com:443:
    slow_call_duration: auto
    cancel_on_open: true
"""


class RecordingHub:
    """The two hub methods a source calls, recorded."""

    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, str, int | None]] = []

    def apply_config(
        self,
        defaults: Mapping[str, Any] | None,
        breakers: Mapping[str, Mapping[str, Any]],
        *,
        revision: int | None,
        origin: str,
    ) -> None:
        self.applied.append(
            {
                "defaults": None if defaults is None else dict(defaults),
                "breakers": {k: dict(v) for k, v in breakers.items()},
                "revision": revision,
                "origin": origin,
            }
        )

    def reject_config(self, key: str, reason: str, *, revision: int | None) -> None:
        self.rejected.append((key, reason, revision))


# -- parsing ----------------------------------------------------------------------------------


def test_yaml_document_with_anchors_and_host_port_names() -> None:
    doc = loads(FLEET)
    assert doc.defaults == {"failure_rate_threshold": 0.4, "minimum_calls": 10}
    assert doc.breakers["payments"] == {"failure_rate_threshold": 0.25, "minimum_calls": 10}
    assert doc.breakers["api.example.com:443"] == {
        "slow_call_duration": "auto",
        "cancel_on_open": True,
    }


def test_json_document() -> None:
    doc = loads('{"breakers": {"a": {"minimum_calls": 3}}}', format="json")
    assert doc.defaults is None
    assert dict(doc.breakers) == {"a": {"minimum_calls": 3}}


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}"])
def test_an_empty_document_is_valid(text: str) -> None:
    assert loads(text) == ConfigDocument()


@pytest.mark.parametrize(
    ("text", "fmt", "words"),
    [
        ("defaults:\n  minimum_calls: 3\n  minimum_calls: 4\n", "yaml", "duplicate key"),
        ("breakers:\n  a: {}\n  a: {}\n", "yaml", "duplicate key 'a' (line 3, column 3)"),
        ("defaults: [\n", "yaml", "invalid YAML"),
        ("defaults: !!python/object:os.system {}\n", "yaml", "invalid YAML"),
        ('{"defaults": {"buckets": NaN}}', "json", "NaN is not a number JSON allows"),
        ('{"defaults": {}, "defaults": {}}', "json", "duplicate key 'defaults'"),
        ('{"defaults": ', "json", "invalid JSON"),
    ],
)
def test_parse_errors_say_what_and_where(text: str, fmt: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, format=fmt, source="fleet.yaml")
    assert str(info.value).startswith("fleet.yaml: ")
    assert words in str(info.value)


def test_yaml_never_constructs_python_objects() -> None:
    with pytest.raises(ConfigError):
        parse("x: !!python/name:os.system\n")


def test_non_utf8_text_is_refused() -> None:
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse(b"\xff\xfe", source="x")


def test_loads_validates_strictly() -> None:
    with pytest.raises(DocumentError) as info:
        loads("breakers:\n  a: {failure_rate: 0.2}\n", source="f.yaml")
    assert str(info.value) == (
        "f.yaml: breakers.a.failure_rate: unknown field (did you mean 'failure_rate_threshold'?)"
    )


def test_load_reads_json_by_suffix_and_names_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text('{"defaults": {"buckets": 4}}')
    assert load(path).defaults == {"buckets": 4}
    with pytest.raises(ConfigError, match=r"cannot read .*missing.yaml: No such file"):
        load(tmp_path / "missing.yaml")


# -- keys and values -------------------------------------------------------------------------


def test_keys() -> None:
    assert key_for(None) == "defaults"
    assert key_for("a:1") == "breakers/a:1"
    assert name_of("defaults") is None
    assert name_of("breakers/a/b") == "a/b"
    with pytest.raises(ConfigError, match="invalid breaker name"):
        name_of("breakers/a b")
    with pytest.raises(ConfigError, match="not a config key 'breaker/a'"):
        name_of("breaker/a")
    with pytest.raises(ConfigError, match="invalid breaker name"):
        name_of("breakers/")


def test_values_are_canonical_json_objects() -> None:
    assert encode_value({"b": 1, "a": True}) == b'{"a":true,"b":1}'
    assert decode_value(b' { "a" : 1 } ') == {"a": 1}
    for raw, words in [
        (b"[1]", "must be a JSON object of fields, got an array"),
        (b'"x"', "got a string"),
        (b"null", "got null"),
        (b"{", "invalid JSON"),
        (b'{"a": Infinity}', "Infinity is not a number"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b"\xff", "not UTF-8"),
    ]:
        with pytest.raises(ConfigError, match=words):
            decode_value(raw)


def test_document_to_keys_and_back() -> None:
    doc = loads(FLEET)
    keys = doc.to_keys()
    assert list(keys) == ["defaults", "breakers/api.example.com:443", "breakers/payments"]
    assert keys["breakers/payments"] == b'{"failure_rate_threshold":0.25,"minimum_calls":10}'
    values = {k: decode_value(v) for k, v in keys.items()}
    assert ConfigDocument.from_values(values) == doc
    assert loads(doc.to_yaml()) == doc
    assert loads(doc.to_json(), format="json") == doc
    assert ConfigDocument().to_yaml() == "{}\n"


def test_documents_are_read_only() -> None:
    doc = loads(FLEET)
    with pytest.raises(TypeError):
        doc.breakers["x"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        doc.breakers["payments"]["buckets"] = 1  # type: ignore[index]


# -- merging ------------------------------------------------------------------------------------


def test_merge_layers_defaults_then_own_over_the_creators_base() -> None:
    base = BreakerConfig(minimum_calls=50, half_open_calls=2)
    cfg = merge(base, {"minimum_calls": 10, "buckets": 5}, {"buckets": 20})
    assert (cfg.minimum_calls, cfg.buckets, cfg.half_open_calls) == (10, 20, 2)
    assert merge(None, None, None) == BreakerConfig()


def test_merge_judges_combinations_once_every_layer_is_applied() -> None:
    cfg = merge(None, {"open_duration": 100}, {"open_duration_max": 500})
    assert (cfg.open_duration, cfg.open_duration_max) == (100, 500)
    with pytest.raises(ConfigError) as info:
        merge(None, {"open_duration": 100}, {})
    assert info.value.field == "open_duration_max"


def test_resolve_ignores_unknown_fields_like_a_running_process() -> None:
    doc = ConfigDocument(None, {"a": {"minimum_calls": 3, "from_the_future": 1}})
    assert doc.resolve("a").minimum_calls == 3
    assert doc.resolve("unknown").minimum_calls == 20
    with pytest.raises(ConfigError, match="unknown field"):
        doc.resolve("a", unknown="error")


# -- diff --------------------------------------------------------------------------------------


def test_diff_adds_changes_and_deletes_by_key() -> None:
    current = {
        "defaults": b'{ "minimum_calls" : 10 }',  # same value, other spelling
        "breakers/old": b'{"buckets":3}',
        "breakers/payments": b'{"failure_rate_threshold":0.5,"cancel_on_open":1}',
        "junk": b"not json",
    }
    desired = {
        "defaults": b'{"minimum_calls":10}',
        "breakers/new": b'{"buckets":4}',
        "breakers/payments": b'{"failure_rate_threshold":0.5,"cancel_on_open":true}',
    }
    changes = diff(current, desired)
    assert [(c.key, c.kind) for c in changes] == [
        ("breakers/new", "add"),
        ("breakers/old", "delete"),
        ("breakers/payments", "change"),
        ("junk", "delete"),
    ]
    assert changes[2].field_changes() == [("cancel_on_open", 1, True)]
    assert changes[3].old == "not json"


def test_field_changes_show_added_and_removed_fields() -> None:
    change = KeyChange(
        "breakers/a", {"buckets": 3, "window": "time"}, {"buckets": 4, "mode": "adaptive"}
    )
    assert change.field_changes() == [
        ("buckets", 3, 4),
        ("mode", None, "adaptive"),
        ("window", "time", None),
    ]


# -- lenient reading (what a running process does with a file) ---------------------------------


def test_lenient_reading_keeps_every_usable_part() -> None:
    data = {"defaults": [1], "breakers": {"a": {"x": 1}, "b": 3, "bad name": {}}, "extra": 1}
    doc, problems = ConfigDocument.from_data_lenient(data)
    assert doc.defaults is None
    assert dict(doc.breakers) == {"a": {"x": 1}}
    assert sorted((p.path, p.message) for p in problems) == [
        (("breakers", "b"), "must be a mapping of fields"),
        (("breakers", "bad name"), "invalid breaker name"),
        (("defaults",), "must be a mapping of fields"),
        (("extra",), "unknown top-level key, ignored"),
    ]
    with pytest.raises(DocumentError):
        ConfigDocument.from_data_lenient([1])
    with pytest.raises(DocumentError):
        ConfigDocument.from_data_lenient({"breakers": [1]})


# -- FileSource ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so a change is seen whatever the clock's grain."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


class StepSleep:
    """A ``sleep`` the test drives: each call waits until the test lets it go."""

    def __init__(self) -> None:
        self.asked: asyncio.Queue[float] = asyncio.Queue()
        self.go: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        await self.asked.put(seconds)
        await self.go.get()

    async def step(self) -> None:
        """Let the pending sleep end and wait until the loop asks for the next one."""
        self.go.put_nowait(None)
        await asyncio.wait_for(self.asked.get(), 10)


async def test_file_source_loads_at_start_and_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    write(path, FLEET)
    hub, sleep = RecordingHub(), StepSleep()
    source = FileSource(path, interval=0.5, sleep=sleep)
    await source.start(hub)
    try:
        assert len(hub.applied) == 1
        first = hub.applied[0]
        assert first["origin"] == f"file:{path}" and first["revision"] is None
        assert first["defaults"] == {"failure_rate_threshold": 0.4, "minimum_calls": 10}
        assert set(first["breakers"]) == {"payments", "api.example.com:443"}
        assert await asyncio.wait_for(sleep.asked.get(), 10) == 0.5

        await sleep.step()  # unchanged: nothing applied
        assert len(hub.applied) == 1

        write(path, "breakers:\n  payments: {minimum_calls: 7}\n")
        await sleep.step()
        assert hub.applied[-1]["defaults"] is None
        assert hub.applied[-1]["breakers"] == {"payments": {"minimum_calls": 7}}
        assert hub.rejected == []
    finally:
        await source.close()


async def test_file_source_keeps_the_last_good_view_when_the_file_breaks(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    write(path, FLEET)
    hub = RecordingHub()
    source = FileSource(path, sleep=StepSleep())
    await source.start(hub)
    try:
        write(path, "breakers: [\n")
        assert await source.reload() is False
        assert len(hub.applied) == 1
        assert hub.rejected[0][0] == str(path)
        assert "invalid YAML" in hub.rejected[0][1]

        # one breaker's value is not a mapping: it keeps its previous value, others move on
        write(path, "defaults: {minimum_calls: 3}\nbreakers:\n  payments: 7\n  new: {}\n")
        assert await source.reload() is True
        last = hub.applied[-1]
        assert last["defaults"] == {"minimum_calls": 3}
        assert last["breakers"]["payments"] == {"failure_rate_threshold": 0.25, "minimum_calls": 10}
        assert last["breakers"]["new"] == {}
        assert hub.rejected[-1] == (
            f"{path}#breakers/payments",
            "must be a mapping of fields",
            None,
        )

        path.unlink()  # gone: keep everything
        assert await source.reload() is False
        write(path, "{}\n")
        assert await source.reload() is True
        assert hub.applied[-1]["breakers"] == {} and hub.applied[-1]["defaults"] is None
    finally:
        await source.close()


async def test_file_source_starts_without_the_file_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "later.yaml"
    hub, sleep = RecordingHub(), StepSleep()
    source = FileSource(path, sleep=sleep)
    await source.start(hub)
    try:
        await asyncio.wait_for(sleep.asked.get(), 10)
        await sleep.step()
        assert hub.applied == []
        warnings = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert len(warnings) == 1 and "running on defaults" in warnings[0].getMessage()
        write(path, "defaults: {buckets: 2}\n")
        await sleep.step()
        assert hub.applied[-1]["defaults"] == {"buckets": 2}
    finally:
        await source.close()


async def test_file_source_validates_its_interval() -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        FileSource("x.yaml", interval=0)


async def test_file_source_drives_a_real_hub(tmp_path: Path) -> None:
    from resilient.events import ConfigChanged, ConfigRejected, Event
    from resilient.hub import Hub

    path = tmp_path / "fleet.yaml"
    write(path, FLEET)
    events: list[Event] = []
    source = FileSource(path, sleep=StepSleep())
    async with Hub("svc", config=source, defaults={"half_open_calls": 2}) as hub:
        hub.add_listener(events.append)
        payments = hub.breaker("payments")
        assert payments.config.failure_rate_threshold == 0.25
        assert payments.config.half_open_calls == 2  # the hub's own layer stays under the file's

        write(path, FLEET.replace("0.25", "0.3"))
        assert await source.reload()
        assert payments.config.failure_rate_threshold == 0.3
        assert [e.breaker for e in events if isinstance(e, ConfigChanged)] == ["payments"]

        write(path, FLEET.replace("0.25", "7"))  # out of range: rejected, last good kept
        assert await source.reload()
        assert payments.config.failure_rate_threshold == 0.3
        rejected = [e for e in events if isinstance(e, ConfigRejected)]
        assert rejected and rejected[-1].breaker == "payments"
        assert "failure_rate_threshold" in rejected[-1].reason


def test_view_cache_round_trip_and_what_it_ignores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from resilient.config.file import ViewCache

    cache = ViewCache(tmp_path / "c.json", "etcd:/a")
    assert cache.read() is None
    cache.write(7, {"breakers/x": {"buckets": 2}})
    assert cache.read() == (7, {"breakers/x": {"buckets": 2}})
    assert ViewCache(tmp_path / "c.json", "etcd:/b").read() is None  # another origin's
    assert list(tmp_path.iterdir()) == [tmp_path / "c.json"]  # no temporary left behind

    (tmp_path / "c.json").write_text("{not json")
    assert cache.read() is None
    (tmp_path / "c.json").write_text('{"origin": "etcd:/a", "revision": "7", "values": {}}')
    assert cache.read() is None
    assert len([r for r in caplog.records if "config cache" in r.getMessage()]) == 3

    (tmp_path / "file").write_text("")
    blocked = ViewCache(tmp_path / "file" / "c.json", "etcd:/a")  # its directory is a file
    blocked.write(1, {})
    blocked.write(2, {})
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
