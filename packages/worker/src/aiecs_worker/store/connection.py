"""How aiecs connects to Redis: the one factory of every client, synchronous and asyncio.

A Redis URL is either a plain ``redis://``, ``rediss://`` or ``unix://`` URL, or
Celery's Sentinel form: one ``sentinel://`` URL per sentinel, joined by ``;``
(``sentinel://:password@host1:26379/0;sentinel://host2:26379``). With the Sentinel form,
a client asks the sentinels for the current master of ``AIECS_SENTINEL_MASTER`` on each
new connection, so a failover is followed by reconnecting (which the callers' retries
do). The password in the URL is the master's (as in Celery's form);
``AIECS_SENTINEL_PASSWORD`` is the sentinels' own.

With AIECS_REDIS_CLUSTER, the state URL is one node of a Redis Cluster: its clients are
``RedisCluster`` ones (they learn the slots from that node and follow them; a client
made later in the process starts from every node an earlier one found, so the URL's node
is needed only when a process starts), but for
subscribing: a ``PUBLISH`` on any node of a cluster reaches the subscribers of every
node, so a subscriber holds a plain connection to one node, the URL's first
(:class:`PubSubNodes`), and when that node dies it connects to the next node the cluster
lists. The events are published by Lua scripts on the state Redis, so their subscriber
(the server's Socket.IO manager) stays on it; cancel broadcasts go through
AIECS_PUBSUB_URL when it is set (any plain Redis: no single cluster node to lose).

Every Redis client of aiecs is made here (the state, event, lease, rate-limit and beat
clients, the progress server's log and pub/sub clients, the CLI's); Celery's broker,
result backend and celery-redbeat are handed the same target through their own options
(:func:`celery_sentinel_options`, :func:`redbeat_options`).
"""

from __future__ import annotations

import contextlib
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..settings import RedisTarget, get_settings

__all__ = ["PubSubNodes", "async_client", "celery_sentinel_options", "cluster_addresses",
           "pubsub_client", "redbeat_options", "sync_client"]


#: the cluster clients of this process, by the URL they were made from: a client made
#: later starts from every node they found, not from the URL's node only (it may be dead)
_clients: dict[str, weakref.WeakSet] = {}
#: the nodes the sync clients found when made (they outlive the clients)
_learned: dict[str, set[tuple[str, int]]] = {}


def _known(url: str, client: Any) -> Any:
    _clients.setdefault(url, weakref.WeakSet()).add(client)
    _learned.setdefault(url, set()).update(cluster_addresses(client))
    return client


def _startup(url: str) -> list[tuple[str, int]]:
    found = set(_learned.get(url, ()))
    for client in list(_clients.get(url, ())):
        found.update(cluster_addresses(client))
    return sorted(found)


def _target(url: str | RedisTarget, settings: Any) -> RedisTarget:
    if isinstance(url, RedisTarget):
        return url
    return (settings or get_settings()).redis_target(url)


def sync_client(url: str | RedisTarget, *, settings: Any = None, **options: Any):
    """A ``redis.Redis`` of ``url`` (plain or Sentinel: its sentinels and master are read
    from ``settings``, default the process's; or a :class:`RedisTarget`); ``options`` are
    redis-py's connection arguments (timeouts, health checks, ...)."""
    import redis
    from redis.sentinel import Sentinel

    target = _target(url, settings)
    if target.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        client = RedisCluster.from_url(target.url, startup_nodes=[
            ClusterNode(host, port) for host, port in _startup(target.url)] or None,
            **options)
        return _known(target.url, client)
    if not (target.sentinels and target.master):  # parse_target names a master or fails
        return redis.Redis.from_url(target.url, **options)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(options))
    return sentinel.master_for(target.master, **options, **target.master_kwargs())


