"""resilient.gray: tags, rules, the recogniser, the request context, routing and inject()."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from resilient.errors import ConfigError
from resilient.gray import (
    CookieRule,
    GrayTag,
    HeaderRule,
    PercentageRule,
    Recognizer,
    Rule,
    TracestateRule,
    bucket,
    current,
    inject,
    is_tag_value,
    route,
    use,
)
from resilient.gray._context import Inbound, enter, leave
from resilient.state import State

TP = "00-12345678901234567890123456789012-1234567890123456-01"


# -- GrayTag -------------------------------------------------------------------------------


def test_tag_values_are_url_unreserved_tokens() -> None:
    assert GrayTag("canary-2.a_b~c", "header").value == "canary-2.a_b~c"
    for bad in ("", "a b", "a,b", "a=b", "a;b", "a\r\nb", "é", "x" * 65, 'a"b'):
        with pytest.raises(ValueError, match="GrayTag value"):
            GrayTag(bad, "header")
    with pytest.raises(ValueError, match="GrayTag rule"):
        GrayTag("canary", "guess")  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_no_valid_tag_value_can_break_a_header_or_a_tracestate(text: str) -> None:
    if is_tag_value(text):
        assert not set(text) & set("\r\n\t ,;=\"'\\%+")
        assert text.isascii() and text.isprintable()


# -- rules ---------------------------------------------------------------------------------


def test_rules_validate_their_fields_and_name_them() -> None:
    with pytest.raises(ConfigError, match=r"^key must") as info:
        TracestateRule("Gray")
    assert info.value.field == "key"
    with pytest.raises(ConfigError, match=r"^header must"):
        HeaderRule("x gray")
    with pytest.raises(ConfigError, match=r"^cookie must"):
        CookieRule("a;b")
    for percent in (-1, 100.5, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match=r"^percent must") as info:
            PercentageRule(percent, header="x-user-id")  # type: ignore[arg-type]
        assert info.value.field == "percent"
    with pytest.raises(ConfigError, match="exactly one"):
        PercentageRule(5)
    with pytest.raises(ConfigError, match="exactly one"):
        PercentageRule(5, header="x-user-id", cookie="uid")
    with pytest.raises(ConfigError, match=r"^value must"):
        PercentageRule(5, header="x-user-id", value="a b")
    assert HeaderRule("X-Gray").header == "x-gray"


def test_recognizer_validates_its_options() -> None:
    with pytest.raises(ConfigError, match=r"^rules must") as info:
        Recognizer(HeaderRule())  # type: ignore[arg-type]
    assert info.value.field == "rules"
    with pytest.raises(ConfigError, match=r"^rules must hold"):
        Recognizer(["header"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"^allow must be a collection"):
        Recognizer(allow="canary")
    with pytest.raises(ConfigError, match=r"^deny holds 'a b'"):
        Recognizer(deny=["a b"])


def found_with_trace(tracestate: str, **headers: str) -> dict[str, list[str]]:
    found = {"traceparent": [TP], "tracestate": [tracestate]}
    found.update({k.replace("_", "-"): [v] for k, v in headers.items()})
    return found


def test_rules_are_tried_in_the_configured_order() -> None:
    found = found_with_trace("gray=from-ts", x_gray="from-header")
    assert Recognizer().match(found, {"gray": "from-ts"}) == GrayTag("from-ts", "tracestate")
    header_first = Recognizer([HeaderRule(), TracestateRule()])
    inbound = header_first.inspect(found)
    assert inbound is not None and inbound.tag == GrayTag("from-header", "header")


def test_inspect_keeps_the_valid_trace_context_byte_for_byte() -> None:
    inbound = Recognizer().inspect(
        {"traceparent": [" " + TP], "tracestate": ["foo=1 , gray=canary", "bar=2"]}
    )
    assert inbound == Inbound(
        GrayTag("canary", "tracestate"), TP, "1234567890123456", "foo=1 , gray=canary,bar=2"
    )


@pytest.mark.parametrize(
    "found",
    [
        {"tracestate": ["gray=canary"]},  # no traceparent: tracestate is not parsed
        {"traceparent": ["00-zz"], "tracestate": ["gray=canary"]},  # invalid traceparent
        {"traceparent": [TP, TP], "tracestate": ["gray=canary"]},  # duplicated traceparent
        {"traceparent": [TP], "tracestate": ["gray=canary,Bad=1"]},  # invalid member
        {"traceparent": [TP], "tracestate": ["gray=canary,@gray=1"]},  # key starts with @
        {"traceparent": [TP], "tracestate": ["gray=canary," + "z" * 257 + "=1"]},  # key too long
    ],
)
def test_invalid_trace_context_yields_no_tracestate_tag(found: dict[str, list[str]]) -> None:
    inbound = Recognizer().inspect(found)
    assert inbound is None or (inbound.tag is None and inbound.tracestate is None)


@pytest.mark.parametrize(
    "fields",
    [["gray=canary,gray=other"], ["gray=canary", "gray=other"], ["foo=1,gray=canary,foo=2,gray=x"]],
)
def test_a_duplicated_key_is_valid_and_the_first_gray_member_is_the_tag(fields: list[str]) -> None:
    inbound = Recognizer().inspect({"traceparent": [TP], "tracestate": fields})
    assert inbound is not None and inbound.tag == GrayTag("canary", "tracestate")
    assert inbound.tracestate == ",".join(fields), "kept as received, for a pass-through"


def test_an_invalid_traceparent_drops_both_headers() -> None:
    assert Recognizer().inspect({"traceparent": ["garbage"], "tracestate": ["a=1"]}) is None


def test_a_tracestate_member_that_is_not_a_tag_value_is_no_tag_but_passes_through() -> None:
    inbound = Recognizer().inspect(found_with_trace("gray= spaced"))
    assert inbound is not None and inbound.tag is None and inbound.tracestate == "gray= spaced"


@pytest.mark.parametrize(
    "values",
    [["can ary"], ["canary", "other"], ["a,b"], ["x=y"], [""], ["caf\udcc3\udca9"]],
)
def test_header_rule_needs_exactly_one_token(values: list[str]) -> None:
    assert Recognizer([HeaderRule()]).inspect({"x-gray": values}) is None


def test_header_rule_strips_optional_whitespace() -> None:
    inbound = Recognizer([HeaderRule()]).inspect({"x-gray": [" canary\t"]})
    assert inbound is not None and inbound.tag == GrayTag("canary", "header")


@pytest.mark.parametrize(
    ("cookie", "tag"),
    [
        ("lane=canary", "canary"),
        ("a=1; lane=canary; b=2", "canary"),
        ('lane="canary"', "canary"),
        ("lane=first; lane=second", "first"),
        ("xlane=nope; lane = canary ", "canary"),
        ("lane=", None),
        ("lane", None),
        ("lane=a b", None),
        ("lane=a,b", None),
        ("=canary", None),
        (";;;", None),
        ("", None),
    ],
)
def test_cookie_rule(cookie: str, tag: str | None) -> None:
    inbound = Recognizer([CookieRule("lane")]).inspect({"cookie": [cookie]})
    assert (inbound.tag.value if inbound and inbound.tag else None) == tag


def test_cookie_rule_reads_every_cookie_header() -> None:
    inbound = Recognizer([CookieRule("lane")]).inspect({"cookie": ["a=1", "lane=canary"]})
    assert inbound is not None and inbound.tag == GrayTag("canary", "cookie")


def test_allow_and_deny_lists_filter_values_and_the_search_goes_on() -> None:
    rules = [HeaderRule(), CookieRule("lane")]
    found = {"x-gray": ["admin"], "cookie": ["lane=canary"]}
    denied = Recognizer(rules, deny=["admin"]).inspect(found)
    assert denied is not None and denied.tag == GrayTag("canary", "cookie")
    allowed = Recognizer(rules, allow=["canary"]).inspect(found)
    assert allowed is not None and allowed.tag == GrayTag("canary", "cookie")
    assert Recognizer(rules, allow=["other"]).inspect(found) is None
    assert Recognizer(rules, allow=["canary"], deny=["canary"]).inspect(found) is None


# -- percentage ----------------------------------------------------------------------------


def literal_bucket(value: bytes) -> int:
    """DESIGN.md's formula, spelled out independently of the implementation."""
    return int.from_bytes(hashlib.sha256(value).digest()[:8], "big") % 10000


