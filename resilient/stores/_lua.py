"""The fleet rules as Redis Lua scripts, and the plain data that goes in and out of them.

One idea: everything that decides a fleet transition runs inside Redis,
atomically, in one script call per breaker per flush. Two processes that see
the same window cross a threshold cannot both open the fleet: the first script
to run opens it (and publishes), the second finds it open.

- ``FLUSH`` adds a process's counts into the breaker's window, drops buckets
  older than the window, sums the live ones and applies the fleet rules
  (docs/formats.md, "Redis"): trip, open -> half_open, fleet-wide probe
  tokens and their verdict, manual states. Every transition increments
  ``generation`` and is PUBLISHed as JSON on the breaker's channel.
- ``READ`` answers the same view without writing anything (a process that
  starts, or catches up after an outage).

Time is Redis ``TIME`` (epoch seconds, rounded to microseconds), so process
clocks never matter. ``ARGV[1]`` may carry a time instead: the hypothesis
test drives both the script and its Python model with the same clock.
Bucket ``b`` of a window covers ``[b * width, (b + 1) * width)`` of that time.

Values are plain numbers and strings: decimal integers, and floats written
with six decimals (``%.6f``), so the script and the model agree to the digit.
Nothing read back from Redis is ever evaluated or unpickled here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from resilient.config import BreakerConfig
    from resilient.fleet import FleetView, Outbox
    from resilient.sketch import LatencySketch

__all__ = [
    "FLUSH",
    "FLUSH_SHA",
    "KINDS",
    "LATENCY",
    "LATENCY_SHA",
    "READ",
    "READ_SHA",
    "STATES",
    "FlushArgs",
    "Keys",
    "flush_args",
    "keys_for",
    "parse_message",
    "parse_reply",
    "probe_lease",
    "ttl_ms",
]

# The four outcome kinds of a window bucket, in the order of an Outbox delta.
KINDS: Final = ("ok", "slow_ok", "failed", "slow_failed")
STATES: Final = frozenset({"closed", "open", "half_open", "forced_open", "disabled"})
MANUAL: Final = frozenset({"closed", "forced_open", "disabled"})
PREFIX: Final = "resilient"
TTL_MARGIN: Final = 60.0  # seconds beyond twice the longest span a key must live
LEASE_MARGIN: Final = 1.0  # seconds a probe may run past its slow limit before its token is lost
REASON_MAX: Final = 200  # characters of a trip reason kept in Redis
#: Latency histograms: seconds per bucket of the latency hash, and buckets kept
#: (the fleet percentiles are over the last LATENCY_WIDTH * LATENCY_BUCKETS s).
LATENCY_WIDTH: Final = 1.0
LATENCY_BUCKETS: Final = 60
#: A latency hash lives this long after its last write (ms): twice its span and more.
LATENCY_TTL_MS: Final = math.ceil((2.0 * LATENCY_WIDTH * LATENCY_BUCKETS + 60.0) * 1000.0)

_NAME = re.compile(r"[A-Za-z0-9._:/-]{1,200}")
_LATENCY_FIELD = re.compile(r"(-?[0-9]{1,12}):(-?[0-9]{1,11})")
_DIGITS = re.compile(r"[0-9]{1,15}")

# ------------------------------------------------------------------ keys


class Keys:
    """The keys and channel of one breaker; all share the hash tag ``{<namespace>:<name>}``.

    One tag per breaker puts every key of it in one Redis Cluster slot, which
    a script touching several keys requires.
    """

    __slots__ = ("channel", "latency", "state", "window")

    def __init__(self, namespace: str, name: str) -> None:
        tag = f"{PREFIX}:{{{namespace}:{name}}}"
        self.state = f"{tag}:state"
        self.window = f"{tag}:window"
        self.latency = f"{tag}:latency"
        self.channel = f"{tag}:events"


def keys_for(namespace: str, name: str) -> Keys:
    """The keys of breaker ``name`` in ``namespace`` (both checked against the name rule)."""
    for what, value in (("namespace", namespace), ("name", name)):
        if not _NAME.fullmatch(value):
            raise ValueError(f"{what} must match [A-Za-z0-9._:/-]{{1,200}}, got {value!r}")
    return Keys(namespace, name)


def state_pattern(namespace: str) -> str:
    """A SCAN MATCH pattern for every state key of ``namespace``."""
    return f"{PREFIX}:{{{namespace}:*}}:state"


def channel_pattern(namespace: str) -> str:
    """A PSUBSCRIBE pattern for every breaker channel of ``namespace``."""
    return f"{PREFIX}:{{{namespace}:*}}:events"


def name_from_key(namespace: str, key: str, suffix: str) -> str | None:
    """The breaker name inside a state key or channel of ``namespace``, or None."""
    head = f"{PREFIX}:{{{namespace}:"
    tail = f"}}:{suffix}"
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    name = key[len(head) : len(key) - len(tail)]
    return name if _NAME.fullmatch(name) else None


# ------------------------------------------------------------------ scripts

# Shared by the scripts: the clock, number formatting, window sums, latency.
_PRELUDE = (
    (
        f"local LATENCY_WIDTH, LATENCY_BUCKETS = {LATENCY_WIDTH!r}, {LATENCY_BUCKETS!r}\n"
        f"local LATENCY_TTL = {LATENCY_TTL_MS!r}\n"
    )
    + r"""
