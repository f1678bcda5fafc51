"""The runtime's lease and sweeper: renew this process's lease, queue again the
executions of dead workers and those whose message was lost, release held executions,
advance workflows a dead process left (see :mod:`aiecs_worker.store.lease`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..app import app
from ..ops import background
from ..producer.advance import sweep_due
from ..store.connection import sync_client
from ..store.keys import SHARD_PREFIXES, retention_key
from ..store.lease import queue_names, reap_keys, sweep_keys
from .context import RuntimeState

__all__ = ["SweeperMixin"]

log = logging.getLogger("aiecs.worker")

#: kombu's Redis transport names a queue's priority lists ``queue + this + step``.
_PRIORITY_SEP = "\x06\x16"


class SweeperMixin(RuntimeState):
    """The :class:`~aiecs_worker.runner.runtime.Runtime`'s lease and periodic sweep."""

    # -- leases -------------------------------------------------------------------------------
    async def _keep_lease(self) -> None:
        """Renew this process's lease and sweep dead owners' executions, forever."""
        s = self.settings
        # often enough to release a held execution within its horizon (aiecs_worker.store.hold)
        interval = min(s.aiecs_lease_seconds / 3, max(0.5, s.schedule_horizon / 2))
        announced = False
        while True:
            try:
                if not announced:  # at start, and again after Redis was away (or replaced)
                    # the TTL every terminal transition gives an execution's keys, whoever
                    # makes it (see aiecs_worker.store.state.finish_lua)
                    for shard in SHARD_PREFIXES:
                        await self.redis.set(retention_key(shard), s.aiecs_events_ttl)
                    announced = True
                for shard in SHARD_PREFIXES:  # its lease is read where its executions are
                    await self._heartbeat(keys=sweep_keys(shard), args=[
                        self.owner, s.aiecs_lease_seconds * 1000, self._suspect or ""])
                await self.sweep()
                delay = interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: renew as soon as it is back
                background.failed("lease", "renewing this process's lease and sweeping", exc)
                announced = False
                delay = 0.5
            await asyncio.sleep(delay)

    async def sweep(self) -> int:
        """Queue again the executions of owners whose lease ended, send the held
        executions that may run (see aiecs_worker.store.hold), queue again PENDING executions
        whose message the broker lost, and advance workflows whose advance was missed;
        how many were queued (or released or ended)."""
        queued = await self._sweep_dead_owners()
        queued += await self._release_held()
        s = self.settings
        elsewhere = not s.broker_is_amqp and s.celery_broker_url != s.state_redis_url
        lost = []
        for shard in SHARD_PREFIXES:
            lost += await self._reap(keys=reap_keys(shard), args=[
                2 * s.celery_visibility_timeout * 1000, 16, _PRIORITY_SEP,
                "1" if s.broker_is_amqp else "2" if elsewhere else ""])
        lost = [x.decode() if isinstance(x, bytes) else x for x in lost]
        for i in range(0, len(lost), 5):
            state_key, celery_id, task, queue, request = lost[i:i + 5]
            if elsewhere:
                waiting: int = await self.loop.run_in_executor(None, self._queued, queue)
                if waiting:
                    continue  # its queue on the broker is not empty: the message may be there
            await self.loop.run_in_executor(None, self._send_again, task, queue, request,
                                            celery_id)
            log.warning("execution %s (%s) still PENDING with an empty queue: its message "
                        "was lost in transit; queued again", celery_id, state_key)
            queued += 1
        # and advances of workflows a dead process did not make
        return queued + await self.loop.run_in_executor(None, sweep_due)

    async def _sweep_dead_owners(self) -> int:
        out = []
        for shard in SHARD_PREFIXES:
            out += await self._sweep(keys=sweep_keys(shard), args=[16, time.time()])
        out = [x.decode() if isinstance(x, bytes) else x for x in out]
        queued = 0
        for i in range(0, len(out), 6):
            state_key, celery_id, task, queue, request, charged = out[i:i + 6]
            if not (celery_id and task and request):
                log.error("execution %s of a dead worker cannot be queued again (no arguments "
                          "recorded); the broker redelivers it after its visibility timeout",
                          state_key)
                continue
            await self.loop.run_in_executor(None, self._send_again, task, queue, request,
                                            celery_id)
            log.warning("execution %s (%s) of a dead worker queued again%s", celery_id,
                        state_key, "" if charged else " (crash not charged to it: suspect)")
            queued += 1
        return queued

    def _queued(self, queue: str) -> int:
        """Messages waiting in ``queue`` on the broker's Redis (when it is not the state
        Redis: a Redis Cluster's, say)."""
        client = getattr(self, "_broker_redis", None)
        if client is None:
            client = self._broker_redis = sync_client(self.settings.celery_broker_url,
                                                      socket_timeout=5)
        return sum(client.llen(name) for name in queue_names(queue, _PRIORITY_SEP))

    @staticmethod
    def _send_again(task: str, queue: str, request: str, celery_id: str) -> None:
        app.send_task(task, kwargs=json.loads(request), task_id=celery_id, queue=queue or None)
