"""Fleet-wide manual control: an operator's state for one breaker, held and audited.

One idea: ``resilient breaker force-open|disable|reset`` (and the dashboard's
controls) set a breaker's state for the whole fleet in one Lua script that
also appends who, when, why, before and after to the namespace's audit
stream, ``resilient:{<namespace>}:audit``, so a change is in force if and only
if it is audited. The script PUBLISHes the change on the breaker's events
channel with the operator's record (``manual``), and every ``RedisStore``
applies it within milliseconds.

On a Redis Cluster the breaker's keys and the stream are in two slots, which
no one script may touch: the script runs on the breaker's slot without the
stream and answers what the entry must say, then the entry is appended on
its own, retried through a failover. The order is the guarantee: an entry
never names a change that was not made, and a change can miss its entry only
when the command dies in between or the stream's slot stays away (then
``UnauditedChangeError``); the breaker's state hash names who, when and why
either way, and the next change's entry names it as ``before_by``.

Held: each store keeps the record of every operator state it has seen (from
the message, or read once with ``HOLD`` when a view shows one it does not
know). When Redis comes back from an outage the store writes its records back
(``HOLD`` with the record) before anything else; the script takes one only
when Redis has no newer decision for that breaker (``manual_id``, the time of
the decision in microseconds, stays in the state hash after a reset as a
tombstone), so a Redis restarted empty gets the operator's states again and a
reset made meanwhile is not undone. Docs: docs/formats.md ("Fleet-wide manual
states", "The audit stream").

A manual state set in code (``br.force_open()``) is not this: it travels as
before, through the flush, with no record, and nothing holds it.

Bad input raises ``ValueError`` (``UnknownBreakerError`` for a breaker the
fleet has no state of) and writes nothing; Redis errors are raised as
redis-py raises them, for the caller to report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import math
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from resilient.stores import _lua

if TYPE_CHECKING:
    import redis

__all__ = [
    "ACTIONS",
    "AUDIT_MAXLEN",
    "HOLD",
    "HOLD_SHA",
    "MANUAL",
    "MANUAL_SHA",
    "AuditEntry",
    "Change",
    "Manual",
    "UnauditedChangeError",
    "UnknownBreakerError",
    "apply_change",
    "audit_key",
    "check_text",
    "control",
    "default_actor",
    "parse_record",
    "read_audit",
    "split_reply",
]

# The command's actions and the states they set.
ACTIONS: Final = {"force-open": "forced_open", "disable": "disabled", "reset": "closed"}
HELD: Final = frozenset({"forced_open", "disabled"})  # the states a store holds
TEXT_MAX: Final = 200  # characters of a reason or an actor
AUDIT_MAXLEN: Final = 10_000  # entries kept in a namespace's audit stream (approximately)
TIMEOUT: Final = 2.0  # seconds a control's Redis commands may take
AUDIT_PATIENCE: Final = 10.0  # seconds a cluster's audit entry is tried for (a failover)
AUDIT_RETRY_PAUSE: Final = 0.1  # seconds between its tries
_RECORD_MAX: Final = 4096  # bytes of a record read back (a real one is under 2 KiB)
UNSAID: Final = object()  # a FLUSH or READ reply: says nothing of records


class UnauditedChangeError(Exception):
    """On a Redis Cluster: the change is in force fleet-wide, but its audit entry is not written.

    ``change`` is what is in force (``audit_id`` empty); the cause says why
    the entry failed. Not a ``RedisError``: the change was made.
    """

    def __init__(self, change: Change, error: BaseException) -> None:
        self.change = change
        super().__init__(
            f"{change.name}: {change.before or '(no state)'} -> {change.after} is in force "
            f"fleet-wide (generation {change.generation}), but its audit entry could not be "
            f"written ({type(error).__name__}: {error}); the breaker's state still names who "
            "and why (resilient status)"
        )


class UnknownBreakerError(ValueError):
    """The fleet has no state of this breaker (a typo, or no process has used it yet)."""

    def __init__(self, namespace: str, name: str, known: Sequence[str] = ()) -> None:
        self.namespace, self.name, self.known = namespace, name, tuple(known)
        hint = f"; did you mean {', '.join(repr(k) for k in known)}?" if known else ""
        super().__init__(
            f"no breaker {name!r} in namespace {namespace!r} (no process has reported it"
            f"{hint}); pass --create to set it anyway"
        )


@dataclass(frozen=True, slots=True)
class Manual:
    """An operator's state of one breaker, as the stores hold it."""

    state: str  # forced_open | disabled (closed: a reset, never held)
    reason: str
    actor: str
    at: float  # epoch seconds (Redis TIME) of the decision
    id: int  # the decision's time in microseconds: which of two decisions is newer
    generation: int  # the fleet generation it was (last) put in force at

    def args(self) -> list[str]:
        """``HOLD``'s ARGV[2:] to write this record back."""
        return [self.state, self.reason, self.actor, f"{self.at:.6f}", str(self.id)]


