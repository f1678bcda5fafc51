"""Every Redis key name and prefix aiecs uses, in one place.

A new key is added here (with what it holds); the modules that read or write it import
its name. Imports nothing from aiecs_worker.
"""

from __future__ import annotations

import os

__all__ = [
    "CLUSTER_ENV",
    "BACKLOG_KEY", "BEAT_PREFIX", "BUDGET_HOLD_SUFFIX", "budget_counter_key",
    "budget_limits_key", "CANCEL_CHANNEL", "DEADLETTER_KEY", "DUE_KEY",
    "FLOWS_DUE_KEY", "FLOW_PREFIX", "OUTBOX_GROUP", "OUTBOX_KEY", "OWNED_PREFIX", "OWNERS_KEY",
    "PENDING_KEY", "PREFIX", "RECORDER_LOCK_KEY", "RETENTION_KEY", "REVOKED_PREFIX",
    "SUSPECT_KEY", "TaskKeys", "batch_key", "celery_index_key", "flow_key", "group_ids",
    "owned_key", "parse_state_key", "quota_key", "rate_limit_base", "schedule_key",
    "schedule_tick_key", "steps_key", "task_of_key", "user_schedules_key",
    "user_tasks_pattern", "window_key",
]

#: The environment variable (AIECS_REDIS_CLUSTER, declared and checked in
#: aiecs_worker.settings) that puts aiecs's keys in one Redis Cluster hash slot.
CLUSTER_ENV = "AIECS_REDIS_CLUSTER"


def _cluster_prefix() -> bool:
    """Whether this process's keys carry the hash tag (read once, at import: a key name
    is a deployment constant every process must agree on; the settings check the value)."""
    return os.environ.get(CLUSTER_ENV, "").strip().lower() in ("1", "true", "yes", "on")


#: The prefix of every key (the default of the functions' ``prefix`` arguments):
#: ``aiecs``, or on a Redis Cluster (AIECS_REDIS_CLUSTER) ``{aiecs}``: a hash tag that puts
#: every key of aiecs in one slot, so each script's keys (those it is passed and those it
#: names, such as an owner's set or an execution's celery index) are on one node.
PREFIX = "{aiecs}" if _cluster_prefix() else "aiecs"

# -- executions ---------------------------------------------------------------------------
#: Sorted set: execution owner (one worker process) -> when its lease ends (Redis ms).
OWNERS_KEY = f"{PREFIX}:owners"
#: Set per owner (``OWNED_PREFIX + owner``): the state keys it is executing.
OWNED_PREFIX = f"{PREFIX}:owned:"
#: Sorted set: PENDING executions -> when they were submitted (Redis ms); the sweeper
#: queues again one whose message the broker lost (see aiecs_worker.store.lease).
PENDING_KEY = f"{PREFIX}:pending"
#: Sorted set: executions held in Redis until they are due (state key -> due time, ms;
#: see aiecs_worker.store.hold).
DUE_KEY = f"{PREFIX}:held:due"
#: The one crash suspect allowed to run at a time (see aiecs_worker.store.lease).
SUSPECT_KEY = f"{PREFIX}:suspect"
#: Pub/sub channel on which cancel requests (Celery task ids) are broadcast to workers.
CANCEL_CHANNEL = f"{PREFIX}:cancel"
#: String: the workers' AIECS_EVENTS_TTL (seconds), set by each worker process as it
#: starts; every terminal transition gives an execution's keys this TTL, whichever
#: process makes it (a cancel from the server, say). See docs/operations.md, "Retention".
RETENTION_KEY = f"{PREFIX}:retention"
#: List of malformed broker messages, newest first (see aiecs_worker.runner.poison).
DEADLETTER_KEY = f"{PREFIX}:deadletter"

# -- history (aiecs_worker.history) ---------------------------------------------------------
#: Stream: the outbox of finished executions. The terminal script appends one entry per
#: execution (its state hash, request included, plus ``key``: the state key); the
#: recorders (consumer group :data:`OUTBOX_GROUP`) write it to the history database and
#: delete it. Never trimmed: its length is the recorders' backlog.
OUTBOX_KEY = f"{PREFIX}:outbox"
#: The recorders' consumer group on :data:`OUTBOX_KEY`.
OUTBOX_GROUP = "recorders"
#: The lock held by the one recorder running the retention job.
RECORDER_LOCK_KEY = f"{PREFIX}:recorder:retention"


class TaskKeys:
    """Redis keys of one user's task (and of one of its steps)."""

    def __init__(self, user_id: str, task_id: str, prefix: str = PREFIX):
        base = f"{prefix}:t:{user_id}:{task_id}"
        #: counter: the task's last event seq
        self.seq = f"{base}:seq"
        #: stream: the task's durable event log
        self.log = f"{base}:log"
        self._base = base

    def state(self, step: int) -> str:
        """Hash: status, celery_id, result, error, usage, updated (per step)."""
        return f"{self._base}:{step}:state"


def user_tasks_pattern(user_id: str, prefix: str = PREFIX) -> str:
    """SCAN pattern of every key of a user's tasks (``TaskKeys`` and ``steps_key``); user
    ids match ``aiecs_core.ID_PATTERN``: no ``:`` nor glob characters."""
    return f"{prefix}:t:{user_id}:*"


def task_of_key(key: str, user_id: str, prefix: str = PREFIX) -> str | None:
    """The task id in a key of ``user_tasks_pattern(user_id)`` (None for another key)."""
    head = f"{prefix}:t:{user_id}:"
    if not key.startswith(head):
        return None
    return key[len(head):].split(":", 1)[0] or None


