"""Real Redis and etcd servers on free loopback ports, for tests and benchmarks.

One idea: a server process the test owns outright. Each server gets a fresh
temporary directory (data, log, config), free ``127.0.0.1`` ports chosen by
``port_for``, and a mirakuru executor that waits for real readiness (a TCP
accept for Redis, ``/health`` answering 200 for etcd) instead of sleeping.

Fault tests drive the lifecycle: ``kill()`` is a SIGKILL (a crash),
``stop()`` is graceful, ``restart()`` comes back on the same ports, with the
data (Redis AOF, etcd data dir) or, for Redis, wiped (``keep_data=False``).

Invariants:
- Only processes this object started are signalled: mirakuru runs each server
  in its own session and signals that process group and the processes it
  marked with its own per-executor token, never anything found by name.
- A password never reaches a command line, a repr or an error message: it is
  written to a ``0600`` config file in the server's own directory.
- ``stop()`` keeps the directory so ``start()`` can follow; ``close()`` (and
  leaving the ``with`` block) stops the server and deletes the directory.

Not thread-safe: one test (or benchmark) drives one server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import quote

from resilient.testing._binaries import MissingBinaryError, which

if TYPE_CHECKING:
    import redis
    from mirakuru import Executor

    from resilient.testing.certs import Certificates

__all__ = [
    "EtcdServer",
    "MissingBinaryError",
    "RedisServer",
    "ServerStartError",
]

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds: a backstop for a loaded CI box, not an expected wait
POLL_INTERVAL = 0.02  # seconds between readiness checks
PORT_ATTEMPTS = 4  # fresh ports to try when another process grabs ours first
LOG_TAIL = 2000  # characters of the server log quoted in a start error


class ServerStartError(RuntimeError):
    """The server process exited, never became ready, or found its port taken."""

    def __init__(self, message: str, *, port_conflict: bool = False) -> None:
        self.port_conflict = port_conflict
        super().__init__(message)


def _free_port(exclude: set[int]) -> int:
    import port_for

    port: int = port_for.select_random(exclude_ports=exclude)
    return port


class _Managed:
    """``with it:`` starts it (closing it again if the start fails) and closes it after.

    The lifecycle every fixture here shares: a server, a cluster, a browser.
    """

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(_Managed):
    """A server process in its own temporary directory (the shared lifecycle).

    Subclasses build the mirakuru executor in ``_executor`` (and pick more than
    one port in ``_pick_ports`` if they need to); everything about starting,
    stopping, crashing and cleaning up lives here once.
    """

    _name: ClassVar[str]

    def __init__(self, start_timeout: float) -> None:
        self._start_timeout = start_timeout
        self._root = Path(tempfile.mkdtemp(prefix=f"resilient-{self._name}-"))
        self._log_path = self._root / "server.log"
        self._log: IO[str] | None = None
        self._proc: Executor | None = None
        self._ports_fixed = False  # after the first start, restarts reuse the ports
        self.port = 0  # the (client) port, chosen at the first start

    # -- what subclasses provide ------------------------------------------------

    def _pick_ports(self, exclude: set[int]) -> set[int]:
        """Choose free ports (not in ``exclude``) and return the ones taken."""
        self.port = _free_port(exclude)
        return {self.port}

    def _executor(self, log: IO[str]) -> Executor:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        proc = self._proc
        if proc is None or proc.process is None or not proc.running():
            return None
        return int(proc.process.pid)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> Self:
        """Start the server and wait until it is ready; a no-op if it runs.

        The first start retries on fresh ports if another process took the
        chosen one in the meantime; later starts keep their ports.

        Raises:
            ServerStartError: the process exited, never became ready, or its
                port is taken; the message quotes the server's log.
        """
        if self.running:
            return self
        tried: set[int] = set()
        attempts = 1 if self._ports_fixed else PORT_ATTEMPTS
        for attempt in range(attempts):
            if not self._ports_fixed:
                tried |= self._pick_ports(tried)
            try:
                self._spawn()
            except ServerStartError as exc:
                if attempt + 1 == attempts or not exc.port_conflict:
                    raise
                continue
            self._ports_fixed = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired

        self._close_log()
        self._log = self._log_path.open("a", encoding="utf-8")
        log_start = self._log.tell()
        proc = self._executor(self._log)
        try:
            proc.start()
        except AlreadyRunning:
            self._close_log()
            raise ServerStartError(
                f"{self._name}: another process already listens on its port", port_conflict=True
            ) from None
        except (ProcessExitedWithError, TimeoutExpired) as exc:
            proc.kill()
            self._close_log()
            what = "exited" if isinstance(exc, ProcessExitedWithError) else "was not ready"
            tail = self._log_tail(log_start)
            raise ServerStartError(
                f"{self._name} {what} (log {self._log_path}):\n{tail}",
                port_conflict="address already in use" in tail.lower(),
            ) from None
        self._proc = proc

    def _log_tail(self, since: int) -> str:
        try:
            with self._log_path.open("rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then wait); the data stays for ``start()``."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; the data on disk stays."""
        if self._proc is not None:
            self._proc.kill(sig=signal.SIGKILL)
            self._proc = None
        self._close_log()

    def close(self) -> None:
        """Stop the server and delete its directory (data, config, log)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _executor_options(self, log: IO[str]) -> dict[str, Any]:
        return {
            "timeout": self._start_timeout,
            "sleep": POLL_INTERVAL,
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": subprocess.STDOUT,
            "cwd": str(self._root),
        }


class RedisServer(_Server):
    """A ``redis-server`` on a free loopback port, with an append-only file.

    Args:
        password: set ``requirepass``; it appears in ``url`` (for clients) and
            nowhere else.
        tls: certificates (``resilient.testing.certs.make_certificates``): the
            server then speaks TLS only, on ``port``, and ``url`` is
            ``rediss://``; clients are not asked for a certificate.
        binary: the executable to run (looked up on PATH).
        start_timeout: seconds to wait for readiness (and for a graceful stop).
        persist: keep the append-only file (the default); False runs with
            ``--appendonly no``: no persistence at all, so every restart
            comes back empty, as a cache-only Redis does.

    ``--save ""`` turns RDB snapshots off and ``--appendonly yes`` logs every
    write, so ``restart(keep_data=True)`` finds the keys even after ``kill()``:
    Redis writes the AOF before it answers, and a killed process loses nothing
    the kernel already has.
    """

    _name = "redis"

    def __init__(
        self,
        password: str | None = None,
        *,
        tls: Certificates | None = None,
        binary: str = "redis-server",
        start_timeout: float = START_TIMEOUT,
        persist: bool = True,
    ) -> None:
        self._binary = which(binary, "install Redis (e.g. apt-get install redis-server)")
        self._persist = persist
        super().__init__(start_timeout)
        self._password = password
        self._tls = tls
        self._data = self._root / "data"
        self._data.mkdir(mode=0o700)
        self._conf = self._root / "redis.conf"
        self._write_conf()

    def _write_conf(self) -> None:
        # Every byte of the password as \xHH inside double quotes: Redis's config
        # parser reads that back exactly, whatever the password holds.
        lines = []
        if self._password is not None:
            escaped = "".join(f"\\x{b:02x}" for b in self._password.encode())
            lines.append(f'requirepass "{escaped}"\n')
        fd = os.open(self._conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.writelines(lines)

    @property
    def url(self) -> str:
        """``redis[s]://[:password@]127.0.0.1:PORT/0`` (the password URL-quoted)."""
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        scheme = "redis" if self._tls is None else "rediss"
        return f"{scheme}://{auth}{HOST}:{self.port}/0"

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def tls(self) -> Certificates | None:
        return self._tls

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import TCPExecutor

        if self._tls is None:
            ports = ["--port", str(self.port)]
        else:
            t = self._tls
            ports = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(t.server_cert),
                "--tls-key-file", str(t.server_key),
                "--tls-ca-cert-file", str(t.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        command = [
            self._binary,
            str(self._conf),
            *ports,
            "--bind", HOST,
            "--dir", str(self._data),
            "--save", "",
            "--appendonly", "yes" if self._persist else "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        return TCPExecutor(command, host=HOST, port=self.port, **self._executor_options(log))

    def restart(self, keep_data: bool = True) -> Self:
        """Stop (if running) and start again on the same port.

        With ``keep_data=False`` the data directory is wiped first: the server
        comes back empty, as a replaced instance would.
        """
        self.stop()
        if not keep_data:
            shutil.rmtree(self._data)
            self._data.mkdir(mode=0o700)
        return self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous redis-py client for this server (the caller closes it)."""
        import redis as redis_py

        if self._tls is not None:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self._tls.ca), **kwargs}
        client: redis.Redis = redis_py.Redis(
            host=HOST, port=self.port, password=self._password, **kwargs
        )
        return client

    def command_stats(self) -> dict[str, dict[str, float]]:
        """``INFO commandstats`` as ``{"get": {"calls": 3, "usec": 9, ...}, ...}``."""
        with self.client() as client:
            info: dict[str, Any] = client.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): {k: float(v) for k, v in fields.items()}
            for key, fields in info.items()
        }

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero the counters ``command_stats()`` reads."""
        with self.client() as client:
            client.config_resetstat()

    def __repr__(self) -> str:
        auth = "" if self._password is None else ", password='***'"
        tls = "" if self._tls is None else ", tls=True"
        return f"RedisServer(port={self.port}{auth}{tls}, running={self.running})"


class EtcdServer(_Server):
    """A single-member ``etcd`` (v3 API) on free loopback ports.

    Args:
        binary: the ``etcd`` executable (looked up on PATH).
        etcdctl: the ``etcdctl`` executable, used by ``etcdctl()`` only.
        start_timeout: seconds to wait for ``/health`` (and for a stop).

    Ready means ``GET /health`` answers 200, which etcd does once the member
    has elected itself leader. ``restart()`` reuses the ports and data dir, so
    keys and revisions survive it. Heartbeat and election timeouts are a tenth
    of etcd's defaults: a lone member has no one to lose an election to, and a
    restart is ready in well under a second instead of about two.
    """

    _name = "etcd"

    def __init__(
        self,
        *,
        binary: str = "etcd",
        etcdctl: str = "etcdctl",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        hint = "install etcd (e.g. apt-get install etcd-server etcd-client)"
        self._binary = which(binary, hint)
        self._etcdctl_name = etcdctl
        super().__init__(start_timeout)
        self.peer_port = 0
        self._data = self._root / "data"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self._data

    def _pick_ports(self, exclude: set[int]) -> set[int]:
        self.port = _free_port(exclude)
        self.peer_port = _free_port(exclude | {self.port})
        return {self.port, self.peer_port}

    def _executor(self, log: IO[str]) -> Executor:
        from mirakuru import HTTPExecutor

        peer = f"http://{HOST}:{self.peer_port}"
        command = [
            self._binary,
            "--name", "t",
            "--data-dir", str(self._data),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            "--heartbeat-interval", "25",
            "--election-timeout", "250",
        ]  # fmt: skip
        return HTTPExecutor(
            command,
            url=f"{self.endpoint}/health",
            method="GET",
            status=200,
            request_timeout=2.0,
            **self._executor_options(log),
        )

    def restart(self) -> Self:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        return self.start()

    def etcdctl(self, *args: str, timeout: float = 15.0) -> str:
        """Run ``etcdctl`` (API v3) against this server and return its stdout.

        Raises:
            RuntimeError: etcdctl exited non-zero (its stderr is quoted).
        """
        binary = which(self._etcdctl_name, "install etcdctl (e.g. apt-get install etcd-client)")
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(
            [binary, "--endpoints", self.endpoint, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"etcdctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def __repr__(self) -> str:
        return f"EtcdServer(endpoint={self.endpoint!r}, running={self.running})"
