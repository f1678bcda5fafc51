"""Fixes for upstream defects, installed by the package init (``aiecs_worker``): two
stopped workers, one cost every task a tenth of a millisecond.

1. kombu's Redis transport: a channel that outlives its connection.
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

2. Celery's consumer: the prefetch count restored from a pool thread.
   After a lost broker connection, Celery's consumer lowers the prefetch count (tasks still
   running from before hold their slots) and raises it again as the tasks received after the
   reconnect are acknowledged: ``Consumer._restore_prefetch_count_after_connection_restart``
   is chained to each acknowledgement promise and calls ``basic.qos``, a synchronous AMQP
   method that sends a frame and reads the connection until its reply arrives.

   Under the threads pool (Celery 5.3-5.7) the promise is fulfilled in the pool thread that
   ran the task, so several pool threads and the consumer's own event loop read the same
   py-amqp connection at once; py-amqp is not thread-safe, one thread eats another's
   ``qos-ok``, and every thread then waits for a reply that never comes. The consumer thread
   is among them: the worker takes no message again, while RabbitMQ counts its prefetch as
   full (seen in the fault suite: 29 of 40 executions stayed PENDING after
   ``rabbitmqctl close_all_connections``; ``py-spy dump`` showed three threads blocked in
   ``Channel.basic_qos``).

   The fix runs the restore on the consumer's thread: through the consumer's ``call_soon``
   (its event loop's ready queue, or the pending operations of the synchronous loop), the
   same way Celery already sends the acknowledgements themselves. Under prefork the result
   handler already runs in the consumer's thread; the restore is then one loop turn later.

3. kombu's Redis transport: a new Redis client per acknowledgement.
   ``Channel.conn_or_acquire`` builds a ``redis.Redis`` over the channel's pool each time
   it is called without a client: at every delivery (the unacked record) and every
   acknowledgement. Building one costs about 47 µs with redis-py 8 (its response
   callbacks are copied per instance), 12 % of a threads worker's GIL time in a no-op
   drain (py-spy). The fix keeps one client per channel, over the same pool (a ``redis.Redis``
   is thread-safe; pipelines are still one per call), and builds it again if the channel
   gets a new pool.
"""

from __future__ import annotations

import contextlib
import functools

import redis.exceptions
from celery.worker.consumer.consumer import Consumer
from kombu.transport import redis as kombu_redis

__all__ = ["install"]

_installed = False


def install() -> None:
    """Apply the three fixes once (idempotent)."""
    global _installed
    if _installed:
        return
    _fix_kombu_redis_channel()
    _fix_prefetch_restore()
    _fix_client_per_call()
    _installed = True


def _fix_kombu_redis_channel() -> None:
    """Patch ``kombu.transport.redis.Channel._connparams`` (fix 1)."""
    original = kombu_redis.Channel._connparams

    @functools.wraps(original)
    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection of this channel is closed")
        return original(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams


def _fix_prefetch_restore() -> None:
    """Patch ``celery.worker.consumer.Consumer`` (fix 2)."""
    original = Consumer._restore_prefetch_count_after_connection_restart

    @functools.wraps(original)
    def _restore_prefetch_count_after_connection_restart(self, p, *args):
        self.call_soon(original, self, p, *args)

    Consumer._restore_prefetch_count_after_connection_restart = (
        _restore_prefetch_count_after_connection_restart)


def _fix_client_per_call() -> None:
    """Patch ``kombu.transport.redis.Channel.conn_or_acquire`` (fix 3)."""
    @contextlib.contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        pool = self.pool
        cached = self.__dict__.get("_aiecs_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_aiecs_client"] = self._create_client()
        yield cached

    kombu_redis.Channel.conn_or_acquire = conn_or_acquire
