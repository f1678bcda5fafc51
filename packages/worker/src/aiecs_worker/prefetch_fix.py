"""A fix for Celery's consumer: the prefetch count restored from a pool thread.

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
"""

from __future__ import annotations

import functools

__all__ = ["install"]

_installed = False


def install() -> None:
    """Patch ``celery.worker.consumer.Consumer`` once (idempotent)."""
    global _installed
    if _installed:
        return
    from celery.worker.consumer.consumer import Consumer

    original = Consumer._restore_prefetch_count_after_connection_restart

    @functools.wraps(original)
    def _restore_prefetch_count_after_connection_restart(self, p, *args):
        self.call_soon(original, self, p, *args)

    Consumer._restore_prefetch_count_after_connection_restart = (
        _restore_prefetch_count_after_connection_restart)
    _installed = True