local function fmt(x) return string.format('%.6f', x) end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
now = tonumber(fmt(now))
local KIND = {'ok', 'slow_ok', 'failed', 'slow_failed'}

-- Sum the live buckets (oldest, head] of the window hash; drop the rest if asked.
local function totals(wkey, width, nbuckets, drop)
  local calls, failures, slow = 0, 0, 0
  if width <= 0 then return 0, 0, 0 end
  local head = math.floor(now / width)
  local oldest = head - nbuckets
  local all = redis.call('HGETALL', wkey)
  for j = 1, #all, 2 do
    local field = all[j]
    local sep = string.find(field, ':', 1, true)
    local b = sep and tonumber(string.sub(field, 1, sep - 1))
    local kind = sep and string.sub(field, sep + 1)
    local v = tonumber(all[j + 1]) or 0
    if b and b > oldest and b <= head then
      calls = calls + v
      if kind == 'failed' or kind == 'slow_failed' then failures = failures + v end
      if kind == 'slow_ok' or kind == 'slow_failed' then slow = slow + v end
    elseif drop then
      redis.call('HDEL', wkey, field)
    end
  end
  return calls, failures, slow
end

-- Latency: a process's sketch counts ("bucket:count,...") since it last sent,
-- into this second's fields ("<second>:<bucket>"); once a second, the fields
-- older than the span go.
local function add_latency(lkey, counts, ttl)
  if counts == '' then return end
  local sec = math.floor(now / LATENCY_WIDTH)
  local prefix = string.format('%.0f', sec) .. ':'
  for index, count in string.gmatch(counts, '(-?%d+):(%d+)') do
    redis.call('HINCRBY', lkey, prefix .. index, count)
  end
  if tonumber(redis.call('HGET', lkey, 'second')) ~= sec then
    local fields = redis.call('HKEYS', lkey)
    for j = 1, #fields do
      local sep = string.find(fields[j], ':', 1, true)
      local at = sep and tonumber(string.sub(fields[j], 1, sep - 1))
      if at and at <= sec - LATENCY_BUCKETS then redis.call('HDEL', lkey, fields[j]) end
    end
    redis.call('HSET', lkey, 'second', string.format('%.0f', sec))
  end
  redis.call('PEXPIRE', lkey, math.max(ttl, LATENCY_TTL))
end
"""
)

FLUSH: Final = (
    _PRELUDE
    + r"""
