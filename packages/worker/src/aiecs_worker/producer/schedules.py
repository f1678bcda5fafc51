"""Periodic executions: a user's schedule, stored in Redis, run by ``celery beat``.

A schedule makes steps of one ``task_id`` on a clock: every ``every`` seconds, or on a
``cron`` expression (five fields, UTC). Each run is a normal execution, submitted through
the same path as any other (PENDING record and event, then the queue), as the task's next
step.

Storage (the state Redis), created, listed and deleted at run time:

- ``aiecs:sched:{user}:{task}``: hash; ``spec`` (the :class:`Schedule` as JSON),
  ``last_step`` (the step counter), ``runs``;
- ``aiecs:sched:{user}``: set of the user's scheduled task ids;
- the celery-redbeat entry ``aiecs:beat:{user}:{task}`` (and its place in
  ``aiecs:beat::schedule``), which beat reads at each tick: no restart to add one;
- ``aiecs:sched:{user}:{task}:tick:{tick}``: the step a tick was given (for a day).

**One execution per tick.** :func:`fire` gives a tick its step atomically (``HINCRBY``,
skipping steps the task already has): the same tick fired again (beat died after firing
and before recording that it had, or a retry) gets the same step back, and the execution
it already submitted is not submitted again.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aiecs_core import (
    ID_PATTERN,
    BudgetExceededError,
    QuotaExceededError,
    TaskRequest,
    TaskStatus,
    TemplateRef,
)
from celery.schedules import crontab
from celery.schedules import schedule as every_schedule
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redbeat import RedBeatSchedulerEntry

from ..app import app
from ..ops import metrics
from ..routing import queue_name, route
from ..settings import get_settings
from ..store import admission, quotas
from ..store.events import TaskKeys, run_script
from ..store.keys import schedule_key, schedule_tick_key, steps_key, user_schedules_key
from ..store.records import end_execution, state_redis
from .control import get_state

__all__ = ["FIRE_TASK", "Schedule", "ScheduleExistsError",
           "ScheduleLimitError", "create",
           "delete", "fire", "get", "list_schedules", "tick_id"]

#: The task name of the beat entries of schedules (run by :mod:`aiecs_worker.runner.beat`).
FIRE_TASK = "aiecs.schedule.fire"
#: Seconds a refusal for the number of schedules tells the user to wait (the count frees
#: only when the user deletes one).
LIMIT_RETRY_AFTER = 60
#: Steps of a scheduled task listed in its ``steps`` set (older runs stay readable by
#: step until their state expires): a task's view reads each listed step.
KEEP_STEPS = 100
#: Seconds a tick remembers its step (a repeated tick later than this is not recognised).
TICK_TTL = 86_400
MIN_EVERY = 1.0


class ScheduleExistsError(Exception):
    """The user already has a schedule on this task id."""


class ScheduleLimitError(QuotaExceededError):
    """The user has AIECS_MAX_SCHEDULES schedules already (HTTP 429)."""


class Schedule(BaseModel):
    """A periodic execution: what to run (as a TaskRequest without ``step``) and when."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=ID_PATTERN)
    task_id: str = Field(pattern=ID_PATTERN)
    mode: str = Field(pattern=ID_PATTERN)
    service: str = Field(pattern=ID_PATTERN)
    task_name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,127}$")
    input_data: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    every: float | None = Field(default=None, ge=MIN_EVERY, le=366 * 86400)
    """Seconds between runs (the first one ``every`` seconds after creation)."""
    cron: str | None = Field(default=None, max_length=200)
    """Five-field cron expression (minute hour day-of-month month day-of-week), UTC."""
    heavy: bool = False
    """Queue of the runs: heavy_tasks when true (default: what the operation declares)."""
    template: TemplateRef | None = None
    """The template version the input was rendered from, resolved when the schedule was
    created: every run runs that version (a label moved later does not change it)."""
    created: float = Field(default_factory=time.time)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = " ".join(v.split())
        try:
            crontab.from_string(v)
        except (ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"invalid cron expression {v!r} (minute hour day-of-month "
                             f"month day-of-week): {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_clock(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (seconds) and cron")
        return self

    def celery_schedule(self):
        if self.cron is not None:
            return crontab.from_string(self.cron)
        return every_schedule(run_every=self.every)

    def request(self, step: int) -> TaskRequest:
        return TaskRequest(task_name=self.task_name, user_id=self.user_id,
                           task_id=self.task_id, step=step, mode=self.mode,
                           service=self.service, input_data=self.input_data,
                           context=self.context, template=self.template)


