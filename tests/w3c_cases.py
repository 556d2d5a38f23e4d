# ruff: noqa: E501  (the suite's cases read best one per line)
"""The W3C trace-context test suite's cases, as a table: what the suite sends, what it expects.

Ported from ``test/test.py`` of https://github.com/w3c/trace-context at its
newest revision, ``acab820`` (2026-06-29, "Fix tracestate key grammar tests"),
SPEC_LEVEL 2 and STRICT_LEVEL 2. The suite's code is not copied here; each row
restates one request of one of its tests and the suite's verdict on it. When
the suite changes, compare its test.py with these rows and bump the revision.

A row: (the suite's test, "/" and which of its requests; the request's header
lines in order; whether the traceparent is valid; the tracestate members that
must go on, the first member of each key, or ``None`` for no tracestate).
Shared by ``unit/test_gray_w3c.py`` (the middleware called directly) and
``integration/test_w3c_harness.py`` (the suite's protocol on loopback).
"""

from __future__ import annotations

#: The suite's revision these rows follow.
REVISION = "acab820be9db7b3433668baa5cdd43f57f4c4be0"

TP00 = "00-12345678901234567890123456789012-1234567890123456-00"
TP01 = "00-12345678901234567890123456789012-1234567890123456-01"
TRACE_ID = "12345678901234567890123456789012"

KEY_WITHOUT_VENDOR = "".join(map(chr, range(0x61, 0x7B))) + "0123456789_-*/"
KEY_WITH_VENDOR = KEY_WITHOUT_VENDOR + "@a-z0-9_-*/"
VALUE = (
    "".join(map(chr, range(0x20, 0x2C)))
    + "".join(map(chr, range(0x2D, 0x3D)))
    + "".join(map(chr, range(0x3E, 0x7F)))
)
BARS = [
    ",".join(f"bar{i:02d}={i:02d}" for i in range(1, 11)),
    ",".join(f"bar{i:02d}={i:02d}" for i in range(11, 21)),
    ",".join(f"bar{i:02d}={i:02d}" for i in range(21, 31)),
]
M32 = [(f"bar{i:02d}", f"{i:02d}") for i in range(1, 33)]

