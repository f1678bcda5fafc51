"""Cancelling running executions: a cancel request (broadcast on the cancel channel,
or Celery's revoke) reaches the execution's task on the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from celery.worker import state as worker_state

from ..store.keys import CANCEL_CHANNEL
from .context import RuntimeState, _Running

__all__ = ["CancelsMixin"]

log = logging.getLogger("aiecs.worker")


class CancelsMixin(RuntimeState):
    """The :class:`~aiecs_worker.runner.runtime.Runtime`'s cancellation of running
    executions."""

    # -- cancellation ----------------------------------------------------------------------------
    def _cancel(self, running: _Running, reason: str) -> None:
        """Stop a running execution, once: the first reason wins, and a task already being
        cancelled (our deadline, an earlier request) is not cancelled again — a second
        request would be delivered at a later await, past the handler, and end the
        execution with a bare CancelledError (seen when Celery's soft limit and our
        deadline fire together)."""
        if running.over:
            return
        if running.cancel_reason is None:
            running.cancel_reason = reason
        running.ctx.cancel()
        task = running.task
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    def cancel_local(self, celery_id: str, reason: str = "cancel") -> bool:
        """Cancel a running execution of this process (thread-safe)."""
        running = self.running.get(celery_id)
        if running is None:
            return False
        self.loop.call_soon_threadsafe(self._cancel, running, reason)
        return True

    async def _listen_cancels(self) -> None:
        """Follow cancel requests (pub/sub) and Celery revocations seen by this process."""
        backoff = 0.5
        while True:
            pubsub = self._cancel_pubsub()
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(timeout=0.25)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        celery_id = data.decode() if isinstance(data, bytes) else str(data)
                        running = self.running.get(celery_id)
                        if running is not None:
                            self._cancel(running, "cancel")
                    self._check_revoked()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("cancel listener reconnecting: %s", exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                dropped = self.pubsub_redis
                if self._pubsub_nodes is not None and dropped is not None:
                    with contextlib.suppress(Exception):  # a plain client of one node
                        await dropped.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    def _cancel_pubsub(self):
        """A pub/sub of the cancel broadcasts' Redis; on a Redis Cluster (no
        AIECS_PUBSUB_URL), of the next node each time (the previous one failed)."""
        if self._pubsub_nodes is not None:
            self.pubsub_redis = self._pubsub_nodes.client(**self._pubsub_options)
        return self.pubsub_redis.pubsub(ignore_subscribe_messages=True)

    def _check_revoked(self) -> None:
        """Plain ``AsyncResult.revoke()`` of a running task (in-process pools)."""
        if not self.running:
            return
        for celery_id in list(self.running):
            if celery_id in worker_state.revoked:
                self._cancel(self.running[celery_id], "cancel")