_key = schedule_key
_user_key = user_schedules_key


def _entry_name(user_id: str, task_id: str) -> str:
    return f"{user_id}:{task_id}"


# KEYS: schedule hash, user set.  ARGV: spec json, task id, max schedules.
# 1 created, 0 exists, -1 too many.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'runs', 0)
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

# KEYS: schedule hash, tick key, the task's steps set.  ARGV: tick ttl, steps kept.
# Returns {step, new}: {0, 0} when the schedule is gone; the tick's step when it already
# had one (new = 0); else the task's next free step.
_TICK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local had = redis.call('GET', KEYS[2])
if had then return {tonumber(had), 0} end
if not redis.call('HGET', KEYS[1], 'last_step') then
  local m = 0
  for _, v in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local n = tonumber(v)
    if n and n > m then m = n end
  end
  redis.call('HSET', KEYS[1], 'last_step', m)
end
local n = redis.call('HINCRBY', KEYS[1], 'last_step', 1)
while redis.call('SISMEMBER', KEYS[3], n) == 1 do
  n = redis.call('HINCRBY', KEYS[1], 'last_step', 1)
end
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('SET', KEYS[2], n, 'EX', ARGV[1])
local old = n - tonumber(ARGV[2])
if old > 0 then redis.call('SREM', KEYS[3], old) end
return {n, 1}
"""


def _entry(user_id: str, task_id: str, schedule=None):
    return RedBeatSchedulerEntry(_entry_name(user_id, task_id), FIRE_TASK, schedule,
                                 kwargs={"user_id": user_id, "task_id": task_id}, app=app)


def validate(schedule: Schedule) -> Schedule:
    """Check the operation exists and the input fits its model (this process's plugins),
    and the period is at least AIECS_SCHEDULE_MIN_PERIOD; the queue follows the
    operation's declaration unless ``heavy`` was given. Raises ServiceNotFoundError /
    OperationNotFoundError / InputValidationError / PayloadTooLargeError /
    QuotaExceededError (the period; never retryable)."""
    settings = get_settings()
    least = settings.aiecs_schedule_min_period
    period = schedule.every if schedule.every is not None else _cron_period(schedule)
    if period < least:
        raise quotas.never(
            f"a schedule runs at most once every {least:g} s (limit set by "
            f"AIECS_SCHEDULE_MIN_PERIOD); this one every {period:g} s", least,
            "AIECS_SCHEDULE_MIN_PERIOD")
    admission.check(schedule)
    return schedule


def _cron_period(schedule: Schedule) -> float:
    """The shortest gap, in seconds, between two runs of a cron schedule: between two of
    its minutes in an hour (or across the hour), else an hour or more."""
    minutes = sorted(schedule.celery_schedule().minute)
    if len(minutes) < 2:
        return 3600.0
    gaps = [b - a for a, b in zip(minutes, minutes[1:], strict=False)]
    return 60.0 * min([*gaps, 60 - minutes[-1] + minutes[0]])


def create(schedule: Schedule, *, heavy: bool | None = None) -> dict[str, Any]:
    """Validate and store a schedule; beat runs it from its next tick on.

    Raises what :func:`validate` raises, :class:`ScheduleExistsError`,
    :class:`ScheduleLimitError` or, for the user's submissions per second,
    :class:`~aiecs_core.QuotaExceededError`.
    """
    validate(schedule)
    if heavy is None:
        heavy = admission.operation(schedule).heavy
    schedule = schedule.model_copy(update={"heavy": heavy, "created": time.time()})
    client = state_redis()
    admission.admit(schedule.user_id, client=client)
    limit = get_settings().aiecs_max_schedules
    made = run_script(client, _CREATE_LUA,
                      [_key(schedule.user_id, schedule.task_id), _user_key(schedule.user_id)],
                      [schedule.model_dump_json(), schedule.task_id, limit])
    if made == 0:
        raise ScheduleExistsError(f"a schedule on task {schedule.task_id!r} already exists")
    if made == -1:
        metrics.quota_refused("AIECS_MAX_SCHEDULES")
        raise ScheduleLimitError(f"at most {limit} schedules per user (limit set by "
                                 "AIECS_MAX_SCHEDULES): delete one first", limit=limit,
                                 setting="AIECS_MAX_SCHEDULES",
                                 retry_after=LIMIT_RETRY_AFTER)
    entry = _entry(schedule.user_id, schedule.task_id, schedule.celery_schedule())
    # the first run is one period after now (never at once, which a new cron entry would)
    entry.last_run_at = datetime.fromtimestamp(schedule.created, UTC)
    try:
        entry.save()
    except Exception:
        _forget(schedule.user_id, schedule.task_id)
        raise
    return _view(schedule, client.hgetall(_key(schedule.user_id, schedule.task_id)))


def _forget(user_id: str, task_id: str) -> None:
    with state_redis().pipeline() as pipe:
        pipe.delete(_key(user_id, task_id))
        pipe.srem(_user_key(user_id), task_id)
        pipe.execute()


def delete(user_id: str, task_id: str) -> bool:
    """Delete a schedule (its beat entry first, so no tick fires after). Runs already
    submitted go on. False when there was none."""
    if not state_redis().exists(_key(user_id, task_id)):
        return False
    _entry(user_id, task_id).delete()
    _forget(user_id, task_id)
    return True


def get(user_id: str, task_id: str) -> dict[str, Any] | None:
    raw = state_redis().hgetall(_key(user_id, task_id))
    if not raw or b"spec" not in raw:
        return None
    return _view(Schedule.model_validate_json(raw[b"spec"]), raw)


def list_schedules(user_id: str) -> list[dict[str, Any]]:
    """The user's schedules, by task id."""
    ids = sorted(x.decode() for x in state_redis().smembers(_user_key(user_id)))
    return [v for v in (get(user_id, t) for t in ids) if v is not None]


def _view(schedule: Schedule, raw: dict[bytes, bytes]) -> dict[str, Any]:
    last_step = int(raw.get(b"last_step") or 0)
    last = None
    if last_step:
        state = get_state(schedule.user_id, schedule.task_id, last_step)["steps"].get(last_step)
        if state:
            last = {"step": last_step, "status": state.get("status"),
                    "error": state.get("error")}
    next_run = None
    try:
        entry = RedBeatSchedulerEntry.from_key(_entry(schedule.user_id, schedule.task_id).key,
                                               app=app)
    except KeyError:
        pass
    else:  # (redbeat's due_at adds the time left from *now* to the last run)
        left = (entry.schedule.remaining_estimate(entry.last_run_at).total_seconds()
                if entry.last_run_at is not None else 0.0)
        next_run = round(time.time() + max(left, 0.0), 3)
    body = schedule.model_dump(mode="json", exclude={"user_id"})
    return {**body, "queue": queue_name(bool(schedule.heavy)),
            "runs": int(raw.get(b"runs") or 0), "last_run": last, "next_run_at": next_run}


def tick_id(last_run_at: datetime | None) -> str:
    """A tick's identity: when the schedule last ran before it (the same for every beat
    that reads the same stored state, so a tick fired twice is recognised)."""
    return "first" if last_run_at is None else f"{last_run_at.timestamp():.6f}"


def fire(user_id: str, task_id: str, tick: str, producer=None) -> int | None:
    """Submit the run of one tick as the task's next step; the step, or None when the
    schedule no longer exists. A run its user's budget refuses ends FAILED
    (BudgetExceededError) at once. The same tick again returns its step without a second
    execution (unless the first never recorded its PENDING state: then it is submitted)."""
    client = state_redis()
    raw = client.hget(_key(user_id, task_id), "spec")
    if raw is None:
        return None
    schedule = Schedule.model_validate_json(raw)
    step, new = run_script(
        client, _TICK_LUA,
        [_key(user_id, task_id), schedule_tick_key(user_id, task_id, tick),
         steps_key(user_id, task_id)],
        [TICK_TTL, KEEP_STEPS])
    step = int(step)
    if step == 0:
        return None
    if not new and client.exists(TaskKeys(user_id, task_id).state(step)):
        return step
    # the task by its name: registered by aiecs_worker.runner.tasks (the package init imports it)
    task = app.tasks[route(bool(schedule.heavy)).task]
    request = schedule.request(step)
    try:
        task.apply_async(kwargs=json.loads(request.model_dump_json()), producer=producer)
    except BudgetExceededError as exc:  # this run ends FAILED, saying why; the next may run
        end_execution(client, request, TaskStatus.FAILED, exc)
    return step