@dataclass(frozen=True, slots=True)
class Change:
    """What one control did (the audit entry says the same)."""

    name: str
    action: str
    before: str | None  # the fleet's state before; None when it had none (--create)
    after: str
    reason: str
    actor: str
    at: float
    generation: int
    audit_id: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit stream (docs/formats.md)."""

    id: str
    at: float
    actor: str
    action: str
    breaker: str
    reason: str
    before: str | None
    after: str
    before_reason: str
    before_by: str
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def audit_key(namespace: str) -> str:
    """The audit stream of ``namespace``: ``resilient:{<namespace>}:audit``."""
    _lua.keys_for(namespace, "x")
    return f"{_lua.PREFIX}:{{{namespace}}}:audit"


def default_actor() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_text(what: str, text: str, *, empty: bool = True) -> str:
    """``text`` if it is printable and at most 200 characters (and not empty unless allowed).

    Raises:
        ValueError: naming ``what``.
    """
    if not isinstance(text, str) or len(text) > TEXT_MAX or not text.isprintable():
        raise ValueError(f"{what} must be printable text of at most {TEXT_MAX} characters")
    if not empty and not text.strip():
        raise ValueError(f"{what} must not be empty")
    return text


# ------------------------------------------------------------------ scripts

# Shared: put an operator's state in force (the same fields FLUSH's manual
# branch writes, plus the record), and publish it with the record.
_SET = r"""
local function record_json(ms, mreason, mactor, mat, mid, g)
  return string.format('{"state":"%s","reason":%s,"actor":%s,"at":%s,"id":%s,"generation":%.0f}',
    ms, cjson.encode(mreason), cjson.encode(mactor), mat, mid, g)
end
local function put(skey, wkey, channel, ms, mreason, mactor, mat, mid, ttl)
  local st = redis.call('HMGET', skey, 'generation', 'trips')
  local gen = (tonumber(st[1]) or math.floor(now * 1000)) + 1
  local trips = tonumber(st[2]) or 0
  if ms == 'closed' then
    trips = 0
    redis.call('DEL', wkey)
  end
  redis.call('HSET', skey, 'state', ms, 'trips', trips, 'generation', string.format('%.0f', gen),
    'granted', 0, 'probe_calls', 0, 'probe_failures', 0, 'probe_slow', 0,
    'lease_until', fmt(0), 'reason', 'manual', 'changed_at', fmt(now),
    'manual_state', ms, 'manual_reason', mreason, 'manual_by', mactor, 'manual_at', mat,
    'manual_id', mid, 'manual_generation', string.format('%.0f', gen))
  redis.call('HDEL', skey, 'open_until')
  if ms == 'closed' then redis.call('PEXPIRE', skey, ttl) else redis.call('PERSIST', skey) end
  local record = record_json(ms, mreason, mactor, mat, mid, gen)
  local calls, failures, slow = 0, 0, 0
  if ms ~= 'closed' then
    local w = redis.call('HMGET', skey, 'width', 'buckets')
    calls, failures, slow = totals(wkey, tonumber(w[1]) or 0, tonumber(w[2]) or 0, false)
  end
  redis.call('PUBLISH', channel, string.format(
    '{"state":"%s","open_until":null,"now":%s,"trips":%d,"generation":%.0f,'
    .. '"calls":%d,"failures":%d,"slow":%d,"tokens":0,"manual":%s}',
    ms, fmt(now), trips, gen, calls, failures, slow, record))
  return {ms, '', fmt(now), trips, gen, calls, failures, slow, 0, record}
