"""The fleet scripts against a plain-Python model of the same rules.

The model below is written from docs/formats.md ("Redis"), not from the Lua:
random sequences of flushes (and reads) run through the real scripts on a real
redis-server and through the model, with the same injected clock (ARGV[1]),
and every reply, every hash field, every expiry and every PUBLISHed message
must agree to the character. The rest checks the Python half of ``_lua``:
keys and their cluster slot, arguments, replies and strict message parsing.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resilient.config import BreakerConfig
from resilient.fleet import FleetView, Outbox
from resilient.stores import _lua
from resilient.testing.servers import RedisServer

# ------------------------------------------------------------------ the model


def fmt(x: float) -> str:
    return f"{x:.6f}"


@dataclass
class Model:
    """Redis as far as the scripts use it: hashes, expiry flags, published messages."""

    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    expires: dict[str, bool] = field(default_factory=dict)  # key -> has a TTL
    published: list[tuple[str, str]] = field(default_factory=list)

    def _h(self, key: str) -> dict[str, str]:
        return self.hashes.setdefault(key, {})

    def _delete(self, key: str) -> None:
        self.hashes.pop(key, None)
        self.expires.pop(key, None)

    def _tidy(self, key: str) -> None:
        if not self.hashes.get(key):
            self._delete(key)

    @staticmethod
    def _now(arg: str) -> float:
        return float(fmt(float(arg)))

    def _totals(self, wkey: str, now: float, width: float, n: int, drop: bool) -> list[int]:
        if width <= 0:
            return [0, 0, 0]
        head = math.floor(now / width)
        calls = failures = slow = 0
        window = self.hashes.get(wkey, {})
        for name, value in list(window.items()):
            number, _, kind = name.partition(":")
            if head - n < int(number) <= head:
                v = int(value)
                calls += v
                failures += v if kind in ("failed", "slow_failed") else 0
                slow += v if kind in ("slow_ok", "slow_failed") else 0
            elif drop:
                del window[name]
        self._tidy(wkey)
        return [calls, failures, slow]

    def read(self, skey: str, wkey: str, args: Sequence[str]) -> list[object]:
        now = self._now(args[0]) if args[0] else 0.0
        h = self.hashes.get(skey)
        if not h:
            return ["", "", fmt(now), 0, 0, 0, 0, 0, 0]
        totals = self._totals(
            wkey, now, float(h.get("width", "0")), int(h.get("buckets", "0")), drop=False
        )
        return [
            h["state"],
            h.get("open_until", ""),
            fmt(now),
            int(h.get("trips", 0)),
            int(h.get("generation", 0)),
            *totals,
            0,
        ]

    def flush(self, skey: str, wkey: str, raw: Sequence[str]) -> list[object]:
        a = list(raw)
        now = self._now(a[0])
        width, n_buckets = float(a[1]), int(a[2])
        in_calls, in_fail, in_slow, in_gen, wanted = (int(x) for x in a[3:8])
        manual, trip = a[8], a[9]
        fthr, sthr = float(a[10]), float(a[11])
        minimum, n = int(a[12]), int(a[13])
        dur, backoff, dmax, jitter = (float(x) for x in a[14:18])
        ttl, lease, channel = int(a[18]), float(a[19]), a[20]
        # a[21], the latency counts, go to a hash of their own that nothing here reads
        deltas = [a[i : i + 5] for i in range(22, len(a) - 4, 5)]

        h = self.hashes.get(skey, {})
        state = h.get("state", "closed")
        open_until = h.get("open_until", "")
        trips = int(h.get("trips", 0))
        gen = int(h["generation"]) if "generation" in h else math.floor(now * 1000)
        granted = int(h.get("granted", 0))
        pc, pf, ps = (int(h.get(k, 0)) for k in ("probe_calls", "probe_failures", "probe_slow"))
        lease_until = float(h.get("lease_until", 0))
        reason: str | None = None

        if width > 0:
            if "width" not in h or float(h["width"]) != width:
                self._delete(wkey)
            head = math.floor(now / width)
            for age_s, *counts in deltas:
                age = int(age_s)
                if 0 <= age < n_buckets:
                    for kind, c in zip(_lua.KINDS, counts, strict=True):
                        if int(c) > 0:
                            cell = f"{head - age}:{kind}"
                            w = self._h(wkey)
                            w[cell] = str(int(w.get(cell, 0)) + int(c))
        calls, failures, slow = self._totals(wkey, now, width, n_buckets, drop=True)

        def to(new: str, why: str) -> None:
            nonlocal state, reason, gen, open_until, granted, pc, pf, ps, lease_until
            state, reason, gen = new, why, gen + 1
            if new != "open":
                open_until = ""
            granted = pc = pf = ps = 0
            lease_until = 0.0

        def open_(why: str) -> None:
            nonlocal trips, open_until
            d = min(dur * backoff**trips * (1 + jitter), dmax)
            trips += 1
            to("open", why)
            open_until = fmt(now + d)

        def clear() -> None:
            nonlocal calls, failures, slow
            self._delete(wkey)
            calls = failures = slow = 0

        if manual:
            to(manual, "manual")
            if manual == "closed":
                trips = 0
                clear()
        else:
            if state == "open" and open_until and now >= float(open_until):
                to("half_open", "open duration elapsed")
            if state == "closed":
                if trip:
                    open_("trip: " + trip)
                elif calls >= minimum and calls > 0:
                    if failures / calls >= fthr:
                        open_("failure rate")
                    elif slow / calls >= sthr:
                        open_("slow-call rate")
            elif state == "half_open":
                if in_gen == gen and in_calls > 0 and pc < n:
                    take = min(in_calls, n - pc)
                    pc, pf, ps = pc + take, pf + min(in_fail, take), ps + min(in_slow, take)
                if granted > pc and now >= lease_until:
                    granted = pc
                undecided = n - pc
                if pf / n >= fthr:
                    open_("probes failed")
                elif ps / n >= sthr:
                    open_("probes slow")
                elif (pf + undecided) / n < fthr and (ps + undecided) / n < sthr:
                    to("closed", "probes succeeded")
                    trips = 0
                    clear()
        tokens = 0
        if state == "half_open" and wanted > 0 and granted < n:
            tokens = min(wanted, n - granted)
            granted += tokens
            lease_until = now + lease

        s = self._h(skey)
        s.update(
            state=state,
            trips=str(trips),
            generation=str(gen),
            granted=str(granted),
            probe_calls=str(pc),
            probe_failures=str(pf),
            probe_slow=str(ps),
            lease_until=fmt(lease_until),
            width=f"{width:.17g}",
            buckets=str(n_buckets),
        )
        if open_until:
            s["open_until"] = open_until
        else:
            s.pop("open_until", None)
        if reason:
            s.update(reason=reason, changed_at=fmt(now))
        self.expires[skey] = state not in ("forced_open", "disabled")
        if wkey in self.hashes:
            self.expires[wkey] = True
        assert ttl > 0
        if reason:
            until = open_until or "null"
            self.published.append(
                (
                    channel,
                    f'{{"state":"{state}","open_until":{until},"now":{fmt(now)},'
                    f'"trips":{trips},"generation":{gen},"calls":{calls},'
                    f'"failures":{failures},"slow":{slow},"tokens":0}}',
                )
            )
        return [state, open_until, fmt(now), trips, gen, calls, failures, slow, tokens]


# ------------------------------------------------------------------ against the real scripts


def _text(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


CONFIGS = st.builds(
    BreakerConfig,
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    minimum_calls=st.integers(1, 8),
    half_open_calls=st.integers(1, 4),
    open_duration=st.sampled_from([0.5, 1.0, 2.5]),
    open_duration_max=st.just(6.0),
    open_backoff=st.sampled_from([1.0, 2.0, 3.0]),
)
COUNTS = st.integers(0, 4)
GAPS = st.sampled_from([0.0, 0.01, 0.3, 0.999, 1.0, 2.0, 7.5])
_serial = itertools.count()


@pytest.fixture(scope="module")
def client(redis_server_session: RedisServer) -> Iterator[redis.Redis]:
    with redis_server_session.client(decode_responses=False) as c:
        c.script_load(_lua.FLUSH)
        c.script_load(_lua.READ)
        yield c


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), config=CONFIGS, start=st.floats(1_000.0, 2_000.0))
def test_scripts_match_the_model(
    client: redis.Redis, data: st.DataObject, config: BreakerConfig, start: float
) -> None:
    keys = _lua.keys_for("model", f"b{next(_serial)}")
    model = Model()
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.channel)
    assert pubsub.get_message(timeout=1.0) is None  # the subscribe confirmation
    now = start
    last: list[object] = [0] * 9
    try:
        for _ in range(data.draw(st.integers(1, 25), label="steps")):
            now += data.draw(GAPS, label="gap")
            if data.draw(st.integers(0, 9), label="read?") == 0:
                clock = [repr(now)]
                got = _text(client.evalsha(_lua.READ_SHA, 2, keys.state, keys.window, *clock))
                assert got == model.read(keys.state, keys.window, clock)
                continue
            width, buckets = data.draw(
                st.sampled_from([(1.0, 4), (0.5, 3), (1.0 / 3.0, 2), (0.0, 10)]), label="shape"
            )
            generation = int(str(last[4]))
            outbox = Outbox(
                name="b",
                window_width=width,
                buckets=buckets,
                deltas=tuple(
                    data.draw(
                        st.lists(
                            st.tuples(st.integers(0, 5), COUNTS, COUNTS, COUNTS, COUNTS), max_size=3
                        ),
                        label="deltas",
                    )
                ),
                probe_calls=(pcalls := data.draw(COUNTS, label="probe_calls")),
                probe_failures=data.draw(st.integers(0, pcalls), label="probe_failures"),
                probe_slow=data.draw(st.integers(0, pcalls), label="probe_slow"),
                probe_generation=data.draw(
                    st.sampled_from([generation, generation - 1]), label="generation"
                ),
                tokens_wanted=data.draw(st.integers(0, 3), label="tokens"),
                manual=data.draw(
                    st.sampled_from([None] * 40 + ["closed", "forced_open", "disabled"]),
                    label="manual",
                ),
                trip=data.draw(st.sampled_from([None] * 5 + ["local window"]), label="trip"),
                config=config,
                jitter=data.draw(st.floats(-0.1, 0.1), label="jitter"),
            )
            args = _lua.flush_args(outbox, keys.channel, now=now)
            got = _text(client.evalsha(_lua.FLUSH_SHA, 2, keys.state, keys.window, *args))
            want = model.flush(keys.state, keys.window, [str(_text(a)) for a in args])
            assert got == want
            event(f"reached {want[0]}")
            if want[8]:
                event("tokens granted")
            if model.published:
                event(f"published {model.hashes[keys.state]['reason'].split(':')[0]}")
            last = want
            for key in (keys.state, keys.window):
                assert _text(client.hgetall(key)) == model.hashes.get(key, {}), key
                ttl = client.pttl(key)
                assert (ttl > 0) if model.expires.get(key, False) else ttl in (-1, -2), key
            for channel, message in model.published:
                got_message = pubsub.get_message(timeout=2.0)
                assert got_message is not None
                assert _text(got_message["channel"]) == channel
                assert _text(got_message["data"]) == message
                assert _lua.parse_message(message) is not None
            model.published.clear()
    finally:
        pubsub.close()
        client.delete(keys.state, keys.window)


def test_a_fleet_opens_once_and_probes_are_bounded(client: redis.Redis) -> None:
    """A worked example: two processes' counts trip the fleet; half-open grants N tokens."""
    keys = _lua.keys_for("model", "worked")
    cfg = BreakerConfig(minimum_calls=4, half_open_calls=2, open_duration=1.0, open_backoff=2.0)

    def flush(now: float, **kw: object) -> FleetView | None:
        fields: dict[str, object] = dict(
            name="worked", window_width=1.0, buckets=10, deltas=(), probe_calls=0,
            probe_failures=0, probe_slow=0, probe_generation=0, tokens_wanted=0,
            manual=None, trip=None, config=cfg, jitter=0.0,
        )  # fmt: skip
        fields.update(kw)
        args = _lua.flush_args(Outbox(**fields), keys.channel, now=now)  # type: ignore[arg-type]
        return _lua.parse_reply(client.evalsha(_lua.FLUSH_SHA, 2, keys.state, keys.window, *args))

    try:
        a = flush(100.0, deltas=((0, 1, 0, 1, 0),))
        assert a is not None and (a.state, a.calls, a.failures) == ("closed", 2, 1)
        b = flush(100.5, deltas=((0, 0, 0, 1, 0),))  # 3 calls: under minimum_calls
        assert b is not None and b.state == "closed"
        c = flush(100.6, deltas=((0, 1, 0, 0, 0),))  # 4 calls, 2 failed: opens, once
        assert c is not None and (c.state, c.trips, c.open_until) == ("open", 1, 101.6)
        assert c.generation == b.generation + 1
        d = flush(100.7, deltas=((0, 0, 0, 5, 0),))
        assert d is not None and (d.state, d.generation) == ("open", c.generation)
        e = flush(101.6, tokens_wanted=5)  # half-open: two tokens, fleet-wide
        assert e is not None and (e.state, e.tokens) == ("half_open", 2)
        f = flush(101.7, tokens_wanted=5)
        assert f is not None and f.tokens == 0
        g = flush(101.8, probe_calls=2, probe_generation=e.generation)
        assert g is not None and (g.state, g.trips, g.calls) == ("closed", 0, 0)
    finally:
        client.delete(keys.state, keys.window)


