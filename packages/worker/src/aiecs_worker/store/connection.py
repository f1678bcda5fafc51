"""How aiecs connects to Redis: the one factory of every client, synchronous and asyncio.

A Redis URL is either a plain ``redis://``, ``rediss://`` or ``unix://`` URL, or
Celery's Sentinel form: one ``sentinel://`` URL per sentinel, joined by ``;``
(``sentinel://:password@host1:26379/0;sentinel://host2:26379``). With the Sentinel form,
a client asks the sentinels for the current master of ``AIECS_SENTINEL_MASTER`` on each
new connection, so a failover is followed by reconnecting (which the callers' retries
do). The password in the URL is the master's (as in Celery's form);
``AIECS_SENTINEL_PASSWORD`` is the sentinels' own.

With AIECS_REDIS_CLUSTER, the state URL is one node of a Redis Cluster: its clients are
``RedisCluster`` ones (they learn the slots from that node and follow them), but for
pub/sub (:func:`pubsub_client`): a ``PUBLISH`` on any node of a cluster reaches the
subscribers of every node, so the server's Socket.IO manager and listeners use a plain
client of the URL's node.

Every Redis client of aiecs is made here (the state, event, lease, rate-limit and beat
clients, the progress server's log and pub/sub clients, the CLI's); Celery's broker,
result backend and celery-redbeat are handed the same target through their own options
(:func:`celery_sentinel_options`, :func:`redbeat_options`).
"""

from __future__ import annotations

from typing import Any

from ..settings import RedisTarget, get_settings

__all__ = ["async_client", "celery_sentinel_options", "pubsub_client", "redbeat_options",
           "sync_client"]


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
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(target.url, **options)
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
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(target.url, **options)
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
