"""The retention job's wiring: run :mod:`aiecs_history.retention` from the recorders, one
at a time.

Every AIECS_RECORDER_RETENTION_EVERY seconds a recorder tries to take the Redis lock
``aiecs:recorder:retention`` (``SET NX``, held for that interval): the one that gets it
creates the coming days' partitions (PostgreSQL) and removes what is older than each
kind's retention: rows (AIECS_HISTORY_DAYS), payloads (AIECS_HISTORY_PAYLOAD_DAYS),
events (AIECS_HISTORY_EVENT_DAYS). The others skip until the lock expires, so the job
runs about once per interval whichever recorders run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..settings import Settings
from ..store.keys import RECORDER_LOCK_KEY

__all__ = ["RetentionJob", "days_of"]

log = logging.getLogger("aiecs.recorder")

#: Days ahead for which PostgreSQL partitions exist before rows arrive.
PARTITIONS_AHEAD = 3


def days_of(settings: Settings) -> dict[str, float]:
    """Retention in days per kind (rows, payloads, events)."""
    return {"rows": settings.aiecs_history_days,
            "payloads": settings.aiecs_history_payload_days,
            "events": settings.aiecs_history_event_days}


class RetentionJob:
    """Runs the retention job when due and when this recorder holds the lock."""

    def __init__(self, engine: Any, redis_client: Any, settings: Settings, metrics: Any,
                 owner: str = ""):
        self.engine = engine
        self.redis = redis_client
        self.settings = settings
        self.metrics = metrics
        self.owner = owner or "recorder"
        self._next = 0.0  # due at once: the first run creates today's partitions

    def maybe_run(self, now: float | None = None) -> dict[str, int] | None:
        """Run the job if it is due here and the lock is free; what it removed per kind."""
        mono = time.monotonic()
        if mono < self._next:
            return None
        every = self.settings.aiecs_recorder_retention_every
        self._next = mono + every
        if not self.redis.set(RECORDER_LOCK_KEY, self.owner, nx=True,
                              ex=max(1, int(every))):
            return None
        try:
            return self.run(now)
        except Exception as exc:  # noqa: BLE001 - the database away: next interval
            log.warning("retention job failed (%s); next run in %gs", exc, every)
            self.redis.delete(RECORDER_LOCK_KEY)
            self._next = mono + min(every, 60.0)
            return None

    def run(self, now: float | None = None) -> dict[str, int]:
        """Create the coming partitions and remove what each kind no longer keeps."""
        from aiecs_history import retention  # deferred: see aiecs_worker.history.require

        now = time.time() if now is None else now
        retention.ensure_partitions(self.engine, now, ahead=PARTITIONS_AHEAD)
        removed = {}
        for kind, days in days_of(self.settings).items():
            n = retention.drop_expired(self.engine, retention.KINDS[kind], days, now)
            removed[kind] = n
            if n:
                self.metrics.removed.labels(kind).inc(n)
        if any(removed.values()):
            log.info("retention: removed %s", removed)
        return removed