Headers = list[tuple[str, str]]
# (suite test, request headers, traceparent valid?, tracestate members sent on or None)
CASES: list[tuple[str, Headers, bool, list[tuple[str, str]] | None]] = [
    ("both_missing", [], False, None),
    ("traceparent_included_tracestate_missing", [("traceparent", TP01)], True, None),
    ("traceparent_duplicated", [("traceparent", TP01[:34] + "1" + TP01[35:]), ("traceparent", TP01)], False, None),
    ("traceparent_header_name/trace-parent", [("trace-parent", TP01)], False, None),
    ("traceparent_header_name/trace.parent", [("trace.parent", TP01)], False, None),
    ("traceparent_header_name_valid_casing/TraceParent", [("TraceParent", TP01)], True, None),
    ("traceparent_header_name_valid_casing/TRACEPARENT", [("TRACEPARENT", TP01)], True, None),
    ("traceparent_version_0x00/dot", [("traceparent", TP01 + ".")], False, None),
    ("traceparent_version_0x00/future", [("traceparent", TP01 + "-what-the-future-will-be-like")], False, None),
    ("traceparent_version_0xcc", [("traceparent", "cc" + TP01[2:])], True, None),
    ("traceparent_version_0xcc/future", [("traceparent", "cc" + TP01[2:] + "-what-the-future-will-be-like")], True, None),
    ("traceparent_version_0xcc/dot", [("traceparent", "cc" + TP01[2:] + ".what-the-future-will-be-like")], False, None),
    ("traceparent_version_0xff", [("traceparent", "ff" + TP01[2:])], False, None),
    ("traceparent_version_illegal_characters/.0", [("traceparent", ".0" + TP01[2:])], False, None),
    ("traceparent_version_illegal_characters/0.", [("traceparent", "0." + TP01[2:])], False, None),
    ("traceparent_version_too_long/000", [("traceparent", "0" + TP01)], False, None),
    ("traceparent_version_too_long/0000", [("traceparent", "00" + TP01)], False, None),
    ("traceparent_version_too_short", [("traceparent", TP01[1:])], False, None),
    ("traceparent_trace_id_all_zero", [("traceparent", "00-" + "0" * 32 + TP01[35:])], False, None),
    ("traceparent_trace_id_illegal_characters/start", [("traceparent", "00-." + TP01[4:])], False, None),
    ("traceparent_trace_id_illegal_characters/end", [("traceparent", TP01[:34] + "." + TP01[35:])], False, None),
    ("traceparent_trace_id_too_long", [("traceparent", TP01[:35] + "3" + TP01[35:])], False, None),
    ("traceparent_trace_id_too_short", [("traceparent", TP01[:34] + TP01[35:])], False, None),
    ("traceparent_parent_id_all_zero", [("traceparent", TP01[:36] + "0" * 16 + "-01")], False, None),
    ("traceparent_parent_id_illegal_characters/start", [("traceparent", TP01[:36] + "." + TP01[37:])], False, None),
    ("traceparent_parent_id_illegal_characters/end", [("traceparent", TP01[:51] + "." + TP01[52:])], False, None),
    ("traceparent_parent_id_too_long", [("traceparent", TP01[:52] + "7" + TP01[52:])], False, None),
    ("traceparent_parent_id_too_short", [("traceparent", TP01[:51] + TP01[52:])], False, None),
    ("traceparent_trace_flags_illegal_characters/.0", [("traceparent", TP01[:53] + ".0")], False, None),
    ("traceparent_trace_flags_illegal_characters/0.", [("traceparent", TP01[:53] + "0.")], False, None),
    ("traceparent_trace_flags_too_long", [("traceparent", TP01[:53] + "001")], False, None),
    ("traceparent_trace_flags_too_short", [("traceparent", TP01[:53] + "1")], False, None),
    ("traceparent_ows_handling/space", [("traceparent", " " + TP01)], True, None),
    ("traceparent_ows_handling/tab", [("traceparent", "\t" + TP01)], True, None),
    ("traceparent_ows_handling/trailing", [("traceparent", TP01 + " \t")], True, None),
    ("traceparent_ows_handling/both", [("traceparent", "\t " + TP01 + " \t")], True, None),
    ("tracestate_included_traceparent_missing", [("tracestate", "foo=1,bar=2")], False, None),
    ("tracestate_included_traceparent_included", [("traceparent", TP00), ("tracestate", "foo=1,bar=2")], True, [("foo", "1"), ("bar", "2")]),
    ("tracestate_header_name/trace-state", [("traceparent", TP00), ("trace-state", "foo=1")], True, None),
    ("tracestate_header_name/trace.state", [("traceparent", TP00), ("trace.state", "foo=1")], True, None),
    ("tracestate_header_name_valid_casing/TraceState", [("traceparent", TP00), ("TraceState", "foo=1")], True, [("foo", "1")]),
    ("tracestate_header_name_valid_casing/TRACESTATE", [("traceparent", TP00), ("TRACESTATE", "foo=1")], True, [("foo", "1")]),
    ("tracestate_empty_header/only", [("traceparent", TP00), ("tracestate", "")], True, None),
    ("tracestate_empty_header/after", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "")], True, [("foo", "1")]),
    ("tracestate_empty_header/before", [("traceparent", TP00), ("tracestate", ""), ("tracestate", "foo=1")], True, [("foo", "1")]),
    ("tracestate_multiple_headers_different_keys", [("traceparent", TP00), ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")], True, [("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3")]),
    # a duplicated key is not invalid: passed through as is, or the first member kept
    ("tracestate_duplicated_keys/same", [("traceparent", TP00), ("tracestate", "foo=1,foo=1")], True, [("foo", "1")]),
    ("tracestate_duplicated_keys/different", [("traceparent", TP00), ("tracestate", "foo=1,foo=2")], True, [("foo", "1")]),
    ("tracestate_duplicated_keys/headers", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "foo=1")], True, [("foo", "1")]),
    ("tracestate_duplicated_keys/headers2", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "foo=2")], True, [("foo", "1")]),
    ("tracestate_all_allowed_characters", [("traceparent", TP00), ("tracestate", KEY_WITHOUT_VENDOR + "=" + VALUE)], True, [(KEY_WITHOUT_VENDOR, VALUE)]),
    ("tracestate_all_allowed_characters/vendor", [("traceparent", TP00), ("tracestate", KEY_WITH_VENDOR + "=" + VALUE)], True, [(KEY_WITH_VENDOR, VALUE)]),
    ("tracestate_ows_handling/1", [("traceparent", TP00), ("tracestate", "foo=1 \t , \t bar=2, \t baz=3")], True, [("foo", "1"), ("bar", "2"), ("baz", "3")]),
    ("tracestate_ows_handling/2", [("traceparent", TP00), ("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")], True, [("foo", "1"), ("bar", "2"), ("baz", "3")]),
    ("tracestate_ows_handling/3", [("traceparent", TP00), ("tracestate", " foo=1")], True, [("foo", "1")]),
    ("tracestate_ows_handling/4", [("traceparent", TP00), ("tracestate", "\tfoo=1")], True, [("foo", "1")]),
    ("tracestate_ows_handling/5", [("traceparent", TP00), ("tracestate", "foo=1 ")], True, [("foo", "1")]),
    ("tracestate_ows_handling/6", [("traceparent", TP00), ("tracestate", "foo=1\t")], True, [("foo", "1")]),
    ("tracestate_ows_handling/7", [("traceparent", TP00), ("tracestate", "\t foo=1 \t")], True, [("foo", "1")]),
    ("tracestate_key_illegal_characters/space", [("traceparent", TP00), ("tracestate", "foo =1")], True, None),
    ("tracestate_key_illegal_characters/upper", [("traceparent", TP00), ("tracestate", "FOO=1")], True, None),
    ("tracestate_key_illegal_characters/dot", [("traceparent", TP00), ("tracestate", "foo.bar=1")], True, None),
    # "@" is a keychar anywhere but first
    ("tracestate_key_illegal_vendor_format/1", [("traceparent", TP00), ("tracestate", "foo@=1,bar=2")], True, [("foo@", "1"), ("bar", "2")]),
    ("tracestate_key_illegal_vendor_format/2", [("traceparent", TP00), ("tracestate", "@foo=1,bar=2")], True, None),
    ("tracestate_key_illegal_vendor_format/3", [("traceparent", TP00), ("tracestate", "foo@@bar=1,bar=2")], True, [("foo@@bar", "1"), ("bar", "2")]),
    ("tracestate_key_illegal_vendor_format/4", [("traceparent", TP00), ("tracestate", "foo@bar@baz=1,bar=2")], True, [("foo@bar@baz", "1"), ("bar", "2")]),
    ("tracestate_member_count_limit/32", [("traceparent", TP00), *[("tracestate", b) for b in BARS], ("tracestate", "bar31=31,bar32=32")], True, M32),
    ("tracestate_member_count_limit/33", [("traceparent", TP00), *[("tracestate", b) for b in BARS], ("tracestate", "bar31=31,bar32=32,bar33=33")], True, None),
    ("tracestate_key_length_limit/256", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "z" * 256 + "=1")], True, [("foo", "1"), ("z" * 256, "1")]),
    ("tracestate_key_length_limit/257", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "z" * 257 + "=1")], True, None),
    ("tracestate_key_length_limit/tenant241", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "t" * 241 + "@" + "v" * 14 + "=1")], True, [("foo", "1"), ("t" * 241 + "@" + "v" * 14, "1")]),
    # no tenant@system split: 256 characters in all, "@" among them or not
    ("tracestate_key_length_limit/tenant242", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "t" * 242 + "@v=1")], True, [("foo", "1"), ("t" * 242 + "@v", "1")]),
    ("tracestate_key_length_limit/vendor15", [("traceparent", TP00), ("tracestate", "foo=1"), ("tracestate", "t@" + "v" * 15 + "=1")], True, [("foo", "1"), ("t@" + "v" * 15, "1")]),
    ("tracestate_value_illegal_characters/eq", [("traceparent", TP00), ("tracestate", "foo=bar=baz")], True, None),
    ("tracestate_value_illegal_characters/empty", [("traceparent", TP00), ("tracestate", "foo=,bar=3")], True, None),
]  # fmt: skip

# OpenTelemetry's extractor reads only the first traceparent; the suite wants a restart.
OTEL_DECIDES = {"traceparent_duplicated"}
