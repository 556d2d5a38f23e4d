"""Reading records back: from a JSONL file (and its rotated siblings) or a Redis stream.

One idea: a source yields the records it holds and, apart, the ones it
could not read, each with where it was (``file:line`` or the stream entry
id) and why: a truncated line, text that is not JSON, a field of the wrong
type. A bad record is reported and skipped; reading never stops on one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from resilient.shadow._record import CallRecord, WriteRecord, parse_record
from resilient.shadow._sinks import rotated_paths

__all__ = ["BadRecord", "Loaded", "read_jsonl", "read_redis"]

#: Rotated siblings looked for beside a JSONL file (``path.1`` ... ``path.9``).
MAX_ROTATED = 9


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be read: where (``file:line`` or entry id) and why."""

    where: str
    reason: str


@dataclass(slots=True)
class Loaded:
    """What a source held: the records read and the bad ones."""

    records: list[CallRecord | WriteRecord] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    def add(self, where: str, obj: object) -> None:
        try:
            self.records.append(parse_record(obj))
        except ValueError as exc:
            self.bad.append(BadRecord(where, str(exc)))


def read_jsonl(path: Path) -> Loaded:
    """Every record in ``path`` and its rotated siblings, oldest file first.

    Raises:
        FileNotFoundError: neither ``path`` nor a rotated sibling exists.
    """
    files = [p for p in reversed(rotated_paths(path, MAX_ROTATED)) if p.is_file()]
    if path.is_file():
        files.append(path)
    if not files:
        raise FileNotFoundError(f"no such file: {path}")
    loaded = Loaded()
    for file in files:
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    loaded.bad.append(BadRecord(where, "the line is not UTF-8"))
                    continue
                except ValueError as exc:
                    loaded.bad.append(BadRecord(where, f"not JSON (truncated?): {exc}"))
                    continue
                except RecursionError:
                    loaded.bad.append(BadRecord(where, "JSON nested too deep to read"))
                    continue
                loaded.add(where, obj)
    return loaded


def read_redis(url: str, stream: str, group: str) -> Loaded:
    """Every entry of ``stream`` new to the consumer group ``group`` (then acknowledged).

    Raises:
        redis.exceptions.RedisError: Redis unreachable or refusing (the CLI says so).
    """
    import redis

    from resilient.shadow._redis import read_stream

    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    loaded = Loaded()
    try:
        for entry_id, obj, why in read_stream(client, stream, group=group):
            where = f"{stream} entry {entry_id}"
            if why is not None:
                loaded.bad.append(BadRecord(where, why))
            else:
                loaded.add(where, obj)
    finally:
        client.close()
    return loaded
