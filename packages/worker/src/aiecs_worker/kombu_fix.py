"""A fix for kombu's Redis transport: a channel that outlives its connection.

When Redis restarts, Celery's consumer drops the broken connection (kombu's
``Connection.collect`` sets the transport's ``client`` to None) and reconnects. Under an
in-process pool (threads) a channel of the old connection can still be used afterwards: its
QoS restores unacknowledged messages when it is closed or collected, and a pool thread may
acknowledge a message on it. Building a Redis client then reads ``self.connection.client``
(None) and raises ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which is
not a connection error, so Celery stops the worker: "Unrecoverable error" (kombu 5.x, the
same defect as celery/kombu#970 and #582 under another path).

The fix raises a Redis ``ConnectionError`` instead, which kombu and Celery already treat as
a lost connection: ignored while closing, logged while acknowledging. The messages that
could not be restored or acknowledged stay in kombu's ``unacked`` hash; aiecs's execution
leases and idempotent begin cover them (see docs/reliability.md).
"""

from __future__ import annotations

import functools

__all__ = ["install"]

_installed = False


def install() -> None:
    """Patch ``kombu.transport.redis.Channel._connparams`` once (idempotent)."""
    global _installed
    if _installed:
        return
    import redis.exceptions
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams

    @functools.wraps(original)
    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection of this channel is closed")
        return original(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams
    _installed = True
