"""What the commands that talk to a fleet's Redis share: the options and the client.

One idea: ``status``, ``breaker`` and ``audit`` reach Redis the same way, so
they say the same things about it. ``--redis`` and ``--namespace`` (with
``RESILIENT_REDIS`` and ``RESILIENT_NAMESPACE``), one client with short
timeouts and no retries, exit 1 for a bad URL or name, exit 3 when Redis is
unreachable or refuses the credentials, and the URL's password in no output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from resilient.cli._exit import EXIT_INVALID, EXIT_UNREACHABLE, fail

if TYPE_CHECKING:
    import redis

__all__ = ["JsonOption", "NamespaceOption", "RedisOption", "redis_client"]

RedisOption = Annotated[
    str,
    typer.Option(
        "--redis", envvar="RESILIENT_REDIS", show_envvar=True, help="Redis URL (rediss:// for TLS)."
    ),
]
NamespaceOption = Annotated[
    str, typer.Option(envvar="RESILIENT_NAMESPACE", show_envvar=True, help="The hubs' namespace.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


@contextlib.contextmanager
def redis_client(
    redis_url: str, namespace: str, names: Iterable[str] = ()
) -> Iterator[redis.Redis]:
    """A client for ``redis_url`` (closed after), the namespace and names checked first.

    Exits 1 for a bad URL, namespace or name, and 3 when a Redis command in
    the block fails to reach Redis (or Redis refuses it).
    """
    import redis as redis_py

    from resilient.stores import _control, _lua
    from resilient.stores.redis import redact_url, scrub, url_secrets

    where, secrets = redact_url(redis_url), url_secrets(redis_url)
    try:
        for name in [namespace, *names]:
            _lua.keys_for(namespace, name)
        client = _control.connect(redis_url)
    except ValueError as exc:
        fail(EXIT_INVALID, scrub(str(exc), secrets))
    try:
        with client:
            yield client
    except (redis_py.RedisError, redis_py.exceptions.RedisClusterException, OSError) as exc:
        message = scrub(f"{type(exc).__name__}: {exc}", secrets)
        fail(EXIT_UNREACHABLE, f"Redis at {where} unreachable or refusing: {message}")
