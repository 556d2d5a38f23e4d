"""The deadline header's wire format: whole milliseconds, strict and total."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient._deadline_header import MAX_DIGITS, check_name, format_ms, parse_ms
from resilient.errors import ConfigError


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        (["250"], 0.25),
        (["0"], 0.0),
        ([" 1500\t"], 1.5),
        (["007"], 0.007),
        (["9" * MAX_DIGITS], int("9" * MAX_DIGITS) / 1000),
    ],
)
def test_parse_accepts_whole_milliseconds(fields: list[str], seconds: float) -> None:
    assert parse_ms(fields) == seconds


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [""],
        ["-1"],
        ["+1"],
        ["1.5"],
        ["1e3"],
        ["0x10"],
        ["1 000"],
        ["١٢٣"],  # Arabic-Indic digits: int() would take them, the wire format does not
        ["²"],
        ["1_000"],
        ["9" * (MAX_DIGITS + 1)],
        ["100", "200"],  # repeated: ambiguous
        ["100, 200"],
        ["nan"],
        ["inf"],
    ],
)
def test_parse_rejects_anything_else(fields: list[str]) -> None:
    assert parse_ms(fields) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250"),
        (0.2999, "299"),  # floor: never promise more than is left
        (0.0009, "0"),
        (0.0, "0"),
        (-1.0, "0"),
        (math.nan, "0"),
        (1.001, "1001"),
        (1e30, "9" * MAX_DIGITS),
    ],
)
def test_format_floors_to_whole_milliseconds(seconds: float, text: str) -> None:
    assert format_ms(seconds) == text


def test_format_refuses_an_infinite_budget() -> None:
    with pytest.raises(ValueError, match="infinite"):
        format_ms(math.inf)


@given(st.integers(min_value=0, max_value=10**MAX_DIGITS - 1))
def test_whole_milliseconds_round_trip(ms: int) -> None:
    seconds = parse_ms([str(ms)])
    assert seconds is not None
    assert format_ms(seconds) == str(ms)


@given(st.lists(st.text(max_size=20), max_size=3))
def test_parse_is_total(fields: list[str]) -> None:
    seconds = parse_ms(fields)
    assert seconds is None or (0 <= seconds < 10**MAX_DIGITS / 1000)


@given(st.floats(allow_infinity=False))
def test_format_is_digits_only(seconds: float) -> None:
    text = format_ms(seconds)
    assert text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def test_check_name_lower_cases_and_names_the_option() -> None:
    assert check_name("header", "X-Request-Timeout-Ms") == "x-request-timeout-ms"
    for bad in ("", "x y", "x:y", "x\r\n", 3):
        with pytest.raises(ConfigError, match=r"^header must be") as info:
            check_name("header", bad)
        assert info.value.field == "header"