end
-- The fleet's view and the operator's record in force ('' if none), as FLUSH answers plus one.
local function view(skey, wkey)
  local st = redis.call('HMGET', skey, 'state', 'open_until', 'trips', 'generation', 'width',
    'buckets', 'manual_state', 'manual_reason', 'manual_by', 'manual_at', 'manual_id',
    'manual_generation')
  if not st[1] then return {'', '', fmt(now), 0, 0, 0, 0, 0, 0, ''} end
  local calls, failures, slow = totals(wkey, tonumber(st[5]) or 0, tonumber(st[6]) or 0, false)
  local record = ''
  if st[7] and st[12] == st[4] and (st[1] == 'forced_open' or st[1] == 'disabled') then
    record = record_json(st[7], st[8] or '', st[9] or '', st[10] or fmt(0), st[11] or '0',
      tonumber(st[12]))
  end
  return {st[1], st[2] or '', fmt(now), tonumber(st[3]) or 0, tonumber(st[4]) or 0,
    calls, failures, slow, 0, record}
end
"""

MANUAL: Final = (
    _lua._PRELUDE
    + _SET
    + r"""
-- KEYS: state hash, window hash[, audit stream]. ARGV: clock, state, reason, actor, channel,
-- ttl (ms, for a reset), create ('1' or ''), action, breaker name, audit maxlen.
-- Without the audit stream (a Redis Cluster: it is in another slot) the caller
-- appends the entry, from the reply: before, '' (no entry yet), before_reason, before_by.
local skey, wkey, akey = KEYS[1], KEYS[2], KEYS[3]
local ms, mreason, mactor, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ms ~= 'closed' and ms ~= 'forced_open' and ms ~= 'disabled' then
  return redis.error_reply('resilient: unknown manual state ' .. ms)
end
local before = redis.call('HMGET', skey, 'state', 'reason', 'manual_reason', 'manual_by',
  'generation', 'manual_generation')
if not before[1] and ARGV[7] ~= '1' then return redis.error_reply('UNKNOWN breaker') end
local before_reason, before_by = before[2] or '', ''
if before[6] and before[6] == before[5] then
  before_reason, before_by = before[3] or '', before[4] or ''
end
local mid = string.format('%.0f', math.floor(now * 1000000))
local reply = put(skey, wkey, channel, ms, mreason, mactor, fmt(now), mid, tonumber(ARGV[6]))
local entry = ''
if akey then
  entry = redis.call('XADD', akey, 'MAXLEN', '~', ARGV[10], '*', 'at', fmt(now),
    'actor', mactor, 'action', ARGV[8], 'breaker', ARGV[9], 'reason', mreason,
    'before', before[1] or '', 'after', ms, 'before_reason', before_reason,
    'before_by', before_by, 'generation', string.format('%.0f', reply[5]))
end
reply[11] = before[1] or ''
reply[12] = entry
reply[13] = before_reason
reply[14] = before_by
return reply
"""
)

HOLD: Final = (
    _lua._PRELUDE
    + _SET
    + r"""
-- KEYS: state hash, window hash. ARGV: clock, channel; then to write a record back:
-- state, reason, actor, at, id. Answers the view and the record in force.
local skey, wkey = KEYS[1], KEYS[2]
if ARGV[3] and (ARGV[3] == 'forced_open' or ARGV[3] == 'disabled') then
  local newest = tonumber(redis.call('HGET', skey, 'manual_id'))
  if newest == nil or newest < tonumber(ARGV[7]) then
    return put(skey, wkey, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], 0)
  end
