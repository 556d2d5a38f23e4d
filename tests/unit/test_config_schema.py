"""The JSON Schema derived from FIELDS, and whole-document validation messages."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient.config import FIELDS, BreakerConfig, ConfigError
from resilient.config.schema import (
    NAME_PATTERN,
    DocumentError,
    Problem,
    breaker_schema,
    document_schema,
    format_path,
    is_valid_name,
    validate_breaker,
    validate_document,
)


def paths(problems: list[Problem]) -> list[str]:
    return [format_path(p.path) for p in problems]


# -- the schema itself --------------------------------------------------------------------


def test_document_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = document_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    json.dumps(schema)  # plain JSON all the way down


def test_every_field_is_in_the_schema_with_its_default_and_doc() -> None:
    props = breaker_schema()["properties"]
    assert list(props) == [f.name for f in FIELDS]
    for f in FIELDS:
        assert props[f.name]["default"] == f.default
        assert props[f.name]["description"] == f.doc


def test_breaker_objects_refuse_unknown_fields_and_names_follow_the_pattern() -> None:
    schema = document_schema()
    assert schema["$defs"]["breaker"]["additionalProperties"] is False
    assert schema["properties"]["breakers"]["propertyNames"] == {"pattern": NAME_PATTERN}
    assert schema["additionalProperties"] is False


def test_the_defaults_of_the_fields_validate() -> None:
    assert validate_breaker(BreakerConfig().to_dict()) == []


# -- the schema and Field.check agree -----------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**7), max_value=10**7),
    st.floats(allow_nan=False),
    st.sampled_from(["auto", "time", "count", "threshold", "adaptive", "", "x"]),
    st.lists(st.integers(), max_size=2),
)


@given(field=st.sampled_from(FIELDS), value=values)
def test_jsonschema_and_field_check_agree_on_every_value(field: Any, value: Any) -> None:
    validator = jsonschema.Draft202012Validator(breaker_schema()["properties"][field.name])
    try:
        field.check(value)
        check_ok = True
    except ConfigError:
        check_ok = False
    assert validator.is_valid(value) == check_ok


@given(field=st.sampled_from(FIELDS), value=st.one_of(values, st.just(math.nan)))
def test_validate_breaker_accepts_exactly_what_breakerconfig_accepts(
    field: Any, value: Any
) -> None:
    error = None
    try:
        BreakerConfig.from_mapping({field.name: value})
    except ConfigError as exc:
        error = exc
    problems = validate_breaker({field.name: value})
    assert (problems == []) == (error is None)
    if error is not None:  # at the field the dataclass names (another one, for a combination)
        assert [p.path for p in problems] == [(error.field,)]


@given(name=st.text(max_size=210))
def test_name_pattern(name: str) -> None:
    import re

    expected = 1 <= len(name) <= 200 and re.fullmatch(r"[A-Za-z0-9._:/-]+", name) is not None
    assert is_valid_name(name) == expected


# -- messages name the key path -------------------------------------------------------------


def test_a_bad_field_is_reported_at_its_key_path_with_the_rule_and_the_value() -> None:
    problems = validate_document({"breakers": {"payments": {"failure_rate_threshold": 0}}})
    assert [str(p) for p in problems] == [
        "breakers.payments.failure_rate_threshold: must be > 0, got 0"
    ]


def test_names_that_are_not_identifiers_are_quoted_in_paths() -> None:
    problems = validate_document({"breakers": {"api.example.com:443": {"buckets": 0}}})
    assert paths(problems) == ['breakers["api.example.com:443"].buckets']
    assert problems[0].message == "must be >= 1, got 0"


def test_every_problem_is_reported_not_just_the_first() -> None:
    doc = {
        "defaults": {"window": "sliding"},
        "breakers": {
            "a": {"failur_rate_threshold": 0.2},
            "b": {"slow_call_duration": "soon", "cancel_on_open": "yes"},
            "bad name": {},
        },
        "breaker": {},
    }
    problems = validate_document(doc)
    assert paths(problems) == [
        "breaker",
        "breakers.a.failur_rate_threshold",
        "breakers.b.cancel_on_open",
        "breakers.b.slow_call_duration",
        'breakers["bad name"]',
        "defaults.window",
    ]
    by_path = {format_path(p.path): p.message for p in problems}
    assert by_path["breakers.a.failur_rate_threshold"] == (
        "unknown field (did you mean 'failure_rate_threshold'?)"
    )
    assert by_path["breakers.b.slow_call_duration"] == "must be a number or \"auto\", got 'soon'"
    assert by_path["breakers.b.cancel_on_open"] == "must be true or false, got 'yes'"
    assert by_path["defaults.window"] == "must be 'time' or 'count', got 'sliding'"
    assert "invalid breaker name" in by_path['breakers["bad name"]']
    assert "unknown top-level key" in by_path["breaker"]


def test_both_parts_are_optional() -> None:
    assert validate_document({}) == []
    assert validate_document({"defaults": {"minimum_calls": 5}}) == []
    assert validate_document({"breakers": {"a": {}}}) == []


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ([], "", "the document must be a mapping"),
        ({"defaults": None}, "defaults", "must be a mapping of fields, got null"),
        ({"defaults": [1]}, "defaults", "got a list"),
        ({"breakers": "a"}, "breakers", "must be a mapping of breaker names to fields"),
        ({"breakers": {"a": 3}}, "breakers.a", "must be a mapping of fields, got int"),
        ({"breakers": {8080: {}}}, 'breakers["8080"]', "must be a string, got int"),
        ({"breakers": {"a": {"minimum_calls": 2.5}}}, "breakers.a.minimum_calls", "whole"),
        ({"breakers": {"a": {"window_size": math.inf}}}, "breakers.a.window_size", "finite"),
        ({"breakers": {"a": {"buckets": math.nan}}}, "breakers.a.buckets", "nan"),
        ({"breakers": {"a": {"open_backoff": True}}}, "breakers.a.open_backoff", "a number"),
        ({"breakers": {"a": {"mode": None}}}, "breakers.a.mode", "'threshold' or 'adaptive'"),
    ],
)
def test_structural_problems(doc: Any, path: str, words: str) -> None:
    problems = validate_document(doc)
    assert len(problems) == 1, problems
    assert format_path(problems[0].path) == path
    assert words in problems[0].message


def test_combinations_are_judged_on_the_merged_config_of_each_breaker() -> None:
    doc = {
        "defaults": {"open_duration": 30},
        "breakers": {
            "fine": {},
            "too_short": {"open_duration_max": 10},
            "counted": {"window": "count", "window_size": 7.5},
        },
    }
    problems = validate_document(doc)
    assert paths(problems) == [
        "breakers.counted.window_size",
        "breakers.too_short.open_duration_max",
    ]
    assert problems[1].message == "open_duration_max (10) must be >= open_duration (30)"


def test_a_combination_valid_only_with_every_layer_is_accepted() -> None:
    doc = {"defaults": {"open_duration": 100}, "breakers": {}}
    assert paths(validate_document(doc)) == ["defaults.open_duration_max"]
    doc = {"defaults": {"open_duration": 100, "open_duration_max": 200}}
    assert validate_document(doc) == []


def test_a_problem_inherited_from_defaults_is_reported_once() -> None:
    doc = {"defaults": {"open_duration": 100}, "breakers": {"a": {}, "b": {}}}
    assert paths(validate_document(doc)) == ["defaults.open_duration_max"]


def test_validate_breaker_on_its_own_value() -> None:
    problems = validate_breaker({"window": "x", "foo": 1}, path=("breakers/a",))
    assert [str(p) for p in problems] == [
        '["breakers/a"].foo: unknown field',
        "[\"breakers/a\"].window: must be 'time' or 'count', got 'x'",
    ]
    assert validate_breaker([1])[0].message == "must be a mapping of fields, got a list"
    assert validate_breaker({"open_duration": 9, "open_duration_max": 1})[0].path == (
        "open_duration_max",
    )


# -- DocumentError -----------------------------------------------------------------------


def test_document_error_names_the_source_the_first_problem_and_the_count() -> None:
    problems = validate_document({"defaults": {"window": 1, "buckets": 0}})
    err = DocumentError(problems, source="fleet.yaml")
    assert str(err) == "fleet.yaml: defaults.buckets: must be >= 1, got 0 (and 1 more)"
    assert err.field == "buckets"
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and again.source == "fleet.yaml"
    assert str(again) == str(err)


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("breakers", "a_b", "buckets")) == "breakers.a_b.buckets"
    assert format_path(("breakers", 'x"y', "buckets")) == 'breakers["x\\"y"].buckets'
    assert format_path(("breakers", "a/b")) == 'breakers["a/b"]'


# -- the operations doc lists every field -----------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "operations" / "config.md"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def field_row(f: Any) -> str:
    """The row docs/operations/config.md must have for field ``f``."""
    if f.choices:
        allowed = " or ".join(f"`{c}`" for c in f.choices)
    elif f.kind == "boolean":
        allowed = "`true` or `false`"
    else:
        parts = []
        if f.minimum is not None:
            parts.append(f"{'>' if f.exclusive_minimum else '>='} {_num(f.minimum)}")
        if f.maximum is not None:
            parts.append(f"<= {_num(f.maximum)}")
        allowed = ", ".join(parts) + (', or `"auto"`' if f.auto else "")
    return f"| `{f.name}` | {f.kind} | `{json.dumps(f.default)}` | {allowed} | {f.doc} |"


def test_the_operations_doc_lists_every_field_as_fields_says() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    expected = [field_row(f) for f in FIELDS]
    missing = [row for row in expected if row not in rows]
    assert not missing, "update the field table in docs/operations/config.md:\n" + "\n".join(
        expected
    )


def test_import_resilient_config_stays_light() -> None:
    code = (
        "import sys, resilient.config; "
        "print(sorted(m for m in ('jsonschema', 'yaml', 'aetcd', 'grpc', 'typer') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
