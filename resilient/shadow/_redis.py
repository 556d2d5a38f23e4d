"""The Redis stream: ``RedisStreamSink`` writes records to it, ``read_stream`` reads them back.

One idea: one stream entry per record, its only field ``record`` holding the
record's JSON (so types survive; nothing is ever unpickled or evaluated).
Writes are ``XADD <stream> MAXLEN ~ <maxlen> * record <json>``: Redis trims
the stream to about ``maxlen`` entries, whole macro nodes at a time, which
costs almost nothing. Reads go through a consumer group (created at the
stream's start if missing), so several reconcilers can share the work and
each entry is read once per group; entries read are acknowledged.

This module alone imports ``redis`` for the shadow package (extra
``resilient[redis]``). The sink runs on the reporter's thread with the sync
client; Redis being away costs the caller nothing and loses those records
(counted in ``failures``, logged once per outage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

import redis
from redis.exceptions import RedisError, ResponseError

from resilient.shadow._normalize import JSONValue

__all__ = ["DEFAULT_GROUP", "DEFAULT_STREAM", "FIELD", "RedisStreamSink", "read_stream"]

log = logging.getLogger("resilient.shadow")

DEFAULT_STREAM: Final = "resilient:shadow"
DEFAULT_GROUP: Final = "resilient-reconcile"
FIELD: Final = "record"


class RedisStreamSink:
    """Records appended to a Redis stream, trimmed to about ``maxlen`` entries.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://``.
        stream: the stream's key.
        maxlen: the approximate length kept (``MAXLEN ~``), >= 1.
        client_options: more keyword arguments for ``redis.Redis.from_url``.

    Raises:
        ValueError: ``maxlen`` out of range, or ``url`` not a redis URL.
    """

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_STREAM,
        maxlen: int = 100_000,
        **client_options: Any,
    ) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be an integer >= 1, got {maxlen!r}")
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        self.stream = stream
        self.maxlen = maxlen
        self.failures = 0
        self._down = False
        options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, **client_options}
        self._client = redis.Redis.from_url(url, **options)

    def write(self, record: Mapping[str, JSONValue]) -> None:
        payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        try:
            self._client.xadd(self.stream, {FIELD: payload}, maxlen=self.maxlen, approximate=True)
        except RedisError as exc:
            self.failures += 1
            if not self._down:
                self._down = True
                log.warning(
                    "shadow records cannot reach Redis (%s); dropping them", type(exc).__name__
                )
            return
        self._down = False

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:  # no URL: it may hold a password
        return f"<RedisStreamSink stream={self.stream!r} maxlen={self.maxlen}>"


def read_stream(
    client: redis.Redis,
    stream: str = DEFAULT_STREAM,
    *,
    group: str = DEFAULT_GROUP,
    consumer: str = "reconcile",
    batch: int = 1000,
) -> Iterator[tuple[str, object, str | None]]:
    """Every entry new to ``group``: ``(entry id, the decoded JSON, None)`` or ``(id, None, why)``.

    The group is created at the stream's start if it does not exist. Entries
    are acknowledged once yielded. An entry that holds no JSON comes back
    with a sentence saying what is wrong, so the reader can report it by its
    id and go on.
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    while True:
        answer: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=batch)
        entries = _entries(answer)
        if not entries:
            return
        ids = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            ids.append(entry_id)
            yield (entry_id, *_decode(fields))
        client.xack(stream, group, *ids)


def _entries(answer: Any) -> list[tuple[Any, Any]]:
    """The entries of one stream's XREADGROUP answer (RESP2: a list; RESP3: a dict)."""
    if not answer:
        return []
    if isinstance(answer, dict):
        found = next(iter(answer.values()))
        return list(found[0] if found and isinstance(found[0], list) else found)
    return list(answer[0][1])


def _decode(fields: Mapping[Any, Any] | None) -> tuple[object, str | None]:
    if not fields:
        return None, "the entry has no fields (trimmed, or not a shadow record)"
    value = fields.get(FIELD.encode(), fields.get(FIELD))
    if value is None:
        return None, f"the entry has no {FIELD!r} field"
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return json.loads(text), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"the {FIELD!r} field is not JSON: {exc}"
    except RecursionError:
        return None, f"the {FIELD!r} field is JSON nested too deep to read"