end
return view(skey, wkey)
"""
)

MANUAL_SHA: Final = _lua._sha(MANUAL)
HOLD_SHA: Final = _lua._sha(HOLD)


# ------------------------------------------------------------------ records and replies


def parse_record(data: object) -> Manual | None:
    """An operator's record (JSON text, or the ``manual`` member of a message), or None.

    Strict, as messages are: JSON only, every field of its type; anything
    else is no record.
    """
    doc = _lua.json_object(data, _RECORD_MAX) if isinstance(data, bytes | str) else data
    if not isinstance(doc, Mapping):
        return None
    state, reason, actor = doc.get("state"), doc.get("reason"), doc.get("actor")
    at, ident, generation = doc.get("at"), doc.get("id"), doc.get("generation")
    if state not in HELD or not all(isinstance(t, str) for t in (reason, actor)):
        return None
    if type(at) not in (int, float) or not math.isfinite(at):  # type: ignore[arg-type]
        return None
    if not all(type(v) is int and v >= 0 for v in (ident, generation)):
        return None
    return Manual(str(state), str(reason), str(actor), float(at), int(ident), int(generation))  # type: ignore[arg-type]


def record_of_message(data: bytes | str) -> Manual | None:
    """The record a published transition carries (an operator's change), or None."""
    doc = _lua.json_object(data, _RECORD_MAX)
    return None if doc is None else parse_record(doc.get("manual"))


def split_reply(reply: Sequence[object]) -> tuple[Sequence[object], object]:
    """A script's reply as (the 9 items ``_lua.parse_reply`` reads, the record).

    The record is ``None`` for a ``HOLD`` or ``MANUAL`` reply without one, and
    a sentinel (not a ``Manual`` nor None) for FLUSH and READ replies, which
    say nothing of records.
    """
    if len(reply) < 10:
        return reply, UNSAID
    raw = reply[9]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return reply[:9], parse_record(text) if text else None


# ------------------------------------------------------------------ the API


def apply_change(
    client: redis.Redis,
    namespace: str,
    name: str,
    action: str,
    *,
    reason: str = "",
    actor: str | None = None,
    create: bool = False,
) -> Change:
    """Put ``action`` in force for breaker ``name`` fleet-wide, and audit it.

    On one Redis, one script does both. On a Redis Cluster the breaker's keys
    and the audit stream are in two slots: the script puts the change in
    force on the breaker's slot, then the entry is appended (``XADD``) to the
    stream's, tried again through a failover of that slot for up to
    ``AUDIT_PATIENCE`` seconds. So an entry never names
    a change that was not made; a change can be in force without its entry
    (``UnauditedChangeError``, or a process that dies in between), and the
    breaker's state hash still names who, when and why.

    Args:
        client: a synchronous redis-py client, or a ``redis.RedisCluster``
            (``decode_responses`` either way).
        action: ``force-open``, ``disable`` or ``reset``.
        reason: why (printable, at most 200 characters; may be empty).
        actor: who (default ``user@host``).
        create: set it even when the fleet has no state of ``name``.

    Raises:
        UnknownBreakerError: no state of ``name`` in ``namespace`` (and not ``create``).
        ValueError: a bad name, action, reason or actor (nothing written).
        UnauditedChangeError: on a cluster, in force but not audited.
        redis.RedisError, OSError: Redis unreachable or refusing (nothing written).
    """
    from redis.cluster import RedisCluster
    from redis.exceptions import ResponseError

    from resilient.config import BreakerConfig

    keys = _lua.keys_for(namespace, name)
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    check_text("reason", reason)
    who = check_text("actor", default_actor() if actor is None else actor, empty=False)
    # After a reset the hash lives as long as an idle breaker's with the defaults;
    # the processes' next flush sets their own.
    ttl = _lua.ttl_ms(BreakerConfig(), 1.0, 10)
    args = ["", ACTIONS[action], reason, who, keys.channel, ttl, "1" if create else ""]
    args += [action, name, AUDIT_MAXLEN]
    cluster = isinstance(client, RedisCluster)
    script_keys = [keys.state, keys.window] + ([] if cluster else [audit_key(namespace)])
    try:
        reply = _evalsha(client, MANUAL, MANUAL_SHA, len(script_keys), *script_keys, *args)
    except ResponseError as exc:
        if "UNKNOWN breaker" not in str(exc):
            raise
        raise UnknownBreakerError(namespace, name, _near(client, namespace, name)) from None
    view = _lua.parse_reply(reply[:9])
    assert view is not None
    change = Change(name, action, _text(reply[10]) or None, view.state, reason, who, view.now,
                    view.generation, _text(reply[11]))  # fmt: skip
    if not cluster:
        return change
    entry = {"at": _text(reply[2]), "actor": who, "action": action, "breaker": name,
             "reason": reason, "before": change.before or "", "after": change.after,
             "before_reason": _text(reply[12]), "before_by": _text(reply[13]),
             "generation": str(change.generation)}  # fmt: skip
    try:
        audit_id = _append(client, audit_key(namespace), entry)
    except Exception as exc:  # whatever stopped it, the change is in force: say so
        raise UnauditedChangeError(change, exc) from exc
    return dataclasses.replace(change, audit_id=audit_id)


def _append(client: redis.Redis, key: str, entry: dict[str, str]) -> str:
    """``XADD`` ``entry`` to ``key``, tried again through a failover of its slot
    (for ``AUDIT_PATIENCE`` seconds); an error Redis answers is not tried again.

    A try whose answer was lost may have written it: the entry can then be
    there twice (the same generation).
    """
    from redis.exceptions import ClusterError, RedisClusterException
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    passing = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException)
    end = time.monotonic() + AUDIT_PATIENCE
    while True:
        try:
            ident = client.xadd(key, entry, maxlen=AUDIT_MAXLEN, approximate=True)  # type: ignore[arg-type]
            return _text(ident)
        except (*passing, OSError):
            if time.monotonic() >= end:
                raise
            time.sleep(AUDIT_RETRY_PAUSE)