-- KEYS: state hash, window hash[, latency hash]. ARGV: see flush_args() in
-- resilient/stores/_lua.py.
local skey, wkey, lkey = KEYS[1], KEYS[2], KEYS[3]
local width, nbuckets = tonumber(ARGV[2]), tonumber(ARGV[3])
local in_calls, in_fail, in_slow = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local in_gen, wanted = tonumber(ARGV[7]), tonumber(ARGV[8])
local manual, trip = ARGV[9], ARGV[10]
local fthr, sthr = tonumber(ARGV[11]), tonumber(ARGV[12])
local minimum, n = tonumber(ARGV[13]), tonumber(ARGV[14])
local dur, backoff, dmax = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local jitter, ttl, lease = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])
local channel = ARGV[21]
if manual ~= '' and manual ~= 'closed' and manual ~= 'forced_open' and manual ~= 'disabled' then
  return redis.error_reply('resilient: unknown manual state ' .. manual)
end

local st = redis.call('HMGET', skey, 'state', 'open_until', 'trips', 'generation', 'granted',
  'probe_calls', 'probe_failures', 'probe_slow', 'lease_until', 'width')
local state = st[1] or 'closed'
local open_until = st[2] or ''
local trips = tonumber(st[3]) or 0
local gen = tonumber(st[4]) or math.floor(now * 1000)  -- grows across a wiped Redis
local granted = tonumber(st[5]) or 0
local pc, pf, ps = tonumber(st[6]) or 0, tonumber(st[7]) or 0, tonumber(st[8]) or 0
local lease_until = tonumber(st[9]) or 0
local reason = false

-- The window: a change of bucket width starts it empty; then add, drop, sum.
if width > 0 then
  if tonumber(st[10]) ~= width then redis.call('DEL', wkey) end
  local head = math.floor(now / width)
  for i = 23, #ARGV - 4, 5 do
    local age = tonumber(ARGV[i])
    if age >= 0 and age < nbuckets then
      local b = string.format('%.0f', head - age)
      for k = 1, 4 do
        local v = tonumber(ARGV[i + k])
        if v > 0 then redis.call('HINCRBY', wkey, b .. ':' .. KIND[k], v) end
      end
    end
  end
end
local calls, failures, slow = totals(wkey, width, nbuckets, true)

if lkey then add_latency(lkey, ARGV[22], ttl) end

local function reset_round()
  granted, pc, pf, ps, lease_until = 0, 0, 0, 0, 0
end
local function to(new, why)
  state, reason, gen = new, why, gen + 1
  if new ~= 'open' then open_until = '' end
  reset_round()
end
local function open(why)
  local d = dur * backoff ^ trips * (1 + jitter)  -- jitter before the cap
  if d > dmax then d = dmax end
  trips = trips + 1
  to('open', why)
  open_until = fmt(now + d)
end
local function clear_window()
  redis.call('DEL', wkey)
  calls, failures, slow = 0, 0, 0
end

if manual ~= '' then
  to(manual, 'manual')
  if manual == 'closed' then trips = 0; clear_window() end
else
  if state == 'open' and open_until ~= '' and now >= tonumber(open_until) then
    to('half_open', 'open duration elapsed')
  end
  if state == 'closed' then
    if trip ~= '' then  -- the requester judged the fleet window with what only it sees
      open('trip: ' .. trip)
    elseif calls >= minimum and calls > 0 then
      if failures / calls >= fthr then open('failure rate')
      elseif slow / calls >= sthr then open('slow-call rate') end
    end
  elseif state == 'half_open' then
    if in_gen == gen and in_calls > 0 and pc < n then
      local take = math.min(in_calls, n - pc)
      pc = pc + take
      pf = pf + math.min(in_fail, take)
      ps = ps + math.min(in_slow, take)
    end
    if granted > pc and now >= lease_until then granted = pc end  -- lost tokens come back
    local undecided = n - pc
    if pf / n >= fthr then open('probes failed')
    elseif ps / n >= sthr then open('probes slow')
    elseif (pf + undecided) / n < fthr and (ps + undecided) / n < sthr then
      to('closed', 'probes succeeded')
      trips = 0
      clear_window()
    end
  end
