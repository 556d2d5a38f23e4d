"""Process presence: which processes share a namespace, and which run on local state.

One idea: every ``RedisStore`` keeps one entry, keyed by its process id, in
the namespace's hash ``resilient:{<namespace>}:processes``, rewritten by one
script call (``WRITE``) every ``EVERY`` seconds (never per breaker), so
``resilient status`` and the dashboard can say how many processes share each
breaker and which of them decide on local state. Docs: docs/formats.md
("Process presence").

What can be known, and what cannot: a process that cannot reach Redis cannot
write, so Redis only sees its entry age. An entry late by more than
``SILENT_AFTER`` refresh periods is *silent* (unreachable or dead: nobody can
tell which from Redis); one late by ``GONE_AFTER`` periods is gone, skipped by
readers and deleted by the next write of any process. A process that comes
back writes at once, with the outage it lived through (how long, when it
ended). A process that reaches the presence key but not some of its breakers
(a Redis Cluster node lost, a refused script) lists those breakers as
degraded.

An entry lists the first ``NAMES_MAX`` characters of its breaker names. A
process with more writes all of them, once, to a names record in the hash
``resilient:{<namespace>}:processes:names`` (same slot), and its entry names
the record (``names_id``, a digest of the names); the record is written again
only when the names change (at most every ``RECORD_EVERY`` seconds) or Redis
lost it, so the write every ``EVERY`` seconds stays one small command. The
script never writes an entry naming a record Redis does not hold (it answers
-1 and the store sends the record with its next write); readers check the
digest, and a repeated reader (``NamesCache``) reads a record only once.

Time is Redis ``TIME`` (the script stamps ``seen``), so process clocks never
matter. Entries are JSON, parsed strictly and bounded (``ENTRY_MAX``); a
malformed one is skipped, never evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from resilient.stores import _lua

if TYPE_CHECKING:
    import redis

__all__ = [
    "EVERY",
    "GONE_AFTER",
    "SILENT_AFTER",
    "WRITE",
    "WRITE_SHA",
    "NamesCache",
    "Process",
    "body",
    "counts",
    "expiry_key",
    "names_key",
    "names_record",
    "parse",
    "presence_key",
    "process_id",
    "with_names",
]

EVERY: Final = 2.0  # seconds between a process's writes (its sync_interval if longer)
SILENT_AFTER: Final = 1.5  # refresh periods late: silent (unreachable from Redis's side, or dead)
GONE_AFTER: Final = 3.0  # refresh periods late: gone (skipped, and deleted by the next write)
NAMES_MAX: Final = 8192  # characters of breaker names one entry lists (the rest: its record)
ENTRY_MAX: Final = 32768  # bytes of an entry a reader takes (a full one is under 18 KiB)
RECORD_MAX: Final = 4 << 20  # bytes of a names record (20,000 names of 200 characters)
RECORD_EVERY: Final = 10.0  # seconds between a process's records, unless Redis has none
CLEAN_MAX: Final = 100  # gone entries one write deletes at most
KEY_TTL: Final = 60.0  # seconds both keys outlive the last write of any process


def _version() -> str:
    """The installed distribution's version (``resilient`` itself imports the stores)."""
    try:
        return importlib.metadata.version("resilient")
    except importlib.metadata.PackageNotFoundError:
        return ""


VERSION: Final = _version()


def presence_key(namespace: str) -> str:
    """The namespace's presence hash (tag ``{<namespace>}``, as the audit stream's)."""
    return f"{_lua.PREFIX}:{{{namespace}}}:processes"


def names_key(namespace: str) -> str:
    """The hash of names records: every breaker name of a process whose entry lists only some."""
    return f"{_lua.PREFIX}:{{{namespace}}}:processes:names"


def expiry_key(namespace: str) -> str:
    """The sorted set of process ids by the Redis time their entry is gone at."""
    return f"{_lua.PREFIX}:{{{namespace}}}:processes:gone"


def process_id() -> str:
    """``host:pid:random``: unique per store, readable by an operator."""
    host = socket.gethostname()[:64] or "?"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