async def control(
    redis_url: str,
    namespace: str,
    name: str,
    action: str,
    *,
    reason: str = "",
    actor: str | None = None,
    create: bool = False,
) -> Change:
    """``apply_change`` from async code, through a client of its own for ``redis_url``.

    What the dashboard's controls call; raises as ``apply_change`` does.
    """

    def run() -> Change:
        with connect(redis_url) as client:
            return apply_change(
                client, namespace, name, action, reason=reason, actor=actor, create=create
            )

    return await asyncio.to_thread(run)


def connect(redis_url: str, timeout: float = TIMEOUT, name: str | None = None) -> redis.Redis:
    """A synchronous client for a command: short timeouts, no retries, text replies.

    A ``redis+cluster://`` URL gives a ``redis.RedisCluster``: typed as
    ``redis.Redis`` here because the commands use only what both answer alike
    (SCAN over every master, SCRIPT LOAD on every master, EVALSHA and HMGET
    routed by slot, non-transactional pipelines, one stream key). ``name``:
    the connection's ``CLIENT SETNAME`` (a single node only).

    Raises:
        ValueError: a bad URL (``ConfigError`` for a bad cluster URL).
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from resilient.stores._redis_url import sync_client

    client: redis.Redis = sync_client(  # type: ignore[assignment]
        redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        **({} if name is None else {"client_name": name}),
    )
    return client


def read_audit(
    client: redis.Redis, namespace: str, *, since: float | None = None, limit: int = 50
) -> list[AuditEntry]:
    """The last ``limit`` entries of the audit stream (since ``since``, epoch), oldest first.

    Entries that do not have the documented fields are skipped.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    low = "-" if since is None else f"{max(0, math.floor(since * 1000))}-0"
    raw: list[Any] = client.xrevrange(audit_key(namespace), "+", low, count=limit) or []
    entries = []
    for ident, fields in reversed(raw):
        entry = _entry(_text(ident), {_text(k): _text(v) for k, v in (fields or {}).items()})
        if entry is not None and (since is None or entry.at >= since):
            entries.append(entry)
    return entries


def _entry(ident: str, f: dict[str, str]) -> AuditEntry | None:
    try:
        at, generation = float(f["at"]), int(f["generation"])
        return AuditEntry(ident, at, f["actor"], f["action"], f["breaker"], f["reason"],
                          f["before"] or None, f["after"], f.get("before_reason", ""),
                          f.get("before_by", ""), generation)  # fmt: skip
    except (KeyError, ValueError):
        return None


def _evalsha(client: redis.Redis, source: str, sha: str, *args: Any) -> list[Any]:
    from redis.exceptions import NoScriptError

    try:
        reply: list[Any] = client.evalsha(sha, *args)
    except NoScriptError:  # EVAL, not SCRIPT LOAD: that goes to every master of a cluster
        reply = client.eval(source, *args)
    return reply


def _near(client: redis.Redis, namespace: str, name: str) -> list[str]:
    """Names the fleet has that look like ``name`` (for a typo)."""
    import difflib

    pattern = _lua.state_pattern(namespace)
    found = {
        _lua.name_from_key(namespace, _text(key), "state")
        for key in client.scan_iter(match=pattern, count=1000)
    }
    names = [n for n in found if n is not None]
    return difflib.get_close_matches(name, names, n=3, cutoff=0.6)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