def test_bucket_is_the_design_formula() -> None:
    for user in ("u1", "alice", "42", "é"):
        assert bucket(user) == literal_bucket(user.encode())
    assert bucket("u1") == 4042  # pinned: stable across processes, restarts and releases


@pytest.mark.parametrize("percent", [0, 0.01, 1.1, 5, 33.3, 50, 99.99, 100])
def test_percentage_rule_follows_the_formula_for_every_user(percent: float) -> None:
    rule = PercentageRule(percent, header="x-user-id", value="canary")
    recognizer = Recognizer([rule])
    hits = 0
    for i in range(2000):
        user = f"user-{i}"
        inbound = recognizer.inspect({"x-user-id": [user]})
        expected = literal_bucket(user.encode()) < percent * 100
        assert (inbound is not None and inbound.tag == GrayTag("canary", "percentage")) is expected
        hits += expected
    if percent in (0, 100):
        assert hits == (0 if percent == 0 else 2000)


def test_percentage_rule_hashes_the_bytes_on_the_wire() -> None:
    # a non-ASCII id, decoded with surrogateescape (as aiohttp and our ASGI code do)
    raw = "José".encode()
    decoded = raw.decode("utf-8", "surrogateescape")
    assert bucket(decoded) == literal_bucket(raw)
    latin1 = b"Jos\xe9".decode("utf-8", "surrogateescape")
    assert bucket(latin1) == literal_bucket(b"Jos\xe9")


