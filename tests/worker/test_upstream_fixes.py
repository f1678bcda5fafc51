"""The fixes of aiecs_worker.runner.upstream_fixes, on kombu's real Redis channel.

A channel that outlives its connection fails as a lost connection: without the fix this
raises AttributeError ("'NoneType' object has no attribute 'hostname'"), which stopped
threads-pool workers on a Redis restart. The prefetch restore is tested on a real worker
and RabbitMQ (tests/worker/test_rabbitmq.py).
"""

from __future__ import annotations

import pytest


def test_restore_on_a_channel_of_a_dropped_connection_is_a_connection_error(redis_server):
    import redis.exceptions
    from aiecs_worker import app  # noqa: F401 - creating the app installs the fix
    from kombu import Connection

    conn = Connection(redis_server.url)
    try:
        channel = conn.channel()
        channel.connection.client = None  # what Connection._do_close_transport does
        with pytest.raises(redis.exceptions.ConnectionError) as info:
            channel.qos.restore_unacked()  # what closing or collecting the channel calls
        # one of the errors kombu and Celery treat as a lost connection (not a crash)
        assert isinstance(info.value, conn.connection_errors)
    finally:
        conn.release()


def test_one_redis_client_per_channel_for_acks_and_unacked_records(redis_server):
    """kombu built a redis.Redis per delivery and per acknowledgement (about 47 µs each);
    the channel now keeps one over its pool, and the records are still written."""
    from aiecs_worker import app  # noqa: F401 - creating the app installs the fix
    from kombu import Connection

    conn = Connection(redis_server.url)
    try:
        channel = conn.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = object()
        with channel.conn_or_acquire(given) as client:  # a caller's own client is kept
            assert client is given
        # what a delivery and its acknowledgement do, through the shared client
        channel.qos.append(_FakeMessage(), "tag-1")
        assert channel.client.hexists(channel.unacked_key, "tag-1")
        channel.qos._remove_from_indices("tag-1").execute()
        assert not channel.client.hexists(channel.unacked_key, "tag-1")
        channel._pool = None  # a new pool (as after a reset): a new client over it
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
    finally:
        conn.release()


class _FakeMessage:
    """What QoS.append reads of a message."""

    delivery_info = {"exchange": "", "routing_key": "fast_tasks"}
    _raw = {"body": "{}"}