# KEYS: presence hash, expiry set, names hash. ARGV: process id, entry JSON (an object,
# no "seen"), seconds until the entry is gone, the entry's names_id ('' if none), the
# names record ('' if not sent). An entry never names a record Redis does not hold: with
# a names_id and no record, the previous entry must have had the same names_id (the two
# are only ever written together, here), else nothing is written and -1 is answered.
WRITE: Final = (
    r"""
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[3], ARGV[1])
elseif ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
else
  local prev = redis.call('HGET', KEYS[1], ARGV[1])
  if not prev or not string.find(prev, '"names_id":"' .. ARGV[4] .. '"', 1, true)
      or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
    return -1
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now),
  'LIMIT', 0, """
    + str(CLEAN_MAX)
    + r""")
for _, id in ipairs(gone) do
  if id ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('{"seen":%.6f,', now) .. string.sub(ARGV[2], 2))
redis.call('ZADD', KEYS[2], string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
local ttl = math.ceil((tonumber(ARGV[3]) + """
    + repr(KEY_TTL)
    + r""") * 1000)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return #gone
"""
)
WRITE_SHA: Final = _lua._sha(WRITE)


def body(
    *,
    every: float,
    names: Iterable[str],
    degraded: Iterable[str],
    outage: tuple[float, float] | None,
    version: str,
    names_id: str = "",
) -> str:
    """The entry's JSON, without ``seen`` (the script stamps it).

    ``outage``: the last outage this process lived through, (seconds it
    lasted, seconds since it ended), or None. ``names_id``: the id of the
    names record Redis holds for this process (``names_record``), or ``''``.
    """
    listed, more = _bounded(sorted(names))
    bad, bad_more = _bounded(sorted(degraded))
    doc: dict[str, object] = {
        "every": round(every, 3),
        "version": version,
        "breakers": len(listed) + more,
        "names": listed,
        "more": more,
        "names_id": names_id or None,
        "degraded": bad,
        "degraded_more": bad_more,
        "outage": None if outage is None else [round(outage[0], 3), round(outage[1], 3)],
    }
    return json.dumps(doc, separators=(",", ":"))


def names_record(names: Iterable[str]) -> tuple[str, str]:
    """(id, JSON) of the record of every name, for a process whose entry cannot list them
    all; ``('', '')`` when the entry can, or the record would pass ``RECORD_MAX``."""
    ordered = sorted(names)
    if not _bounded(ordered)[1]:
        return "", ""
    ident = names_digest(ordered)
    text = json.dumps({"id": ident, "names": ordered}, separators=(",", ":"))
    return ("", "") if len(text) > RECORD_MAX else (ident, text)


def names_digest(ordered: list[str]) -> str:
    """A record's id: 16 hex digits of a BLAKE2b of the sorted names, one a line."""
    return hashlib.blake2b("\n".join(ordered).encode(), digest_size=8).hexdigest()


def _bounded(names: list[str]) -> tuple[list[str], int]:
    """The first names that fit in ``NAMES_MAX`` characters, and how many did not."""
    size = 0
    for i, name in enumerate(names):
        size += len(name) + 3
        if size > NAMES_MAX:
            return names[:i], len(names) - i
    return names, 0


@dataclass(frozen=True, slots=True)
class Process:
    """One process's entry as a reader sees it at Redis time ``now``."""

    id: str
    seen: float  # Redis time of its last write
    age: float  # seconds since (Redis time)
    every: float
    version: str
    breakers: int
    names: frozenset[str]
    complete: bool  # every breaker of it is in ``names``
    degraded: frozenset[str]  # its breakers on local state, as it last said
    degraded_count: int
    outage: tuple[float, float] | None  # (seconds, Redis time it ended) of its last outage
    names_id: str = ""  # the id of its names record, when its entry lists only some names

    @property
    def silent(self) -> bool:
        """Late past ``SILENT_AFTER`` periods: cannot reach Redis, or dead."""
        return self.age > SILENT_AFTER * self.every

    @property
    def status(self) -> str:
        if self.silent:
            return "silent"
        return "degraded" if self.degraded_count else "ok"

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "status": self.status,
            "seen": self.seen,
            "age": self.age,
            "every": self.every,
            "version": self.version,
            "breakers": self.breakers,
            "degraded": sorted(self.degraded),
            "degraded_count": self.degraded_count,
            "outage_seconds": None if self.outage is None else self.outage[0],
            "outage_ended_at": None if self.outage is None else self.outage[1],
        }


