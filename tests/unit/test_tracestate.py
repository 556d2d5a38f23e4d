"""W3C traceparent/tracestate grammar: the spec's rules, the suite's cases, and fuzzing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from w3c_cases import BARS, KEY_WITH_VENDOR, KEY_WITHOUT_VENDOR, VALUE

from resilient.gray._tracestate import (
    MAX_MEMBERS,
    Reader,
    check_tracestate,
    first_value,
    format_traceparent,
    is_key,
    is_value,
    join_members,
    parse_traceparent,
    parse_tracestate,
    put_member,
)

TP = "00-12345678901234567890123456789012-1234567890123456-01"

# -- traceparent -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        [TP],
        [" " + TP],
        ["\t" + TP],
        [TP + " "],
        [TP + "\t"],
        ["\t " + TP + " \t"],
        ["00-12345678901234567890123456789012-1234567890123456-00"],
        # a future version may carry more fields after a dash
        ["cc-12345678901234567890123456789012-1234567890123456-01"],
        ["cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like"],
    ],
)
def test_valid_traceparents_give_the_parent_id(fields: list[str]) -> None:
    assert parse_traceparent(fields) == "1234567890123456"


@pytest.mark.parametrize(
    "fields",
    [
        [],
        ["00-12345678901234567890123456789011-1234567890123456-01", TP],  # duplicated
        [TP + "."],
        [TP + "-what-the-future-will-be-like"],  # extra fields on version 00
        ["cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like"],
        ["ff-12345678901234567890123456789012-1234567890123456-01"],
        [".0-12345678901234567890123456789012-1234567890123456-01"],
        ["0.-12345678901234567890123456789012-1234567890123456-01"],
        ["000-12345678901234567890123456789012-1234567890123456-01"],
        ["0000-12345678901234567890123456789012-1234567890123456-01"],
        ["0-12345678901234567890123456789012-1234567890123456-01"],
        ["00-00000000000000000000000000000000-1234567890123456-01"],
        ["00-.2345678901234567890123456789012-1234567890123456-01"],
        ["00-1234567890123456789012345678901.-1234567890123456-01"],
        ["00-123456789012345678901234567890123-1234567890123456-01"],
        ["00-1234567890123456789012345678901-1234567890123456-01"],
        ["00-12345678901234567890123456789012-0000000000000000-01"],
        ["00-12345678901234567890123456789012-.234567890123456-01"],
        ["00-12345678901234567890123456789012-123456789012345.-01"],
        ["00-12345678901234567890123456789012-12345678901234567-01"],
        ["00-12345678901234567890123456789012-123456789012345-01"],
        ["00-12345678901234567890123456789012-1234567890123456-.0"],
        ["00-12345678901234567890123456789012-1234567890123456-0."],
        ["00-12345678901234567890123456789012-1234567890123456-001"],
        ["00-12345678901234567890123456789012-1234567890123456-1"],
        ["00-ABCDEF78901234567890123456789012-1234567890123456-01"],  # upper-case hex
        [""],
        [TP + "\r\nx-injected: 1"],
    ],
)
def test_invalid_traceparents_are_rejected(fields: list[str]) -> None:
    assert parse_traceparent(fields) is None


def test_format_traceparent_is_lower_case_and_padded() -> None:
    assert format_traceparent(1, 2, 1) == "00-" + "0" * 31 + "1-" + "0" * 15 + "2-01"
    assert parse_traceparent([format_traceparent(2**128 - 1, 2**64 - 1, 0)]) == "f" * 16


# -- tracestate: the suite's cases (test/test.py at acab820, STRICT_LEVEL 2) -----------------

ALL_VALUE_CHARS = VALUE
BAR_32 = [*BARS, "bar31=31,bar32=32"]

VALID = [
    (["foo=1,bar=2"], [("foo", "1"), ("bar", "2")]),
    (["foo=1", ""], [("foo", "1")]),
    (["", "foo=1"], [("foo", "1")]),
    ([""], []),
    (
        ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
        [("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3")],
    ),
    ([KEY_WITHOUT_VENDOR + "=" + ALL_VALUE_CHARS], [(KEY_WITHOUT_VENDOR, ALL_VALUE_CHARS)]),
    ([KEY_WITH_VENDOR + "=" + ALL_VALUE_CHARS], [(KEY_WITH_VENDOR, ALL_VALUE_CHARS)]),
    (["foo=1 \t , \t bar=2, \t baz=3"], [("foo", "1"), ("bar", "2"), ("baz", "3")]),
    (["foo=1\t \t,\t \tbar=2,\t \tbaz=3"], [("foo", "1"), ("bar", "2"), ("baz", "3")]),
    ([" foo=1"], [("foo", "1")]),
    (["\tfoo=1"], [("foo", "1")]),
    (["foo=1 "], [("foo", "1")]),
    (["foo=1\t"], [("foo", "1")]),
    (["\t foo=1 \t"], [("foo", "1")]),
    (BAR_32, [(f"bar{i:02d}", f"{i:02d}") for i in range(1, 33)]),
    # the key grammar: (lcalpha / DIGIT) 0*255(keychar), "@" a keychar anywhere
    (["foo@=1,bar=2"], [("foo@", "1"), ("bar", "2")]),
    (["foo@@bar=1,bar=2"], [("foo@@bar", "1"), ("bar", "2")]),
    (["foo@bar@baz=1,bar=2"], [("foo@bar@baz", "1"), ("bar", "2")]),
    (["foo=1", "z" * 256 + "=1"], [("foo", "1"), ("z" * 256, "1")]),
    (
        ["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"],
        [("foo", "1"), ("t" * 241 + "@" + "v" * 14, "1")],
    ),
    (["foo=1", "t" * 242 + "@v=1"], [("foo", "1"), ("t" * 242 + "@v", "1")]),
    (["foo=1", "t@" + "v" * 15 + "=1"], [("foo", "1"), ("t@" + "v" * 15, "1")]),
    (["1foo=1"], [("1foo", "1")]),
    # a duplicated key is not invalid; a parse keeps the first member of each key
    (["foo=1,foo=1"], [("foo", "1")]),
    (["foo=1,foo=2"], [("foo", "1")]),
    (["foo=1", "foo=1"], [("foo", "1")]),
    (["foo=1", "foo=2"], [("foo", "1")]),
    (["foo=1,bar=2,foo=3"], [("foo", "1"), ("bar", "2")]),
    (["foo= leading"], [("foo", " leading")]),  # leading spaces belong to the value
    (["a=1,,,b=2, ,"], [("a", "1"), ("b", "2")]),  # empty members are allowed
]

INVALID = [
    ["foo =1"],
    ["FOO=1"],
    ["foo.bar=1"],
    ["@foo=1,bar=2"],
    ["_foo=1"],
    [*BAR_32[:3], "bar31=31,bar32=32,bar33=33"],
    [*BAR_32, "bar01=01"],  # a duplicate still counts towards the 32
    ["foo=1", "z" * 257 + "=1"],
    ["foo=1", "t" * 242 + "@" + "v" * 14 + "=1"],  # 257 characters, an @ among them
    ["foo=bar=baz"],
    ["foo=,bar=3"],
    ["foo"],
    ["=1"],
    ["foo=" + "x" * 257],
    ["foo=\x7f"],
    ["foo=caf\u00e9"],
    ["foo=1\r\nx-injected: 1"],
]


@pytest.mark.parametrize(("fields", "members"), VALID)
def test_suite_valid_tracestates_parse_in_order(
    fields: list[str], members: list[tuple[str, str]]
) -> None:
    assert parse_tracestate(fields) == members


@pytest.mark.parametrize("fields", INVALID)
def test_suite_invalid_tracestates_are_dropped_whole(fields: list[str]) -> None:
    assert parse_tracestate(fields) is None


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("foo@", True),
        ("foo@@bar", True),
        ("foo@bar@baz", True),
        ("t@" + "v" * 15, True),
        ("0", True),
        ("z" * 256, True),
        ("@foo", False),
        ("z" * 257, False),
        ("*foo", False),
        ("", False),
    ],
)
def test_key_grammar(key: str, valid: bool) -> None:
    assert is_key(key) is valid


def test_key_and_value_checks_agree_with_the_member_parser() -> None:
    assert is_key("gray") and is_key("t0@vendor") and not is_key("Gray")
    assert is_value("canary") and is_value(" x") and not is_value("x ") and not is_value("a,b")


# -- writing a member ------------------------------------------------------------------------


def test_put_member_moves_the_member_first_and_keeps_the_rest_in_order() -> None:
    members = [("foo", "1"), ("gray", "old"), ("bar", " 2")]
    assert put_member(members, "gray", "new") == "gray=new,foo=1,bar= 2"
    assert put_member([], "gray", "new") == "gray=new"


def test_put_member_keeps_at_most_32_members_dropping_from_the_end() -> None:
    members = [(f"k{i}", "v") for i in range(32)]
    out = parse_tracestate([put_member(members, "gray", "x")])
    assert out is not None and len(out) == MAX_MEMBERS
    assert out[0] == ("gray", "x") and out[1:] == members[:31]
    # replacing an existing member needs no truncation
    with_gray = [*members[:31], ("gray", "old")]
    out = parse_tracestate([put_member(with_gray, "gray", "x")])
    assert out == [("gray", "x"), *members[:31]]


def test_join_members_round_trips() -> None:
    members = [("a", "1"), ("b@c", " 2")]
    assert parse_tracestate([join_members(members)]) == members
    assert join_members([]) == ""


# -- fuzzing: total on any input, and the output always satisfies the grammar --------------

_MEMBER = re.compile(
    r"[a-z0-9][_0-9a-z*/@-]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_hostile = st.text(alphabet=st.sampled_from("abz09_-*/@=, \t\r\n\x00\x7fAZ.;\"'é"), max_size=80)
keys = st.from_regex(r"[a-z0-9][_0-9a-z*/@-]{0,20}", fullmatch=True)
values = st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,20}", fullmatch=True)


@given(st.lists(st.one_of(st.text(max_size=60), _hostile), max_size=4))
def test_parse_tracestate_is_total_and_only_returns_grammatical_members(
    fields: list[str],
) -> None:
    members = parse_tracestate(fields)
    if members is not None:
        assert len(members) <= MAX_MEMBERS
        assert len({k for k, _ in members}) == len(members)
        for key, value in members:
            assert _MEMBER.fullmatch(f"{key}={value}")


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c@", "gray"]), values), max_size=10))
def test_a_parse_keeps_the_first_member_of_each_key(members: list[tuple[str, str]]) -> None:
    first: dict[str, str] = {}
    for key, value in members:
        first.setdefault(key, value)
    assert parse_tracestate([join_members(members)]) == list(first.items())


@given(st.lists(st.one_of(st.text(max_size=70), _hostile), max_size=3))
def test_parse_traceparent_is_total(fields: list[str]) -> None:
    parent_id = parse_traceparent(fields)
    if parent_id is not None:
        assert re.fullmatch(r"[0-9a-f]{16}", parent_id) and parent_id != "0" * 16


@given(
    st.dictionaries(keys, values, max_size=40).map(lambda d: list(d.items())),
    keys,
    values,
)
def test_put_member_output_is_a_valid_tracestate(
    members: list[tuple[str, str]], key: str, value: str
) -> None:
    out = parse_tracestate([put_member(members, key, value)])
    assert out is not None
    assert out[0] == (key, value)
    rest = [m for m in members if m[0] != key]
    assert out[1:] == rest[: MAX_MEMBERS - 1]


# -- the inbound reader: one match, the same verdict as the parser -------------------------

_near_keys = st.sampled_from(
    ["gray", "xgray", "a@gray", "gray@", "gra", "grayx", "g", "@gray", "Gray"]
)
_ows = st.sampled_from(["", " ", "\t", " \t "])
_near_values = st.one_of(values, st.sampled_from([" canary", "a b", "x ", "", "=", "é"]))
_elements = st.one_of(
    st.tuples(_ows, _near_keys, _near_values, _ows).map(lambda t: f"{t[0]}{t[1]}={t[2]}{t[3]}"),
    _ows,  # an empty member
    _hostile,
)
_lists = st.lists(_elements, max_size=6).map(",".join)


@pytest.mark.parametrize("key", ["gray", "a@gray", "x*y/z"])
@given(text=st.one_of(_lists, _hostile))
def test_the_reader_agrees_with_the_parser(key: str, text: str) -> None:
    parsed = parse_tracestate([text])
    reader = Reader(key)
    valid, value = reader.read(text)
    assert check_tracestate(text) is (parsed is not None)
    assert Reader(None).read(text) == (valid, None)
    if not parsed:
        assert (valid, value) == (False, None)
        return
    first = dict(parsed)
    assert valid and value == first.get(key) == first_value(text, key)
    view = reader.view(text, value)
    assert dict(view) == first and len(view) == len(first)
    for other in (key, "gray", "xgray", "a@gray", "g"):
        assert view.get(other) == first.get(other) and (other in view) is (other in first)


def test_a_member_view_reads_like_a_mapping() -> None:
    reader = Reader("gray")
    text = "foo=1, gray=canary ,foo=2"
    view = reader.view(text, reader.read(text)[1])
    assert view["gray"] == "canary" and view["foo"] == "1" and view.get("bar", "-") == "-"
    with pytest.raises(KeyError):
        view["bar"]
    assert list(view) == ["foo", "gray"] and "gray" in view and 1 not in view


def test_the_reader_counts_every_member_towards_the_32() -> None:
    reader = Reader("gray")
    assert reader.read(",".join([*BAR_32, "gray=x"])) == (False, None)
    assert reader.read(",".join([*BAR_32[:3], "bar31=31,gray=x"])) == (True, "x")