end

local tokens = 0
if state == 'half_open' and wanted > 0 and granted < n then
  tokens = math.min(wanted, n - granted)
  granted = granted + tokens
  lease_until = now + lease
end

redis.call('HSET', skey, 'state', state, 'trips', trips, 'generation', string.format('%.0f', gen),
  'granted', granted, 'probe_calls', pc, 'probe_failures', pf, 'probe_slow', ps,
  'lease_until', fmt(lease_until), 'width', string.format('%.17g', width),
  'buckets', nbuckets)
if open_until ~= '' then
  redis.call('HSET', skey, 'open_until', open_until)
else
  redis.call('HDEL', skey, 'open_until')
end
if reason then
  redis.call('HSET', skey, 'reason', reason, 'changed_at', fmt(now))
end
if state == 'forced_open' or state == 'disabled' then
  redis.call('PERSIST', skey)  -- an operator's decision outlives idle keys
else
  redis.call('PEXPIRE', skey, ttl)
end
redis.call('PEXPIRE', wkey, ttl)

local until_json = open_until ~= '' and open_until or 'null'
if reason then
  redis.call('PUBLISH', channel, string.format(
    '{"state":"%s","open_until":%s,"now":%s,"trips":%d,"generation":%.0f,'
    .. '"calls":%d,"failures":%d,"slow":%d,"tokens":0}',
    state, until_json, fmt(now), trips, gen, calls, failures, slow))
end
return {state, open_until, fmt(now), trips, gen, calls, failures, slow, tokens}
"""
)

LATENCY: Final = (
    _PRELUDE
    + r"""
-- KEYS: latency hash. ARGV: the clock (or ''), the counts ("bucket:count,...").
-- For the last flush of a store, a breaker with latency to send and nothing else
-- (FLUSH carries it otherwise).
add_latency(KEYS[1], ARGV[2], 0)
return 1
"""
)

READ: Final = (
    _PRELUDE
    + r"""
-- KEYS: state hash, window hash. ARGV[1]: the clock (or ''). Writes nothing.
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'trips', 'generation',
  'width', 'buckets')
if not st[1] then return {'', '', fmt(now), 0, 0, 0, 0, 0, 0} end
local calls, failures, slow = totals(KEYS[2], tonumber(st[5]) or 0, tonumber(st[6]) or 0, false)
return {st[1], st[2] or '', fmt(now), tonumber(st[3]) or 0, tonumber(st[4]) or 0,
  calls, failures, slow, 0}
"""
)


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


FLUSH_SHA: Final = _sha(FLUSH)
READ_SHA: Final = _sha(READ)
LATENCY_SHA: Final = _sha(LATENCY)

# ------------------------------------------------------------------ arguments


def probe_lease(config: BreakerConfig) -> float:
    """Seconds a granted probe token may stay unanswered before the fleet takes it back.

    A probe that hangs is reported slow once it passes ``slow_call_duration``;
    only a process that died (or lost Redis) holding tokens leaves them
    unanswered, and half-open must not stick on that. ``"auto"`` durations
    are learned per process and short; ``open_duration`` bounds them here.
    """
    slow = config.slow_call_duration
    limit = slow if isinstance(slow, int | float) else config.open_duration
    return max(config.open_duration, float(limit)) + LEASE_MARGIN


def ttl_ms(config: BreakerConfig, window_width: float, buckets: int) -> int:
    """How long a breaker's keys live after their last write (milliseconds)."""
    span = max(window_width * buckets, config.open_duration_max, probe_lease(config))
    return math.ceil((2.0 * span + TTL_MARGIN) * 1000.0)


