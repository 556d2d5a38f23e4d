"""The shadow's comparison parts: normalisation, JSON-path diffs, patterns, noise, records."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid
from decimal import Decimal

import pydantic
import pytest

from resilient.gray import bucket
from resilient.shadow import canonical_digest, diff_paths, http_value, parse_record, to_json
from resilient.shadow._noise import NoiseModel
from resilient.shadow._paths import Patterns, generalize
from resilient.shadow._record import CallRecord, WriteRecord, call_record
from resilient.shadow._trace import SCALE, drawn


@dataclasses.dataclass
class Item:
    name: str
    price: Decimal
    tags: frozenset[str]


class Colour(enum.Enum):
    RED = "red"


class Model(pydantic.BaseModel):
    id: uuid.UUID
    at: datetime.datetime


def test_to_json_normalises_common_types() -> None:
    value = {
        "item": Item("tea", Decimal("1.50"), frozenset({"b", "a"})),
        "colour": Colour.RED,
        "model": Model(id=uuid.UUID(int=1), at=datetime.datetime(2026, 1, 2, 3, 4, 5)),
        "tuple": (1, 2.5, None, True),
        "nan": float("nan"),
        "bytes": b"caf\xc3\xa9",
        1: "int key",
    }
    assert to_json(value) == {
        "item": {"name": "tea", "price": "1.50", "tags": ["a", "b"]},
        "colour": "red",
        "model": {"id": "00000000-0000-0000-0000-000000000001", "at": "2026-01-02T03:04:05"},
        "tuple": [1, 2.5, None, True],
        "nan": "nan",
        "bytes": "café",
        "1": "int key",
    }
    assert to_json(object()) == {"$type": "builtins.object"}


def test_to_json_refuses_a_cycle() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper"):
        to_json(loop)


def test_http_value_keeps_chosen_headers_and_parses_json() -> None:
    headers = {"Content-Type": "application/json", "Date": "now", "X-Id": "1"}
    assert http_value(200, headers, b'{"a": [1]}', ["content-type"]) == {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": {"a": [1]},
    }
    assert http_value(503, {}, b"down", ())["body"] == "down"
    assert http_value(200, {}, b"NaN", ())["body"] == "NaN"  # NaN is not JSON: kept as text


def test_diff_paths_walks_objects_and_lists() -> None:
    a = {"items": [{"id": 1, "score": 0.5}, {"id": 2}], "n": 1, "flag": True, "odd key": 1}
    b = {"items": [{"id": 1, "score": 0.7}], "n": 1.0, "flag": 1, "extra": None, "odd key": 2}
    assert diff_paths(a, b) == [
        "$.items[0].score",
        "$.items[1]",
        "$.flag",
        '$["odd key"]',
        "$.extra",
    ]
    assert diff_paths(a, a) == []
    assert diff_paths(1, "1") == ["$"]


def test_patterns_cover_a_node_and_everything_beneath() -> None:
    ignore = Patterns(["$.generated_at", "$.items[*].ts", "$.meta.*"])
    assert ignore.covers("$.generated_at")
    assert ignore.covers("$.generated_at.nanos")
    assert not ignore.covers("$.generated_at_2")
    assert ignore.covers("$.items[12].ts")
    assert not ignore.covers("$.items.ts")
    assert ignore.covers("$.meta.host")
    a = {"generated_at": 1, "items": [{"ts": 1, "v": 1}], "meta": {"host": "a"}}
    b = {"generated_at": 2, "items": [{"ts": 2, "v": 2}], "meta": {"host": "b"}}
    assert diff_paths(a, b, ignore) == ["$.items[0].v"]
    with pytest.raises(ValueError, match="start with"):
        Patterns(["generated_at"])


def test_noise_learned_in_general_form() -> None:
    assert generalize("$.items[3].ts[0]") == "$.items[*].ts[*]"
    model = NoiseModel()
    model.learn(["$.items[0].ts"])
    assert model.split(["$.items[5].ts", "$.items[5].price"]) == (
        ["$.items[5].price"],
        ["$.items[5].ts"],
    )


def test_the_draw_is_the_gray_percentage_rule_of_the_trace_id() -> None:
    trace_ids = [f"{i:032x}" for i in range(1, 2000)]
    for t in trace_ids[:50]:
        assert drawn(t, 1000) == (bucket(t) < 1000)  # the same bucket as gray's rule
    share = sum(drawn(t, 1000) for t in trace_ids) / len(trace_ids)
    assert 0.07 < share < 0.13
    assert not any(drawn(t, 0) for t in trace_ids)
    assert all(drawn(t, SCALE) for t in trace_ids)
    assert drawn(None, 1000, rng=lambda: 0.05) and not drawn(None, 1000, rng=lambda: 0.2)


def test_records_round_trip() -> None:
    raw = call_record(
        ts=1.5,
        operation="feed",
        trace_id="ab" * 16,
        gray="canary",
        outcome="mismatch",
        diffs=["$.a"],
        noise=["$.ts"],
        primary=(0.01, None),
        candidate=(0.02, "TimeoutError"),
        dropped=None,
    )
    record = parse_record(json.loads(json.dumps(raw)))
    assert isinstance(record, CallRecord)
    assert record.match is False and record.outcome == "mismatch"
    assert record.primary_ms == 10.0 and record.candidate_error == "TimeoutError"
    write = parse_record({"ts": 2, "operation": "o", "key": "o:1", "side": "gray", "digest": "d"})
    assert isinstance(write, WriteRecord) and write.trace_id is None


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1], "JSON object"),
        ({"type": "call", "ts": "x"}, "ts must be a finite number"),
        ({"type": "nope"}, "type must be"),
        ({"ts": 1, "operation": "o", "primary": {"latency_ms": -1}}, "primary.latency_ms"),
        (
            {"ts": 1, "operation": "o", "primary": {}, "candidate": {}, "diffs": "$.a"},
            "diffs must be a list",
        ),
        ({"ts": 1, "operation": "o", "key": "k", "side": "blue", "digest": "d"}, "side must be"),
    ],
)
def test_bad_records_are_refused_with_the_field_named(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_record(obj)


def test_canonical_digest_ignores_key_order() -> None:
    assert canonical_digest({"a": 1, "b": [1, 2]}) == canonical_digest({"b": [1, 2], "a": 1})
    assert canonical_digest({"a": 1}) != canonical_digest({"a": 2})
