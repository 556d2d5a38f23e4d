"""The upstream of the demo and the benchmarks, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["AsyncUpstreamProcess"]

MODULE: Final = "resilient.testing.upstream"
GRPC_MODULE: Final = "resilient.testing.grpc_upstream"
#: The directory holding the ``resilient`` package, for the child's PYTHONPATH.
_SOURCE: Final = str(Path(__file__).resolve().parents[2])


class AsyncUpstreamProcess:
    """``python -m resilient.testing.upstream`` in a child process, steered over HTTP, async.

    The demo's and the benchmarks' twin of ``resilient.testing.UpstreamProcess``
    (blocking calls, mirakuru, for tests): this one needs only the standard
    library, so the demo runs without the test extras; its control calls run
    in a worker thread, so they neither block the event loop that drives the
    load nor wait on it. The child picks a free port
    and prints its URL. Use as ``async with``.
    """

    def __init__(self, *, seed: int = 1, start_timeout: float = 15.0, grpc: bool = False) -> None:
        self._seed = seed
        self._start_timeout = start_timeout
        # The gRPC twin (resilient.testing.grpc_upstream) is steered the same way.
        self._module = GRPC_MODULE if grpc else MODULE
        self._proc: asyncio.subprocess.Process | None = None
        self.url = ""  # the control routes (and the HTTP upstream)
        self.target: str | None = None  # the gRPC upstream's HOST:PORT, if it is one

    @property
    def base(self) -> str:
        """What the clients call: the HTTP URL, or ``grpc://HOST:PORT``."""
        return self.url if self.target is None else f"grpc://{self.target}"

    async def __aenter__(self) -> AsyncUpstreamProcess:
        source = _SOURCE
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self._module,
            "--port",
            "0",
            "--seed",
            str(self._seed),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert self._proc.stdout is not None
            line = await asyncio.wait_for(self._proc.stdout.readline(), self._start_timeout)
            found = re.search(rb"http://[0-9.]+:[0-9]+", line)
            if found is None:
                raise RuntimeError(f"the upstream did not start: {line!r}")
            self.url = found.group().decode()
            target = re.search(rb"grpc://([0-9.]+:[0-9]+)", line)
            if target is not None:
                self.target = target.group(1).decode()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    @property
    def pid(self) -> int:
        """The child's process id (a benchmark pins it to a CPU of its own)."""
        if self._proc is None:
            raise RuntimeError("the upstream is not running")
        return self._proc.pid

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def apply(self, behaviour: Mapping[str, Any]) -> None:
        """Install a behaviour (a JSON object of ``Behaviour`` fields)."""
        status, text = await asyncio.to_thread(self._call, "/_control", dict(behaviour))
        if status != 200:
            raise ValueError(f"the upstream refused the behaviour: {text}")

    async def hits(self) -> dict[str, int]:
        """Requests received so far, per path."""
        _, text = await asyncio.to_thread(self._call, "/_stats", None)
        data = json.loads(text)
        return {str(k): int(v) for k, v in data["by_path"].items()}

    def _call(self, path: str, body: object) -> tuple[int, str]:
        """One control call, blocking, in a worker thread.

        Not on the event loop: a client under test that saturates the loop
        (bare httpx's pool with hundreds of requests queued in an outage
        does) must not delay the scenario's phase changes and counts.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read().decode("utf-8", errors="replace")