class FlushArgs:
    """FLUSH's ARGV for one breaker, as the bytes Redis receives.

    The part its config, window shape and channel fix (twelve of the values) is
    encoded once and kept while those stay the same objects and numbers; the
    rest is encoded at each call. ``__call__`` is ``flush_args`` for it. The
    bytes are what redis-py would send for the same values (``repr`` of a
    float, decimal integers); only the trip reason is left a string, for the
    client to encode as it is configured.
    """

    __slots__ = ("_config", "_fixed", "_shape", "channel")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._config: BreakerConfig | None = None
        self._shape: tuple[float, int] = (math.nan, 0)
        self._fixed: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])

    def __call__(
        self, outbox: Outbox, now: float | None = None, latency: Mapping[int, int] | None = None
    ) -> list[bytes | str]:
        cfg = outbox.config
        if outbox.manual is not None and outbox.manual not in MANUAL:
            raise ValueError(
                f"outbox.manual must be one of {sorted(MANUAL)}, got {outbox.manual!r}"
            )
        width = float(outbox.window_width)
        if not math.isfinite(width) or width < 0.0:
            raise ValueError(f"outbox.window_width must be >= 0, got {outbox.window_width!r}")
        buckets = int(outbox.buckets)
        if cfg is not self._config or (width, buckets) != self._shape:
            self._fixed = _fixed_args(cfg, width, buckets, self.channel)
            self._config, self._shape = cfg, (width, buckets)
        shape, config, keep = self._fixed
        args: list[bytes | str] = [
            b"" if now is None else repr(float(now)).encode(),
            *shape,
            b"%d" % _count("probe_calls", outbox.probe_calls),
            b"%d" % _count("probe_failures", outbox.probe_failures),
            b"%d" % _count("probe_slow", outbox.probe_slow),
            b"%d" % int(outbox.probe_generation),
            b"%d" % _count("tokens_wanted", outbox.tokens_wanted),
            (outbox.manual or "").encode(),
            (outbox.trip or "")[:REASON_MAX],
            *config,
            repr(float(outbox.jitter)).encode(),
            *keep,
            encode_latency(latency or {}).encode(),
        ]
        for age, *counts in outbox.deltas:
            args.append(b"%d" % _count("delta age", age))
            args.extend(b"%d" % _count("delta count", c) for c in counts)
        return args


def _fixed_args(
    cfg: BreakerConfig, width: float, buckets: int, channel: str
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """FLUSH's ARGV fixed by a breaker's config, window and channel, encoded:
    ARGV[2..3], ARGV[11..17] and ARGV[19..21] (around the jitter, ARGV[18])."""
    shape = [repr(width).encode(), b"%d" % buckets]
    config = [
        repr(float(cfg.failure_rate_threshold)).encode(),
        repr(float(cfg.slow_call_rate_threshold)).encode(),
        b"%d" % cfg.count_window_minimum,
        b"%d" % cfg.half_open_calls,
        repr(float(cfg.open_duration)).encode(),
        repr(float(cfg.open_backoff)).encode(),
        repr(float(cfg.open_duration_max)).encode(),
    ]
    keep = [b"%d" % ttl_ms(cfg, width, buckets), repr(probe_lease(cfg)).encode(), channel.encode()]
    return shape, config, keep


def flush_args(
    outbox: Outbox,
    channel: str,
    now: float | None = None,
    latency: Mapping[int, int] | None = None,
) -> list[bytes | str]:
    """The ARGV of one FLUSH call for ``outbox`` (``now``: tests only; None = Redis TIME).

    ``latency``: sketch bucket -> count of the calls since the last send
    (``resilient.sketch``), added to the latency hash (the third key). A store
    keeps a ``FlushArgs`` per breaker instead, to encode its config once.

    Raises:
        ValueError: an outbox value the script cannot take (named).
    """
    return FlushArgs(channel)(outbox, now, latency)


def encode_latency(counts: Mapping[int, int]) -> str:
    """``"bucket:count,..."``, the form FLUSH reads (counts > 0 only)."""
    parts = []
    for index, n in counts.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"a latency bucket must be an integer, got {index!r}")
        if _count("latency count", n):
            parts.append(f"{index}:{n}")
    return ",".join(parts)