def async_client(url: str | RedisTarget, *, settings: Any = None, **options: Any):
    """A ``redis.asyncio.Redis`` of ``url`` (plain or Sentinel), as :func:`sync_client`."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    target = _target(url, settings)
    if target.cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        if not _startup(target.url):  # an asyncio client finds the nodes at its first
            # command only (maybe after the URL's node died): find them now, once
            with contextlib.suppress(Exception):
                sync_client(target, socket_connect_timeout=2, socket_timeout=5).close()
        return _known(target.url, RedisCluster.from_url(target.url, startup_nodes=[
            ClusterNode(host, port) for host, port in _startup(target.url)] or None,
            **options))
    if not (target.sentinels and target.master):
        return aioredis.Redis.from_url(target.url, **options)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(options))
    return sentinel.master_for(target.master, **options, **target.master_kwargs())


def pubsub_client(url: str | RedisTarget, *, settings: Any = None, **options: Any):
    """A ``redis.asyncio.Redis`` for pub/sub: :func:`async_client`, but a plain client of
    the URL's node when ``url`` is a Redis Cluster (its messages are cluster-wide)."""
    import redis.asyncio as aioredis

    target = _target(url, settings)
    if target.cluster:
        return aioredis.Redis.from_url(target.url, **options)
    return async_client(target, **options)


Address = tuple[str, int]


def cluster_addresses(client: Any) -> list[Address]:
    """The nodes a ``RedisCluster`` client (sync or asyncio) knows now (none before its
    first command), primaries and replicas."""
    try:
        return [(node.host, int(node.port)) for node in client.get_nodes()]
    except Exception:  # noqa: BLE001 - not a cluster client, or not initialised yet
        return []


class PubSubNodes:
    """Which node of a Redis Cluster a subscriber connects to: the URL's first, then, each
    time it connects again (its connection failed, or was found deaf), the next one of
    the cluster's nodes (``known``: their addresses now, e.g. :func:`cluster_addresses`
    of the process's ``RedisCluster`` client) in address order, round the list. Any node,
    primary or replica, receives every ``PUBLISH`` of the cluster.

    The connection's credentials, database and options are the URL's."""

    def __init__(self, target: RedisTarget,
                 known: Callable[[], Iterable[Address]] | None = None):
        self.target = target
        self.known = known
        parts = urllib.parse.urlsplit(target.url)
        self.current: Address = (parts.hostname or "localhost", parts.port or 6379)
        self.connects = 0

    def _next(self) -> Address:
        addresses = sorted(set(self.known() if self.known else ()) | {self.current})
        return addresses[(addresses.index(self.current) + 1) % len(addresses)]

    def url(self) -> str:
        """The URL of the node to connect to now; each call after the first moves on."""
        if self.connects:
            self.current = self._next()
        self.connects += 1
        parts = urllib.parse.urlsplit(self.target.url)
        host, port = self.current
        netloc = (f"[{host}]" if ":" in host else host) + f":{port}"
        if "@" in parts.netloc:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def client(self, **options: Any):
        """A plain ``redis.asyncio.Redis`` of the node to use now (see :meth:`url`)."""
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url(), **options)


def celery_sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """What Celery's broker / result backend transport options need for a Sentinel URL
    (the master's password travels in the URL itself)."""
    if not target.is_sentinel:
        return {}
    out: dict[str, Any] = {"master_name": target.master}
    if target.sentinel_password:
        out["sentinel_kwargs"] = {"password": target.sentinel_password}
    return out


def redbeat_options(target: RedisTarget) -> tuple[str, dict[str, Any]]:
    """celery-redbeat's ``redbeat_redis_url`` and ``redbeat_redis_options`` for a target
    (redbeat's Sentinel form: a ``redis-sentinel://`` URL and the sentinels in options)."""
    if not target.is_sentinel:
        return target.url, {}
    options: dict[str, Any] = {"sentinels": list(target.sentinels),
                               "service_name": target.master, "db": target.db,
                               "socket_timeout": 5}
    if target.password:
        options["password"] = target.password
    if target.username:
        options["username"] = target.username
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return "redis-sentinel://", options
