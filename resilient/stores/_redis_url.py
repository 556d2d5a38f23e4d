"""Redis Cluster URLs: ``redis+cluster://host:port,host:port`` parsed once, clients built from it.

One idea: every place that takes a Redis URL (``RedisStore``, ``--redis``,
``RESILIENT_REDIS``) accepts a cluster the same way, and a bad URL is refused
before anything connects, with a ``ConfigError`` that names what is wrong
and never quotes the password.

The form, after redis-py's single-server URLs::

    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0][?option=value...]
    rediss+cluster://...   (TLS to every node)

The hosts are startup nodes: any few of the cluster will do, the client
learns the rest (and every later change) from ``CLUSTER SLOTS``. The port
defaults to 6379; a cluster has only database 0. Query options are
redis-py's (``ssl_ca_certs``, ``socket_keepalive``, ...), cast as redis-py
casts them.

On a cluster the store listens with plain ``PSUBSCRIBE`` on one node
(``subscriber``), any node: a ``PUBLISH`` reaches every node of the cluster
over its bus, replicas included. Sharded pub/sub (``SSUBSCRIBE``, Redis 7)
would keep each message on its shard, but it has no pattern form: the store
would need one subscription per breaker, grouped by the node serving its
slot and moved on every failover, for transitions that are rare.

redis-py is imported when a client is built, never at import.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from resilient.errors import ConfigError

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterURL",
    "async_client",
    "is_cluster_url",
    "parse_cluster_url",
    "redact_cluster_url",
    "subscribed_node",
    "subscriber",
    "sync_client",
]

CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT: Final = 6379
# How soon after a failed command the cluster client may ask for the slot map
# again (redis-py's default is 1 s): a promoted replica is found within this
# of the first command that fails after the promotion.
TOPOLOGY_REFRESH: Final = 0.1


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL; ``repr()`` never shows the password."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``redis+cluster://h1:p1,h2:p2`` with no user info nor query."""
        scheme = CLUSTER_SCHEMES[self.tls]
        return f"{scheme}://" + ",".join(_address(h, p) for h, p in self.nodes)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def redact_cluster_url(url: str) -> str:
    """The URL's scheme and hosts, user info and query left out, even when it does not parse."""
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc.rpartition("@")[2]
    auth = "***@" if "@" in netloc else ""
    return f"{scheme}://{auth}{hosts}"


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    Raises:
        ConfigError: not a cluster scheme, no host, a bad host or port, a
            database other than 0, or an option redis-py cannot read; the
            message quotes the URL without its password.
    """
    shown = redact_cluster_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ConfigError(
            f"a Redis Cluster URL starts with redis+cluster:// or rediss+cluster://, got {shown!r}",
            field="url",
        )
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if slash and path not in ("", "0"):
        raise ConfigError(
            f"a Redis Cluster has only database 0, got /{path} in {shown!r}", field="url"
        )
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_node(item, shown) for item in hosts.split(",") if item.strip())
    if not nodes:
        raise ConfigError(f"no host:port in the Redis Cluster URL {shown!r}", field="url")
    options: dict[str, Any] = {}
    if query:
        from redis.connection import parse_url

        host, port = nodes[0]
        try:
            parsed = parse_url(f"redis://{_address(host, port)}/0?{query}")  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(f"bad option in {shown!r}: {exc}", field="url") from None
        for key in ("host", "port", "db", "connection_class", "username", "password"):
            parsed.pop(key, None)
        options = parsed
    return ClusterURL(nodes, scheme.lower() == "rediss+cluster", username, password, options)


def _node(item: str, shown: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"bad host {item!r} in {shown!r}", field="url")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
        if ":" in port_text:
            raise ConfigError(
                f"bad host {item!r} in {shown!r} (write an IPv6 address as [addr]:port)",
                field="url",
            )
    if not host:
        raise ConfigError(f"a node with no host ({item!r}) in {shown!r}", field="url")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port {port_text!r} for {host} in {shown!r}", field="url")
    return host, int(port_text)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cluster_options(parsed: ClusterURL, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for either RedisCluster: the URL's, then the caller's."""
    found: dict[str, Any] = {"topology_refresh_min_interval": TOPOLOGY_REFRESH}
    if parsed.tls:
        found["ssl"] = True
    if parsed.username is not None:
        found["username"] = parsed.username
    if parsed.password is not None:
        found["password"] = parsed.password
    return {**found, **parsed.options, **options}


def async_client(url: str, **options: Any) -> aioredis.Redis | AsyncRedisCluster:
    """A ``redis.asyncio`` client for ``url``: a ``RedisCluster`` for a cluster URL.

    Raises:
        ConfigError: a bad cluster URL (see ``parse_cluster_url``).
        ValueError: redis-py refused a plain URL.
    """
    import redis.asyncio as aioredis_mod

    if not is_cluster_url(url):
        return aioredis_mod.Redis.from_url(url, **options)
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    parsed = parse_cluster_url(url)
    starts = [ClusterNode(host, port) for host, port in parsed.nodes]
    return RedisCluster(startup_nodes=starts, **_cluster_options(parsed, options))


def sync_client(url: str, **options: Any) -> redis.Redis | redis.RedisCluster:
    """The same as ``async_client``, with redis-py's synchronous clients."""
    import redis as redis_mod

    if not is_cluster_url(url):
        return redis_mod.Redis.from_url(url, **options)
    from redis.cluster import ClusterNode

    parsed = parse_cluster_url(url)
    options = dict(options)
    options.pop("client_name", None)  # the sync cluster client takes none
    starts = [ClusterNode(host, port) for host, port in parsed.nodes]  # type: ignore[no-untyped-call]
    return redis_mod.RedisCluster(startup_nodes=starts, **_cluster_options(parsed, options))


def subscriber(client: aioredis.Redis | AsyncRedisCluster, *, avoid: str | None = None) -> PubSub:
    """A pub/sub for ``client``; on a cluster, on a random node other than ``avoid``.

    Left to itself redis-py's cluster pub/sub picks the node serving the
    pattern's slot: every store of a namespace would listen on one master,
    and all of them go deaf together when it dies.
    """
    from redis.asyncio.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        return client.pubsub(ignore_subscribe_messages=True)
    nodes = client.get_nodes()
    others = [n for n in nodes if n.name != avoid] or nodes
    return client.pubsub(node=random.choice(others), ignore_subscribe_messages=True)


def subscribed_node(pubsub: PubSub | None) -> str | None:
    """The cluster node (``host:port``) a pub/sub made by ``subscriber`` listens on, if any."""
    from redis.asyncio.cluster import ClusterPubSub

    if isinstance(pubsub, ClusterPubSub):
        node = pubsub.get_pubsub_node()
        return None if node is None else str(node.name)
    return None