def test_read_writes_nothing_and_says_when_there_is_no_state(client: redis.Redis) -> None:
    keys = _lua.keys_for("model", "absent")
    reply = client.evalsha(_lua.READ_SHA, 2, keys.state, keys.window, "")
    assert _lua.parse_reply(reply) is None
    assert client.exists(keys.state, keys.window) == 0


# ------------------------------------------------------------------ the Python half


def test_every_key_of_a_breaker_is_in_one_cluster_slot() -> None:
    from binascii import crc_hqx  # CRC16-XMODEM, the cluster spec's hash

    from redis.crc import key_slot

    for namespace, name in [("feed", "recommend"), ("a.b", "api.example.com:443"), ("x", "a/b-c")]:
        keys = _lua.keys_for(namespace, name)
        tag = f"{namespace}:{name}".encode()
        slot = crc_hqx(tag, 0) % 16384
        assert keys.state == f"resilient:{{{namespace}:{name}}}:state"
        assert {key_slot(k.encode()) for k in (keys.state, keys.window, keys.channel)} == {slot}


def test_names_outside_the_name_rule_are_refused() -> None:
    with pytest.raises(ValueError, match="name must match"):
        _lua.keys_for("feed", "a}b")
    with pytest.raises(ValueError, match="namespace must match"):
        _lua.keys_for("", "a")