def test_percentage_rule_by_cookie_and_without_a_source() -> None:
    recognizer = Recognizer([PercentageRule(100, cookie="uid")])
    inbound = recognizer.inspect({"cookie": ["uid=7"]})
    assert inbound is not None and inbound.tag == GrayTag("gray", "percentage")
    assert recognizer.inspect({"cookie": ["other=7"]}) is None
    assert recognizer.inspect({"cookie": ["uid="]}) is None


@given(
    st.dictionaries(
        st.sampled_from(["traceparent", "tracestate", "x-gray", "cookie", "x-user-id"]),
        st.lists(st.text(max_size=60), max_size=3),
    )
)
def test_inspect_never_raises_and_only_yields_valid_tags(found: dict[str, list[str]]) -> None:
    rules = [
        TracestateRule(),
        HeaderRule(),
        CookieRule("lane"),
        PercentageRule(50, header="x-user-id"),
    ]
    inbound = Recognizer(rules).inspect(found)
    if inbound is not None and inbound.tag is not None:
        assert is_tag_value(inbound.tag.value)


# -- current() and use() ---------------------------------------------------------------------


def test_current_is_none_outside_a_request() -> None:
    assert current() is None


async def test_current_follows_the_task_tree_and_never_leaks() -> None:
    tag = GrayTag("canary", "header")

    async def child() -> GrayTag | None:
        await asyncio.sleep(0)
        return current()

    async def request(t: GrayTag | None) -> tuple[GrayTag | None, GrayTag | None]:
        token = enter(Inbound(t))
        try:
            task = asyncio.create_task(child())
            await asyncio.sleep(0)
            return current(), await task
        finally:
            leave(token)

    results = await asyncio.gather(request(tag), request(None), request(tag))
    assert list(results) == [(tag, tag), (None, None), (tag, tag)]
    assert current() is None


def test_use_sets_a_tag_and_keeps_the_inbound_trace_context() -> None:
    tag = GrayTag("canary", "header")
    with use(tag):
        assert current() == tag
    assert current() is None
    token = enter(Inbound(None, TP, "1234567890123456", "a=1"))
    try:
        with use(tag):
            headers: dict[str, str] = {}
            inject(headers)
            assert headers == {"traceparent": TP, "tracestate": "a=1", "x-gray": "canary"}
    finally:
        leave(token)


# -- route() ---------------------------------------------------------------------------------