def fleet_latency(fields: Mapping[object, object], now: float) -> LatencySketch:
    """The fleet's sketch from a latency hash: its buckets of the last ``LATENCY_BUCKETS`` s.

    ``now`` is Redis time (``TIME``), the clock the fields were written by.
    A field that is not ``"<second>:<bucket>"`` with a count (only FLUSH
    writes here) is skipped, never evaluated.
    """
    from resilient.sketch import LatencySketch, is_bucket

    newest = math.floor(now / LATENCY_WIDTH)
    counts: dict[int, int] = {}
    for field, count in fields.items():
        cell = _LATENCY_FIELD.fullmatch(_text(field))
        number = _DIGITS.fullmatch(_text(count))
        if cell is None or number is None:
            continue
        second, index = int(cell[1]), int(cell[2])
        if newest - LATENCY_BUCKETS < second <= newest and is_bucket(index):
            counts[index] = counts.get(index, 0) + int(number[0])
    return LatencySketch.from_counts(counts)


def _count(what: str, value: int) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


# ------------------------------------------------------------------ replies and messages


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_reply(reply: Sequence[object]) -> FleetView | None:
    """A script's reply as a FleetView; None when the breaker has no fleet state (READ).

    Raises:
        ValueError: the reply does not have the script's shape.
    """
    from resilient.fleet import FleetView

    if len(reply) != 9:
        raise ValueError(f"a fleet reply has 9 items, got {len(reply)}")
    state, until, now = (_text(v) for v in reply[:3])
    if state == "":
        return None
    if state not in STATES:
        raise ValueError(f"unknown fleet state {state!r}")
    # FleetView's fields in order: state, open_until, now, then the six integers
    return FleetView(state, float(until) if until else None, float(now), *map(_int, reply[3:]))


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes | str):
        return int(value)
    raise ValueError(f"expected an integer, got {type(value).__name__}")


_MESSAGE_INTS: Final = ("trips", "generation", "calls", "failures", "slow", "tokens")
_MESSAGE_MAX: Final = 4096  # bytes; about 200, up to 2 KiB with an operator's record


def json_object(data: bytes | str, most: int) -> Mapping[str, Any] | None:
    """``data`` as a JSON object, or None: empty, over ``most`` bytes, not JSON, not an object.

    What everything read back from Redis goes through: JSON only, bounded.
    """
    if not data or len(data) > most:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, Mapping) else None


def parse_message(data: bytes | str) -> FleetView | None:
    """A PUBLISHed transition as a FleetView, or None if it is malformed in any way.

    Strict: JSON only (never pickle), an object with every FleetView field of
    the right type and range; unknown extra fields are ignored so that a
    newer version may add some mid-rollout (an operator's change carries its
    record in ``manual``: ``_control.record_of_message``).
    """
    from resilient.fleet import FleetView

    doc = json_object(data, _MESSAGE_MAX)
    if doc is None:
        return None
    state = doc.get("state")
    if state not in STATES:
        return None
    ints = [doc.get(k) for k in _MESSAGE_INTS]
    if not all(type(v) is int and v >= 0 for v in ints):
        return None
    now, until = doc.get("now"), doc.get("open_until")
    if not _finite(now) or not (until is None or _finite(until)):
        return None
    if (until is None) != (state != "open"):
        return None
    at = float(now)  # type: ignore[arg-type]
    return FleetView(str(state), None if until is None else float(until), at, *map(int, ints))  # type: ignore[arg-type]


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
