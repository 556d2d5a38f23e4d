"""FileSource: breaker config from a YAML or JSON file, reloaded when the file changes.

One idea: the embedded default source. A hub with ``config=FileSource(path)``
loads the file at ``start()`` and a background task polls the file's
``(mtime, size, inode)`` every ``interval`` seconds; a change reloads it and
hands the hub the whole document again.

What a source promises the hub (the seam every source follows):

- ``start(hub)`` never raises because the backend is missing or broken: it
  says so once in the log and the hub runs on what it has;
- each change calls ``hub.apply_config(defaults, breakers, revision=,
  origin=)`` with the *whole* current view, and the hub validates each
  breaker (keeping the last good config of a bad one);
- a part the source cannot even read as a mapping goes to
  ``hub.reject_config(key, reason, revision=)`` and the source keeps that
  key's previous value in its view, so the breaker keeps its config.

A file that disappears or stops parsing keeps the last good view (as etcd
going away does); the next good version is applied. Runs in one event loop;
not thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from resilient.errors import ConfigError

__all__ = ["ConfigTarget", "FileSource", "ViewCache", "apply_values", "stop_task"]

log = logging.getLogger("resilient.config")

DEFAULT_INTERVAL = 1.0  # seconds between two looks at the file


class ConfigTarget(Protocol):
    """What a config source drives: the hub (see resilient.hub.Hub)."""

    def apply_config(
        self,
        defaults: Mapping[str, Any] | None,
        breakers: Mapping[str, Mapping[str, Any]],
        *,
        revision: int | None,
        origin: str,
    ) -> None: ...

    def reject_config(self, key: str, reason: str, *, revision: int | None) -> None: ...


def apply_values(
    hub: ConfigTarget,
    values: Mapping[str, Mapping[str, Any]],
    *,
    revision: int | None,
    origin: str,
) -> None:
    """Hand ``hub`` the whole view (relative keys to objects) of one source."""
    from resilient.config.document import ConfigDocument

    doc = ConfigDocument.from_values(values)
    hub.apply_config(doc.defaults, doc.breakers, revision=revision, origin=origin)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it; a cancellation of the caller still propagates."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


class FileSource:
    """Config from a file, reloaded when it changes.

    Args:
        path: a YAML file (``*.json`` files are read as JSON) of the shape
            ``{defaults: {...}, breakers: {name: {...}}}``.
        interval: seconds between two polls of the file's metadata.
        sleep: what the poll loop waits with (tests pass a fake one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self._path = Path(path)
        self._interval = interval
        self._sleep = sleep
        self._origin = f"file:{self._path}"
        # Mutable state, touched only from the event loop:
        self._hub: ConfigTarget | None = None
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        self._values: dict[str, dict[str, Any]] = {}  # last usable value of each key
        self._missing_reported = False
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def start(self, hub: ConfigTarget) -> None:
        """Load the file into ``hub`` (if it can be read) and start polling it."""
        self._hub = hub
        await self.reload()
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name=f"resilient-{self._origin}")

    async def close(self) -> None:
        """Stop polling; the hub keeps the config it has."""
        task, self._task = self._task, None
        await stop_task(task)

    async def reload(self, *, force: bool = False) -> bool:
        """Read the file if it changed since the last read (or ``force``); True if applied."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("FileSource.reload() before start()")
        signature = self._signature()
        if signature is None or (signature == self._seen and not force):
            return False
        self._seen = signature
        try:
            data = await asyncio.to_thread(self._read)
        except ConfigError as exc:
            hub.reject_config(str(self._path), str(exc), revision=None)
            return False
        self._apply(hub, data)
        return True

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            if not self._missing_reported:
                self._missing_reported = True
                what = "keeping the last config it gave" if self._seen else "running on defaults"
                log.warning(
                    "resilient: config file %s cannot be read (%s); %s, will load it when it "
                    "is back",
                    self._path, exc.strerror or exc, what,
                )  # fmt: skip
            return None
        if self._missing_reported:
            self._missing_reported = False
            log.info("resilient: config file %s is readable again", self._path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> Any:
        from resilient.config.document import read

        return read(self._path)

    def _apply(self, hub: ConfigTarget, data: Any) -> None:
        from resilient.config.document import ConfigDocument, key_for
        from resilient.config.schema import DocumentError

        try:
            doc, problems = ConfigDocument.from_data_lenient(data)
        except DocumentError as exc:
            hub.reject_config(str(self._path), str(exc), revision=None)
            return
        values = doc.to_values()
        for problem in problems:
            path = problem.path
            key = key_for(path[1]) if path[:1] == ("breakers",) and len(path) > 1 else path[0]
            hub.reject_config(f"{self._path}#{key}", problem.message, revision=None)
            if key in self._values:
                values[key] = self._values[key]  # keep what that key last gave
        self._values = values
        apply_values(hub, values, revision=None, origin=self._origin)

    async def _poll(self) -> None:
        while True:
            await self._sleep(self._interval)
            try:
                await self.reload()
            except Exception:
                log.exception("resilient: reloading %s failed; will try again", self._path)

    def __repr__(self) -> str:
        return f"FileSource({str(self._path)!r}, interval={self._interval!r})"


class ViewCache:
    """The last view a remote source applied, kept in a local file for the next start.

    A process that restarts while etcd is away starts on this instead of on
    bare defaults. The file is JSON ``{"origin", "revision", "values"}``,
    replaced atomically (a temporary file, then ``os.replace``); one written
    for another origin (another prefix) is ignored. A cache that cannot be
    written is reported once and otherwise ignored: it is a convenience, not
    a source of truth.
    """

    def __init__(self, path: str | os.PathLike[str], origin: str) -> None:
        self.path = Path(path)
        self._origin = origin
        self._write_failed = False

    def read(self) -> tuple[int, dict[str, dict[str, Any]]] | None:
        """``(revision, values)`` if the file holds a view of this origin, else None."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("resilient: config cache %s unreadable (%s); ignored", self.path, exc)
            return None
        values = data.get("values") if isinstance(data, dict) else None
        revision = data.get("revision") if isinstance(data, dict) else None
        if (
            not isinstance(values, dict)
            or not isinstance(revision, int)
            or data.get("origin") != self._origin
            or not all(isinstance(k, str) and isinstance(v, dict) for k, v in values.items())
        ):
            log.warning("resilient: config cache %s is not a view of %s; ignored", self.path,
                        self._origin)  # fmt: skip
            return None
        return revision, values

    def write(self, revision: int, values: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the file with this view (atomically); failures are logged once."""
        body = {"origin": self._origin, "revision": revision, "values": dict(values)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".resilient-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(body, fh, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                log.warning("resilient: cannot write the config cache %s (%s)", self.path, exc)
            return
        self._write_failed = False