def test_names_come_back_out_of_keys_and_channels() -> None:
    keys = _lua.keys_for("feed", "host:443")
    assert _lua.name_from_key("feed", keys.state, "state") == "host:443"
    assert _lua.name_from_key("feed", keys.channel, "events") == "host:443"
    assert _lua.name_from_key("other", keys.state, "state") is None
    assert _lua.name_from_key("feed", "resilient:{feed:a b}:state", "state") is None


def _outbox(**kw: object) -> Outbox:
    fields: dict[str, object] = dict(
        name="b", window_width=1.0, buckets=10, deltas=(), probe_calls=0, probe_failures=0,
        probe_slow=0, probe_generation=0, tokens_wanted=0, manual=None, trip=None,
        config=BreakerConfig(), jitter=0.0,
    )  # fmt: skip
    fields.update(kw)
    return Outbox(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"manual": "open"}, "outbox.manual"),
        ({"window_width": -1.0}, "window_width"),
        ({"window_width": math.nan}, "window_width"),
        ({"deltas": ((0, -1, 0, 0, 0),)}, "delta count"),
        ({"deltas": ((-1, 1, 0, 0, 0),)}, "delta age"),
        ({"tokens_wanted": -2}, "tokens_wanted"),
    ],
)
def test_bad_outboxes_are_named(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _lua.flush_args(_outbox(**kw), "c")


def test_arguments_carry_the_config_and_a_bounded_reason() -> None:
    args = _lua.flush_args(_outbox(trip="x" * 1000, deltas=((1, 2, 3, 4, 5),)), "chan")
    assert args[0] == b""  # Redis TIME
    assert args[9] == "x" * _lua.REASON_MAX  # a string: the client encodes it as configured
    assert args[20] == b"chan"
    assert args[21] == b""  # no latency counts
    assert args[22:] == [b"1", b"2", b"3", b"4", b"5"]
    with_latency = _lua.flush_args(_outbox(), "chan", latency={-460: 3, 12: 0, 40: 1})
    assert with_latency[21] == b"-460:3,40:1"
    # keys outlive twice the longest span: here open_duration_max (60 s)
    assert args[18] == b"%d" % ((2 * 60 + _lua.TTL_MARGIN) * 1000)


def test_arguments_are_the_bytes_redis_py_sends_for_the_values() -> None:
    # What the client would have sent for plain values: repr of a float, decimal integers.
    cfg = BreakerConfig(failure_rate_threshold=0.3, open_duration=2.5, half_open_calls=3)
    box = _outbox(config=cfg, manual="forced_open", jitter=-0.0125, probe_generation=7)
    values = [
        "", 1.0, 10, 0, 0, 0, 7, 0, "forced_open", "", 0.3, 1.0, cfg.count_window_minimum, 3,
        2.5, cfg.open_backoff, cfg.open_duration_max, -0.0125,
        _lua.ttl_ms(cfg, 1.0, 10), _lua.probe_lease(cfg), "chan", "",
    ]  # fmt: skip
    encoder = redis.Redis().get_encoder()
    got = [encoder.encode(a) for a in _lua.flush_args(box, "chan", latency={})]
    assert got == [encoder.encode(v) for v in values]


def test_a_breakers_arguments_follow_its_config_and_window() -> None:
    # The config part is encoded once per breaker, and again when the config
    # (a new object) or the window's shape changes.
    args = _lua.FlushArgs("chan")
    first = _outbox(config=BreakerConfig(open_duration=1.0))
    assert args(first) == _lua.flush_args(first, "chan")
    moved = _outbox(config=BreakerConfig(open_duration=7.0), jitter=0.05, tokens_wanted=2)
    assert args(moved) == _lua.flush_args(moved, "chan")
    assert args(moved)[14] == b"7.0"
    wider = _outbox(config=moved.config, window_width=2.0, buckets=30)
    assert args(wider) == _lua.flush_args(wider, "chan")
    assert args(wider)[1:3] == [b"2.0", b"30"]


def test_probe_tokens_are_leased_past_the_slow_limit() -> None:
    assert _lua.probe_lease(BreakerConfig(open_duration=5.0, slow_call_duration=2.0)) == 6.0
    assert _lua.probe_lease(BreakerConfig(open_duration=1.0, slow_call_duration=30.0)) == 31.0
    assert _lua.probe_lease(BreakerConfig(open_duration=1.0, slow_call_duration="auto")) == 2.0


GOOD = {
    "state": "open",
    "open_until": 1712.5,
    "now": 1710.25,
    "trips": 1,
    "generation": 9,
    "calls": 20,
    "failures": 11,
    "slow": 0,
    "tokens": 0,
}


def test_a_good_message_parses() -> None:
    view = _lua.parse_message(json.dumps(GOOD).encode())
    assert view == FleetView(**GOOD)  # type: ignore[arg-type]
    # a newer version may add fields
    assert _lua.parse_message(json.dumps({**GOOD, "reason": "x"})) == view


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04\x95",  # a pickle
        b"not json",
        b"[1, 2]",
        json.dumps({**GOOD, "state": "exploded"}),
        json.dumps({**GOOD, "trips": "1"}),
        json.dumps({**GOOD, "trips": True}),
        json.dumps({**GOOD, "calls": -1}),
        json.dumps({**GOOD, "generation": 1.5}),
        json.dumps({**GOOD, "now": "soon"}),
        json.dumps({**GOOD, "open_until": None}),  # open needs open_until
        json.dumps({**GOOD, "state": "closed"}),  # ... and only open has one
        json.dumps({k: v for k, v in GOOD.items() if k != "slow"}),
        '{"state": "open", "now": Infinity}',
        json.dumps({**GOOD, "pad": "x" * 5000}),  # over 4 KiB
    ],
)
def test_malformed_messages_are_ignored(data: bytes | str) -> None:
    assert _lua.parse_message(data) is None


def test_replies_of_the_wrong_shape_are_errors() -> None:
    with pytest.raises(ValueError, match="9 items"):
        _lua.parse_reply([b"closed"])
    with pytest.raises(ValueError, match="unknown fleet state"):
        _lua.parse_reply([b"weird", b"", b"1.0", 0, 0, 0, 0, 0, 0])
