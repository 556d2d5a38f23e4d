"""Where records go: the ``Sink`` protocol and ``JsonlSink``, the embedded default.

One idea: a sink takes one record (a JSON object) at a time and keeps it.
Sinks are called from the shadow reporter's thread only, never on a
caller's path, so a slow disk or Redis costs callers nothing; ``write`` may
block, and should not raise (a sink that fails counts its failures).

``JsonlSink(path)`` appends one JSON line per record and rotates by size:
when the file passes ``max_bytes`` it becomes ``path.1`` (``path.1`` becomes
``path.2``, ..., up to ``backups``) and a new file starts. The default path
is ``$RESILIENT_SHADOW_DIR/shadow.jsonl``, or ``./.resilient/shadow.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final, Protocol, runtime_checkable

from resilient.shadow._normalize import JSONValue

__all__ = ["DEFAULT_FILE", "JsonlSink", "Sink", "default_path", "default_sink", "rotated_paths"]

log = logging.getLogger("resilient.shadow")

DEFAULT_FILE: Final = "shadow.jsonl"
ENV_DIR: Final = "RESILIENT_SHADOW_DIR"


@runtime_checkable
class Sink(Protocol):
    """Anything that keeps records: ``write(record)`` and ``close()``."""

    def write(self, record: Mapping[str, JSONValue]) -> None: ...

    def close(self) -> None: ...


def default_path() -> Path:
    """``$RESILIENT_SHADOW_DIR/shadow.jsonl``, or ``./.resilient/shadow.jsonl``."""
    return Path(os.environ.get(ENV_DIR) or ".resilient") / DEFAULT_FILE


class JsonlSink:
    """Records as JSON lines in ``path``, rotated by size.

    Args:
        path: the file (default ``default_path()``); its folder is created.
        max_bytes: the size past which the file is rotated (>= 1024).
        backups: how many rotated files to keep (``path.1`` is the newest).

    Raises:
        ValueError: ``max_bytes`` or ``backups`` out of range.

    Thread-safe: one lock around each line, so lines never interleave.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, max_bytes: int = 64 << 20,
        backups: int = 3,
    ) -> None:  # fmt: skip
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1024:
            raise ValueError(f"max_bytes must be an integer >= 1024, got {max_bytes!r}")
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 0:
            raise ValueError(f"backups must be an integer >= 0, got {backups!r}")
        self.path = Path(path) if path is not None else default_path()
        self.max_bytes = max_bytes
        self.backups = backups
        self.failures = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._size = 0

    def write(self, record: Mapping[str, JSONValue]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            try:
                if self._file is None:
                    self._open()
                assert self._file is not None
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                    assert self._file is not None
                self._file.write(line)
                self._file.flush()
                self._size += len(line.encode("utf-8"))
            except OSError as exc:
                self.failures += 1
                if self.failures == 1:
                    log.warning("shadow records cannot be written to %s: %s", self.path, exc)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open)
        self._size = self._file.tell()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            paths = rotated_paths(self.path, self.backups)
            for older, newer in reversed(list(zip(paths[1:], paths[:-1], strict=True))):
                if newer.exists():
                    os.replace(newer, older)
            os.replace(self.path, paths[0])
        self._open()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r}, max_bytes={self.max_bytes}, backups={self.backups})"


def rotated_paths(path: Path, backups: int) -> list[Path]:
    """``path.1`` ... ``path.<backups>``, newest first."""
    return [path.with_name(f"{path.name}.{i}") for i in range(1, backups + 1)]


_default: JsonlSink | None = None
_default_lock = threading.Lock()


def default_sink() -> JsonlSink:
    """The process's shared ``JsonlSink`` at ``default_path()`` (made on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default.path != default_path():
            _default = JsonlSink()
        return _default
