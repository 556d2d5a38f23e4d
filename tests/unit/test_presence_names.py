"""Presence entries and names records (``resilient.stores._presence``), without Redis.

What Redis does with them (the WRITE script, the readers) is in
tests/integration/test_presence.py; here: what an entry and a record say,
and what a reader refuses to believe.
"""

from __future__ import annotations

import json

import pytest

from resilient.stores import _presence

MANY = [f"svc-{i:05d}.{'x' * 30}" for i in range(1000)]  # 40 characters: 43 KB of names


def entry(names: list[str], names_id: str = "") -> dict[str, object]:
    text = _presence.body(every=2.0, names=names, degraded=[], outage=None, version="t",
                          names_id=names_id)  # fmt: skip
    return {"seen": 100.0, **json.loads(text)}


def test_names_that_fit_in_the_entry_need_no_record() -> None:
    assert _presence.names_record(["dep", "solo"]) == ("", "")
    doc = entry(["solo", "dep"])
    assert (doc["names"], doc["more"], doc["names_id"]) == (["dep", "solo"], 0, None)


def test_a_record_holds_every_name_sorted_under_its_digest() -> None:
    ident, text = _presence.names_record(reversed(MANY))
    assert len(ident) == 16 and int(ident, 16) >= 0
    assert json.loads(text) == {"id": ident, "names": MANY}
    assert _presence.names_record(MANY) == (ident, text)  # the same names, the same record
    assert _presence.names_record(MANY[1:])[0] != ident
    doc = entry(MANY, ident)
    assert doc["breakers"] == 1000 and 0 < len(doc["names"]) < 200  # type: ignore[arg-type]
    assert doc["names_id"] == ident and doc["more"] == 1000 - len(doc["names"])  # type: ignore[arg-type]
    (process,) = _presence.parse({"p:1:aaaaaa": json.dumps(doc)}, now=101.0)
    assert process.names_id == ident and not process.complete


def test_a_record_past_its_bound_is_not_made() -> None:
    huge = [f"{i:07d}" + "y" * 193 for i in range(_presence.RECORD_MAX // 200 + 10)]
    assert _presence.names_record(huge) == ("", "")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda text, ident: text.replace(MANY[-1], "svc-other"),  # names not its digest
        lambda text, ident: text.replace(ident, "0" * 16),  # another record's id
        lambda text, ident: text[:-2],  # not JSON
        lambda text, ident: json.dumps({"id": ident, "names": [1, 2]}),
        lambda text, ident: json.dumps([ident]),
        lambda text, ident: None,  # missing
    ],
)
def test_a_reader_believes_only_the_record_its_entry_names(mangle: object) -> None:
    ident, text = _presence.names_record(MANY)
    assert _presence._record(text, ident) == frozenset(MANY)
    assert _presence._record(mangle(text, ident), ident) is None  # type: ignore[operator]


def test_an_entry_with_a_bad_names_id_is_skipped() -> None:
    doc = entry(MANY, "x" * 33)
    assert _presence.parse({"p:1:aaaaaa": json.dumps(doc)}, now=101.0) == []
    doc["names_id"] = 7
    assert _presence.parse({"p:1:aaaaaa": json.dumps(doc)}, now=101.0) == []
