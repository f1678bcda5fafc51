"""The beat scheduler: celery-redbeat's, which also runs users' schedules.

``celery -A aiecs_worker beat`` uses it (``beat_scheduler`` in the app's configuration):
entries live in the state Redis (``aiecs:beat:*``), so schedules added or deleted at run
time are seen at the next tick (at most ``beat_max_loop_interval``, 5 s, later), and a
lock (``aiecs:beat::lock``) lets only one beat run: a second one started by mistake waits
until the first is gone (its lock expires ``5 × max interval`` after it stopped renewing
it) and then takes over.

A schedule's entry is not sent as a Celery message: when it is due, this process submits
the run itself (:func:`aiecs_worker.producer.schedules.fire`: the PENDING record and event, then
the queue), *then* records that the entry ran. Beat dying between the two fires the same
tick again on restart, and the tick's idempotency key makes that one execution.

**Missed runs.** Runs that fell due while no beat was running are not replayed one by
one: when beat comes back, each schedule that missed one or more runs runs once, at once,
and then keeps its cadence from there (celery-redbeat's and Celery's own rule; for cron,
``beat_cron_starting_deadline`` is unset).

Other entries (a static ``beat_schedule``) are sent as Celery does.
"""

from __future__ import annotations

import logging

from redbeat import RedBeatScheduler

from ..producer.schedules import FIRE_TASK, fire, tick_id

__all__ = ["Scheduler"]

log = logging.getLogger("aiecs.beat")


class Scheduler(RedBeatScheduler):
    """RedBeatScheduler whose schedule entries submit aiecs executions."""

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task != FIRE_TASK:
            return super().apply_async(entry, producer, advance, **kwargs)
        user_id, task_id = entry.kwargs["user_id"], entry.kwargs["task_id"]
        step = fire(user_id, task_id, tick_id(entry.last_run_at), producer=producer)
        if step is None:  # the schedule was deleted: so goes its entry
            log.info("schedule %s/%s is gone; removing its beat entry", user_id, task_id)
            entry.delete()
            return None
        log.info("schedule %s/%s: step %d submitted", user_id, task_id, step)
        if advance:
            self.reserve(entry)
        return None