def parse_state_key(key: str, prefix: str = PREFIX) -> tuple[str, str, int] | None:
    """``(user_id, task_id, step)`` of a state key (:meth:`TaskKeys.state`), or None.
    Identifiers hold no ':' (``aiecs_core.models.ID_PATTERN``), so the split is exact."""
    parts = key.split(":")
    if (len(parts) != 6 or parts[0] != prefix or parts[1] != "t" or parts[5] != "state"
            or not parts[4].isdigit()):
        return None
    return parts[2], parts[3], int(parts[4])


def group_ids(group: str | None) -> tuple[str | None, str | None]:
    """``(batch_id, workflow_id)`` of an execution's ``group`` field (the key of its batch
    or workflow hash, see :func:`batch_key` and :func:`flow_key`)."""
    if not group:
        return None, None
    parts = group.split(":")
    if len(parts) == 4 and group.startswith(f"{PREFIX}:batch:"):
        return parts[3], None
    if len(parts) == 4 and group.startswith(FLOW_PREFIX):
        return None, parts[3]
    return None, None


def owned_key(owner: str, prefix: str = PREFIX) -> str:
    """Set of the state keys an owner (worker process) is executing."""
    return f"{prefix}:owned:{owner}"


def steps_key(user_id: str, task_id: str, prefix: str = PREFIX) -> str:
    """Set of the steps a task has run or queued."""
    return f"{prefix}:t:{user_id}:{task_id}:steps"


def celery_index_key(celery_id: str, prefix: str = PREFIX) -> str:
    """Celery task id -> the key of its execution's state hash."""
    return f"{prefix}:celery:{celery_id}"


# -- fair share (aiecs_worker.store.hold) --------------------------------------------------------
#: Sorted set: the windows that hold executions waiting for a slot.
BACKLOG_KEY = f"{PREFIX}:fair:backlog"


def window_key(queue: str, user_id: str) -> str:
    """Sorted set: the state keys of a user's executions sent to ``queue`` and not ended
    (its fair-share window); ``+ ":held"`` is the list of those waiting behind it."""
    return f"{PREFIX}:fair:{queue}:{user_id}"


# -- quotas (aiecs_worker.store.quotas) ----------------------------------------------------------
def quota_key(user_id: str, what: str) -> str:
    """A user's quota counter ``what`` (submit, active, batches)."""
    return f"{PREFIX}:quota:{user_id}:{what}"


# -- budgets (aiecs_worker.store.budgets) ---------------------------------------------------------
#: Appended to an execution's state key: the hash of what its admission reserved against
#: its user's budgets (``usd`` nano-dollars, ``tok`` tokens, ``day`` / ``month``: the
#: counter keys charged), removed by the terminal transition when it settles.
BUDGET_HOLD_SUFFIX = ":budget"


def budget_limits_key(user_id: str) -> str:
    """Hash: a user's budgets set by an operator (field ``set``; limits in nano-dollars
    and tokens), overriding AIECS_BUDGETS."""
    return f"{PREFIX}:budget:{user_id}:limits"


def budget_counter_key(user_id: str, period: str) -> str:
    """Hash: a user's spend in one period (``day:2026-12-06``, ``month:2026-12``):
    ``usd_spent``, ``usd_held``, ``tok_spent``, ``tok_held``, ``warned_usd``,
    ``warned_tok``."""
    return f"{PREFIX}:budget:{user_id}:{period}"


# -- rate limits (aiecs_worker.runner.ratelimit) --------------------------------------------------
def rate_limit_base(bucket: str | None, prefix: str = PREFIX) -> str:
    """The keys of one ``provider/model`` rate-limit bucket start with this (one hash slot)."""
    return f"{prefix}:rl:{{{bucket}}}"


# -- groups (aiecs_worker.producer) -------------------------------------------------------
#: Prefix of the workflow hashes.
FLOW_PREFIX = f"{PREFIX}:flow:"
#: Sorted set: workflow key -> when one of its steps last ended (ms) and was not yet
#: followed by an advance.
FLOWS_DUE_KEY = f"{PREFIX}:flows:due"


def batch_key(user_id: str, batch_id: str) -> str:
    """Hash of a batch (``+ ":items"``: its item list)."""
    return f"{PREFIX}:batch:{user_id}:{batch_id}"


def flow_key(user_id: str, task_id: str) -> str:
    """Hash of a workflow."""
    return f"{FLOW_PREFIX}{user_id}:{task_id}"


# -- schedules (aiecs_worker.producer.schedules, beat) --------------------------------------------
#: celery-redbeat's key prefix (its entries name tasks, not modules).
BEAT_PREFIX = f"{PREFIX}:beat:"


def schedule_key(user_id: str, task_id: str) -> str:
    """Hash of a user's schedule."""
    return f"{PREFIX}:sched:{user_id}:{task_id}"


def user_schedules_key(user_id: str) -> str:
    """Set of a user's scheduled task ids."""
    return f"{PREFIX}:sched:{user_id}"


def schedule_tick_key(user_id: str, task_id: str, tick: str) -> str:
    """One tick of a schedule (the step it fired)."""
    return f"{schedule_key(user_id, task_id)}:tick:{tick}"


# -- tokens (aiecs_worker.server.revocation) -----------------------------------------------
#: Prefix of the revoked token ids, users' cut-offs and the revocation generation.
REVOKED_PREFIX = f"{PREFIX}:revoked:"