class FakeBreaker:
    def __init__(self, state: State) -> None:
        self.state = state


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (State.CLOSED, "http://gray"),
        (State.HALF_OPEN, "http://gray"),
        (State.DISABLED, "http://gray"),
        (State.OPEN, "http://stable"),
        (State.FORCED_OPEN, "http://stable"),
    ],
)
def test_route_falls_back_to_stable_while_the_gray_breaker_refuses(
    state: State, expected: str
) -> None:
    with use(GrayTag("canary", "header")):
        assert route("http://stable", "http://gray", breaker=FakeBreaker(state)) == expected
    assert route("http://stable", "http://gray", breaker=FakeBreaker(state)) == "http://stable"


def test_route_takes_an_explicit_tag() -> None:
    tag = GrayTag("canary", "header")
    assert route("http://stable", "http://gray", tag=tag) == "http://gray"
    with use(tag):
        assert route("http://stable", "http://gray", tag=None) == "http://stable"


# -- inject(): the outbound rules ----------------------------------------------------------


@contextmanager
def request(inbound: Inbound) -> Iterator[None]:
    token = enter(inbound)
    try:
        yield
    finally:
        leave(token)


GRAY = GrayTag("canary", "header")


def test_inject_with_no_trace_context_writes_the_header_only() -> None:
    assert inject({}) == {}
    with request(Inbound(GRAY)):
        assert inject({}) == {"x-gray": "canary"}
        assert inject({}, header="X-Lane") == {"x-lane": "canary"}


def test_inject_without_an_sdk_passes_the_trace_context_through_byte_for_byte() -> None:
    with request(Inbound(GRAY, TP, "1234567890123456", "foo=1 , bar=2")):
        assert inject({}) == {"traceparent": TP, "tracestate": "foo=1 , bar=2", "x-gray": "canary"}
    with request(Inbound(None, TP, "1234567890123456", None)):
        assert inject({}) == {"traceparent": TP}