def parse(
    fields: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[Any, Any], now: float
) -> list[Process]:
    """The live entries of a presence hash (HGETALL) at Redis time ``now``, by id.

    Gone and malformed entries are skipped.
    """
    found = []
    for key, value in fields.items():
        process = _entry(_text(key), value, now)
        if process is not None:
            found.append(process)
    found.sort(key=lambda p: p.id)
    return found


def _entry(ident: str, value: object, now: float) -> Process | None:
    if not isinstance(value, bytes | str) or len(value) > ENTRY_MAX or len(ident) > 200:
        return None
    try:
        doc = json.loads(value)
        seen, every = float(doc["seen"]), float(doc["every"])
        names, degraded = doc["names"], doc["degraded"]
        more, bad_more, breakers = int(doc["more"]), int(doc["degraded_more"]), int(doc["breakers"])
        outage = doc.get("outage")
        version = str(doc.get("version", ""))[:40]
        names_id = doc.get("names_id") or ""
    except (ValueError, TypeError, KeyError):
        return None
    if not (
        math.isfinite(seen)
        and 0 < every < math.inf
        and isinstance(names, list)
        and isinstance(degraded, list)
        and all(isinstance(n, str) for n in (*names, *degraded))
        and isinstance(names_id, str)
        and len(names_id) <= 32
    ):
        return None
    age = max(0.0, now - seen)
    if age > GONE_AFTER * every:
        return None
    ended = None
    if isinstance(outage, list) and len(outage) == 2:
        try:
            ended = (float(outage[0]), seen - float(outage[1]))
        except (TypeError, ValueError):
            ended = None
    return Process(
        id=ident,
        seen=seen,
        age=age,
        every=every,
        version=version,
        breakers=breakers,
        names=frozenset(names),
        complete=more == 0,
        degraded=frozenset(degraded),
        degraded_count=len(degraded) + bad_more,
        outage=ended,
        names_id=names_id if more else "",
    )


class NamesCache:
    """The names records a repeated reader has already read, by process id.

    Not thread-safe: one per reader (``status --watch``, a dashboard's monitor).
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, frozenset[str]]] = {}  # id -> (names_id, names)


def with_names(
    client: redis.Redis,
    namespace: str,
    processes: list[Process],
    cache: NamesCache | None = None,
) -> list[Process]:
    """``processes`` with every breaker name of those whose entry lists only some.

    Reads (one ``HMGET``) only the records not in ``cache``. A record that is
    missing, malformed or not the one its entry names leaves that process as
    it was (``complete`` false: counted only in the rows of the names listed).
    """
    known = {} if cache is None else cache._known
    wanted = [p for p in processes if p.names_id and known.get(p.id, ("",))[0] != p.names_id]
    if wanted:
        raw = client.hmget(names_key(namespace), [p.id for p in wanted])
        for p, text in zip(wanted, raw, strict=True):
            names = _record(text, p.names_id)
            if names is not None:
                known[p.id] = (p.names_id, names)
    found = []
    for p in processes:
        entry = known.get(p.id)
        if p.names_id and entry is not None and entry[0] == p.names_id:
            p = dataclasses.replace(p, names=p.names | entry[1], complete=True)
        found.append(p)
    if cache is not None:  # forget the processes gone, and records replaced
        live = {p.id: p.names_id for p in processes}
        for ident in [i for i, (n, _) in known.items() if live.get(i) != n]:
            del known[ident]
    return found


def _record(text: object, names_id: str) -> frozenset[str] | None:
    """The names of a record (JSON, at most ``RECORD_MAX`` bytes) whose id is ``names_id``
    and whose names hash to it, or None."""
    if not isinstance(text, bytes | str) or len(text) > RECORD_MAX:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("id") != names_id:
        return None
    names = doc.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(names) if names_digest(names) == names_id else None


def counts(processes: Iterable[Process], name: str) -> tuple[int, int]:
    """(processes listing ``name``, those of them on local state for it: degraded or silent)."""
    sharing = degraded = 0
    for p in processes:
        if name in p.names:
            sharing += 1
            if p.silent or name in p.degraded:
                degraded += 1
    return sharing, degraded


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
