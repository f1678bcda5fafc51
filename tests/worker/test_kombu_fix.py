"""kombu's Redis channel that outlives its connection fails as a lost connection.

Without aiecs_worker.upstream_fixes this raises AttributeError ("'NoneType' object has no
attribute 'hostname'"), which stopped threads-pool workers on a Redis restart.
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