def test_inject_with_a_local_span_writes_a_new_parent_id_and_the_member_first() -> None:
    tracer = TracerProvider().get_tracer("test")
    parent = SpanContext(
        0x12345678901234567890123456789012,
        0x1234567890123456,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("foo", "1"), ("gray", "old"), ("bar", "2")]),
    )
    with (
        request(Inbound(GRAY, TP, "1234567890123456", "foo=1,gray=old,bar=2")),
        tracer.start_as_current_span(
            "server", context=trace.set_span_in_context(NonRecordingSpan(parent))
        ) as span,
    ):
        headers: dict[str, str] = inject({})
    ctx = span.get_span_context()
    assert (
        headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    assert ctx.trace_id == parent.trace_id and ctx.span_id != parent.span_id
    assert headers["tracestate"] == "gray=canary,foo=1,bar=2"
    assert headers["x-gray"] == "canary"


def test_inject_with_a_local_span_and_no_tag_leaves_the_tracestate_alone() -> None:
    tracer = TracerProvider().get_tracer("test")
    parent = SpanContext(
        1, 2, is_remote=True, trace_state=TraceState([("foo", "1"), ("gray", "denied")])
    )
    with tracer.start_as_current_span(
        "server", context=trace.set_span_in_context(NonRecordingSpan(parent))
    ):
        headers: dict[str, str] = inject({})
    assert headers["tracestate"] == "foo=1,gray=denied" and "x-gray" not in headers


def test_inject_with_only_a_remote_span_context_forwards_it_unchanged() -> None:
    remote = SpanContext(1, 2, is_remote=True, trace_state=TraceState([("foo", "1")]))
    with request(Inbound(GRAY)), trace.use_span(NonRecordingSpan(remote)):
        headers: dict[str, str] = inject({})
    assert headers == {
        "traceparent": f"00-{1:032x}-{2:016x}-00",
        "tracestate": "foo=1",
        "x-gray": "canary",
    }


def test_inject_respects_a_traceparent_someone_else_already_wrote() -> None:
    inbound = Inbound(GRAY, TP, "1234567890123456", "foo=1")
    with request(inbound):
        # unchanged parent-id: a pass-through by the caller; tracestate untouched
        assert inject({"traceparent": TP, "tracestate": "foo=1"}) == {
            "traceparent": TP,
            "tracestate": "foo=1",
            "x-gray": "canary",
        }
        # a new parent-id (an instrumentation made a client span): member first
        mine = "00-12345678901234567890123456789012-00000000000000aa-01"
        assert inject({"traceparent": mine, "tracestate": "foo=1"}) == {
            "traceparent": mine,
            "tracestate": "gray=canary,foo=1",
            "x-gray": "canary",
        }
        # someone else's invalid tracestate is not ours to repair
        assert inject({"traceparent": mine, "tracestate": "Bad"})["tracestate"] == "Bad"
        assert inject({"traceparent": "junk"}) == {"traceparent": "junk", "x-gray": "canary"}


def test_inject_validates_its_names() -> None:
    with pytest.raises(ConfigError, match=r"^header must"):
        inject({}, header="a b")
    with pytest.raises(ConfigError, match=r"^key must"):
        inject({}, key="Gray")


# -- custom rules --------------------------------------------------------------------------


class QueryLaneRule(Rule):
    """A rule of the user's own: the lane a gateway put in a header of its own."""

    __slots__ = ()
    rule = "header"

    @property
    def headers(self) -> frozenset[str]:
        return frozenset({"x-gateway-lane"})

    def propose(self, found: Any, members: Any) -> str | None:
        values = found.get("x-gateway-lane")
        return values[0].removeprefix("lane:") if values else None


def test_a_subclass_of_rule_is_a_rule() -> None:
    inbound = Recognizer([QueryLaneRule()]).inspect({"x-gateway-lane": ["lane:canary"]})
    assert inbound is not None and inbound.tag == GrayTag("canary", "header")


def test_a_rule_must_name_a_known_strategy() -> None:
    class Nameless(QueryLaneRule):
        __slots__ = ()
        rule = "guess"  # type: ignore[assignment]

    with pytest.raises(ConfigError, match=r"^rules must hold Rule objects"):
        Recognizer([Nameless()])


def test_the_gray_and_asgi_modules_stay_light() -> None:
    code = (
        "import sys, resilient.gray, resilient.asgi, resilient._deadline_header\n"
        "heavy = ('aiohttp', 'starlette', 'opentelemetry.sdk', 'yaml', 'redis', 'aetcd')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_fast_context_reader_sees_what_the_api_attaches() -> None:
    from opentelemetry import context

    from resilient.gray._otel import current_context

    assert not current_context()  # nothing attached: stable traffic skips the outbound work
    token = context.attach(context.set_value("k", "v"))
    try:
        assert current_context() == context.get_current()
        assert current_context()
    finally:
        context.detach(token)
    assert not current_context()


class _MemberRule(Rule):
    """A user's rule that reads a tracestate member of its own."""

    __slots__ = ()
    rule = "tracestate"

    @property
    def headers(self) -> frozenset[str]:
        return frozenset()

    def propose(self, found: Any, members: Any) -> str | None:
        return None if members is None else members.get("lane")


@pytest.mark.parametrize(
    "rules",
    [
        [_MemberRule()],
        [TracestateRule(), _MemberRule()],
        [TracestateRule("other"), TracestateRule("lane")],
    ],
)
def test_rules_that_read_other_members_see_them_all(rules: list[Rule]) -> None:
    found = found_with_trace("foo=1,lane=blue,gray= no,lane=red")
    inbound = Recognizer(rules).inspect(found)
    assert inbound is not None and inbound.tag == GrayTag("blue", "tracestate")


def test_current_span_is_what_the_api_says() -> None:
    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation import _SPAN_KEY

    from resilient.gray._otel import current_span, span_context

    assert current_span() is None and span_context() is None  # nothing attached
    valid = NonRecordingSpan(SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(1)))
    cases: list[object] = [valid, NonRecordingSpan(trace.INVALID_SPAN_CONTEXT), "not a span"]
    for found in cases:
        token = otel_context.attach(otel_context.set_value(_SPAN_KEY, found))
        try:
            api = trace.get_current_span()
            assert current_span() is (None if api is trace.INVALID_SPAN else api)
            expected = api.get_span_context()
            assert span_context() == (expected if expected.is_valid else None)
        finally:
            otel_context.detach(token)
    token = otel_context.attach(otel_context.set_value("other", 1))  # a context, no span
    try:
        assert current_span() is None
    finally:
        otel_context.detach(token)
