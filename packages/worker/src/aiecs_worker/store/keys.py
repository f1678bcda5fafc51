"""Every Redis key name and prefix aiecs uses, in one place.

A new key is added here (with what it holds); the modules that read or write it import
its name. Imports nothing from aiecs_worker.
"""

from __future__ import annotations

import os
import zlib

__all__ = [
    "CLUSTER_ENV", "SHARDS", "SHARDS_ENV", "SHARD_PREFIXES",
    "BASE_PREFIX", "BEAT_PREFIX", "BUDGET_HOLD_SUFFIX", "budget_counter_key",
    "budget_limits_key", "CANCEL_CHANNEL", "DEADLETTER_KEY", "DUE", "FLOWS_DUE",
    "OUTBOX", "OUTBOX_GROUP", "OWNED", "OWNERS", "PENDING", "PREFIX", "RECORDER_LOCK_KEY",
    "RETENTION", "REVOKED_PREFIX", "SUSPECT", "BACKLOG", "TaskKeys", "backlog_key",
    "CELERY_INDEX", "FLOW", "batch_key", "celery_index_key", "is_flow_key", "due_key",
    "flow_key", "flows_due_key", "group_ids",
    "outbox_key", "owned_key", "owners_key", "parse_state_key", "pending_key", "prefix_of",
    "quota_key", "rate_limit_base", "retention_key", "schedule_key", "schedule_tick_key",
    "shard_number", "shard_of", "shard_prefix", "shard_tag", "steps_key", "suspect_key",
    "task_of_key", "user_prefix", "DEFAULT_CLUSTER_SHARDS",
    "user_schedules_key", "user_tasks_pattern", "window_key",
    "FINISH_KEYS", "finish_key", "finish_keys", "steps_of_state",
]

#: The environment variable (AIECS_REDIS_CLUSTER, declared and checked in
#: aiecs_worker.settings) that puts aiecs's keys under hash tags for a Redis Cluster.
CLUSTER_ENV = "AIECS_REDIS_CLUSTER"
#: The environment variable (AIECS_REDIS_SHARDS, declared and checked in
#: aiecs_worker.settings): how many hash tags (shards) aiecs's keys spread over.
SHARDS_ENV = "AIECS_REDIS_SHARDS"
#: AIECS_REDIS_SHARDS's default on a Redis Cluster (off a cluster there is one shard).
DEFAULT_CLUSTER_SHARDS = 16


def _cluster_prefix() -> bool:
    """Whether this process's keys carry hash tags (read once, at import: a key name
    is a deployment constant every process must agree on; the settings check the value)."""
    return os.environ.get(CLUSTER_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _shards(cluster: bool) -> int:
    """AIECS_REDIS_SHARDS as this module reads it at import (1 for anything but a positive
    integer on a cluster: the settings refuse such a value with a clear error)."""
    raw = os.environ.get(SHARDS_ENV, "").strip()
    if not cluster:
        return 1
    if not raw:
        return DEFAULT_CLUSTER_SHARDS
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


_CLUSTER = _cluster_prefix()
#: How many shards aiecs's keys are spread over: AIECS_REDIS_SHARDS on a Redis Cluster
#: (default 16), else 1.
SHARDS = _shards(_CLUSTER)

#: The prefix of the keys that belong to no user (beat's entries, revoked tokens, dead
#: letters, the recorder's lock, rate limits): ``aiecs``, or on a Redis Cluster the hash
#: tag ``{aiecs}``. No Lua script touches them together with a user's keys.
BASE_PREFIX = "{aiecs}" if _CLUSTER else "aiecs"
#: The default ``prefix`` of the functions below: :data:`BASE_PREFIX`.
PREFIX = BASE_PREFIX


def shard_tag(shard: int, shards: int) -> str:
    """The hash tag of shard ``shard`` of ``shards`` on a Redis Cluster: ``{aiecs}`` when
    there is one, else ``{aiecs-<n>}``: every key of a shard is in one slot, different
    shards in (usually) different slots."""
    return "{aiecs}" if shards == 1 else f"{{aiecs-{shard}}}"


def shard_number(user_id: str, shards: int) -> int:
    """A user's shard of ``shards``: CRC-32 of the id modulo ``shards`` (stable across
    processes and versions)."""
    return zlib.crc32(user_id.encode()) % shards


def shard_prefix(shard: int) -> str:
    """The prefix of shard ``shard``'s keys in this process: :data:`BASE_PREFIX` when
    there is one shard (the key names of a deployment without shards), else
    :func:`shard_tag`."""
    return BASE_PREFIX if SHARDS == 1 else shard_tag(shard, SHARDS)


#: Every shard's prefix, shard 0 first: what the readers of the per-shard sets loop over.
SHARD_PREFIXES = tuple(shard_prefix(n) for n in range(SHARDS))


def shard_of(user_id: str) -> int:
    """The shard of a user (:func:`shard_number` of :data:`SHARDS`). A user's keys and
    executions are all in its shard, so a script that touches several of them (an
    execution and its user's quotas, budgets, fair-share window) touches one slot."""
    return shard_number(user_id, SHARDS) if SHARDS > 1 else 0


def user_prefix(user_id: str) -> str:
    """The prefix of a user's keys (its shard's)."""
    return SHARD_PREFIXES[shard_of(user_id)]


def prefix_of(key: str) -> str:
    """The shard prefix a key of a user starts with (``{aiecs-3}`` of
    ``{aiecs-3}:t:u:t1:1:state``): where the per-shard sets of that key's execution are."""
    return key.split(":", 1)[0]


# -- per-shard sets (one per shard; passed to the scripts in KEYS) ---------------------------
#: Sorted set: execution owner (one worker process) -> when its lease ends (Redis ms).
OWNERS = ":owners"
#: Set per owner (``+ owner``): the state keys of the shard it is executing.
OWNED = ":owned:"
#: Sorted set: PENDING executions -> when they were submitted (Redis ms); the sweeper
#: queues again one whose message the broker lost (see aiecs_worker.store.lease).
PENDING = ":pending"
#: Sorted set: executions held in Redis until they are due (state key -> due time, ms;
#: see aiecs_worker.store.hold).
DUE = ":held:due"
#: The one crash suspect of the shard allowed to run at a time (aiecs_worker.store.lease).
SUSPECT = ":suspect"
#: String: the workers' AIECS_EVENTS_TTL (seconds), set in every shard by each worker
#: process's sweeper; every terminal transition gives an execution's keys this TTL,
#: whichever process makes it (a cancel from the server, say). See docs/operations.md,
#: "Retention".
RETENTION = ":retention"
#: Stream: the outbox of finished executions. The terminal script appends one entry per
#: execution (its state hash, request included, plus ``key``: the state key); the
#: recorders (consumer group :data:`OUTBOX_GROUP`) write it to the history database and
#: delete it. Never trimmed: its length is the recorders' backlog.
OUTBOX = ":outbox"
#: Set: the fair-share windows that hold executions waiting for a slot.
BACKLOG = ":fair:backlog"
#: Sorted set: workflow key -> when one of its steps last ended (ms) and was not yet
#: followed by an advance.
FLOWS_DUE = ":flows:due"


def owners_key(prefix: str) -> str:
    return prefix + OWNERS


def owned_key(owner: str, prefix: str) -> str:
    """Set of the state keys of shard ``prefix`` an owner (worker process) is executing."""
    return f"{prefix}{OWNED}{owner}"


def pending_key(prefix: str) -> str:
    return prefix + PENDING


def due_key(prefix: str) -> str:
    return prefix + DUE


def suspect_key(prefix: str) -> str:
    return prefix + SUSPECT


def retention_key(prefix: str) -> str:
    return prefix + RETENTION


def outbox_key(prefix: str) -> str:
    return prefix + OUTBOX


def backlog_key(prefix: str) -> str:
    return prefix + BACKLOG


def flows_due_key(prefix: str) -> str:
    return prefix + FLOWS_DUE


#: Pub/sub channel on which cancel requests (Celery task ids) are broadcast to workers.
CANCEL_CHANNEL = f"{BASE_PREFIX}:cancel"
#: List of malformed broker messages, newest first (see aiecs_worker.runner.poison).
DEADLETTER_KEY = f"{BASE_PREFIX}:deadletter"

# -- history (aiecs_worker.history) ---------------------------------------------------------
#: The recorders' consumer group on each shard's outbox (:func:`outbox_key`).
OUTBOX_GROUP = "recorders"
#: The lock held by the one recorder running the retention job.
RECORDER_LOCK_KEY = f"{PREFIX}:recorder:retention"


class TaskKeys:
    """Redis keys of one user's task (and of one of its steps)."""

    def __init__(self, user_id: str, task_id: str, prefix: str | None = None):
        base = f"{prefix or user_prefix(user_id)}:t:{user_id}:{task_id}"
        #: counter: the task's last event seq
        self.seq = f"{base}:seq"
        #: stream: the task's durable event log
        self.log = f"{base}:log"
        self._base = base

    def state(self, step: int) -> str:
        """Hash: status, celery_id, result, error, usage, updated (per step)."""
        return f"{self._base}:{step}:state"


def user_tasks_pattern(user_id: str) -> str:
    """SCAN pattern of every key of a user's tasks (``TaskKeys`` and ``steps_key``); user
    ids match ``aiecs_core.ID_PATTERN``: no ``:`` nor glob characters."""
    return f"{user_prefix(user_id)}:t:{user_id}:*"


def task_of_key(key: str, user_id: str) -> str | None:
    """The task id in a key of ``user_tasks_pattern(user_id)`` (None for another key)."""
    head = f"{user_prefix(user_id)}:t:{user_id}:"
    if not key.startswith(head):
        return None
    return key[len(head):].split(":", 1)[0] or None


def parse_state_key(key: str) -> tuple[str, str, int] | None:
    """``(user_id, task_id, step)`` of a state key (:meth:`TaskKeys.state`), or None.
    Identifiers hold no ':' (``aiecs_core.models.ID_PATTERN``), so the split is exact."""
    parts = key.split(":")
    if (len(parts) != 6 or parts[0] not in SHARD_PREFIXES or parts[1] != "t"
            or parts[5] != "state"
            or not parts[4].isdigit()):
        return None
    return parts[2], parts[3], int(parts[4])


def group_ids(group: str | None) -> tuple[str | None, str | None]:
    """``(batch_id, workflow_id)`` of an execution's ``group`` field (the key of its batch
    or workflow hash, see :func:`batch_key` and :func:`flow_key`)."""
    if not group:
        return None, None
    parts = group.split(":")
    if len(parts) == 4 and parts[0] in SHARD_PREFIXES and parts[1] == "batch":
        return parts[3], None
    if len(parts) == 4 and parts[0] in SHARD_PREFIXES and parts[1] == FLOW:
        return None, parts[3]
    return None, None


def steps_key(user_id: str, task_id: str) -> str:
    """Set of the steps a task has run or queued."""
    return f"{user_prefix(user_id)}:t:{user_id}:{task_id}:steps"


def steps_of_state(state_key: str) -> str:
    """The step set of the task a state key (:meth:`TaskKeys.state`) belongs to."""
    return state_key.rsplit(":", 2)[0] + ":steps"


#: Appended to a shard's prefix, then the Celery id: :func:`celery_index_key`.
CELERY_INDEX = ":celery:"


def celery_index_key(celery_id: str, prefix: str) -> str:
    """Celery task id -> the key of its execution's state hash, in the shard ``prefix``
    of the execution's user (a Celery id alone names no user: a lookup by id reads every
    shard's)."""
    return f"{prefix}{CELERY_INDEX}{celery_id}"


# -- the terminal transition's KEYS (aiecs_worker.store.state.finish_lua) -------------------------
#: What the terminal transition's KEYS hold, in order: every key whose name its caller
#: knows (the execution's state, its task's seq, log and step set, its shard's sets, its
#: budget reservation); the keys it can only learn from the state it reads are listed in
#: finish_lua's docstring.
FINISH_KEYS = ("state", "seq", "log", "steps", "pending", "due", "retention", "outbox",
               "suspect", "flows_due", "budget_hold")


def finish_key(name: str) -> str:
    """The Lua expression of the terminal transition's key ``name`` (``KEYS[i]``)."""
    return f"KEYS[{FINISH_KEYS.index(name) + 1}]"


def finish_keys(state_key: str, seq: str, log: str) -> list[str]:
    """The KEYS of the terminal transition of the execution ``state_key`` (its task's
    ``seq`` and ``log`` given: the publisher may name them with another prefix)."""
    shard = prefix_of(state_key)
    return [state_key, seq, log, steps_of_state(state_key), pending_key(shard),
            due_key(shard), retention_key(shard), outbox_key(shard), suspect_key(shard),
            flows_due_key(shard), state_key + BUDGET_HOLD_SUFFIX]


# -- fair share (aiecs_worker.store.hold) --------------------------------------------------------
def window_key(queue: str, user_id: str, prefix: str | None = None) -> str:
    """Sorted set: the state keys of a user's executions sent to ``queue`` and not ended
    (its fair-share window); ``+ ":held"`` is the list of those waiting behind it. (With
    ``user_id`` empty and a shard ``prefix``: what every window of that queue in that
    shard starts with.)"""
    return f"{prefix or user_prefix(user_id)}:fair:{queue}:{user_id}"


# -- quotas (aiecs_worker.store.quotas) ----------------------------------------------------------
def quota_key(user_id: str, what: str) -> str:
    """A user's quota counter ``what`` (submit, active, batches)."""
    return f"{user_prefix(user_id)}:quota:{user_id}:{what}"


# -- budgets (aiecs_worker.store.budgets) ---------------------------------------------------------
#: Appended to an execution's state key: the hash of what its admission reserved against
#: its user's budgets (``usd`` nano-dollars, ``tok`` tokens, ``day`` / ``month``: the
#: counter keys charged), removed by the terminal transition when it settles.
BUDGET_HOLD_SUFFIX = ":budget"


def budget_limits_key(user_id: str) -> str:
    """Hash: a user's budgets set by an operator (field ``set``; limits in nano-dollars
    and tokens), overriding AIECS_BUDGETS."""
    return f"{user_prefix(user_id)}:budget:{user_id}:limits"


def budget_counter_key(user_id: str, period: str) -> str:
    """Hash: a user's spend in one period (``day:2026-12-06``, ``month:2026-12``):
    ``usd_spent``, ``usd_held``, ``tok_spent``, ``tok_held``, ``warned_usd``,
    ``warned_tok``."""
    return f"{user_prefix(user_id)}:budget:{user_id}:{period}"


# -- rate limits (aiecs_worker.runner.ratelimit) --------------------------------------------------
def rate_limit_base(bucket: str | None, prefix: str = PREFIX) -> str:
    """The keys of one ``provider/model`` rate-limit bucket start with this (one hash slot)."""
    return f"{prefix}:rl:{{{bucket}}}"


# -- groups (aiecs_worker.producer) -------------------------------------------------------
#: The second part of a workflow hash's key (``<shard prefix>:flow:<user>:<task>``).
FLOW = "flow"


def is_flow_key(key: str) -> bool:
    """Whether ``key`` (an execution's ``group``) is a workflow's hash (:func:`flow_key`)."""
    parts = key.split(":")
    return len(parts) == 4 and parts[0] in SHARD_PREFIXES and parts[1] == FLOW


def batch_key(user_id: str, batch_id: str) -> str:
    """Hash of a batch (``+ ":items"``: its item list)."""
    return f"{user_prefix(user_id)}:batch:{user_id}:{batch_id}"


def flow_key(user_id: str, task_id: str) -> str:
    """Hash of a workflow."""
    return f"{user_prefix(user_id)}:{FLOW}:{user_id}:{task_id}"


# -- schedules (aiecs_worker.producer.schedules, beat) --------------------------------------------
#: celery-redbeat's key prefix (its entries name tasks, not modules).
BEAT_PREFIX = f"{PREFIX}:beat:"


def schedule_key(user_id: str, task_id: str) -> str:
    """Hash of a user's schedule."""
    return f"{user_prefix(user_id)}:sched:{user_id}:{task_id}"


def user_schedules_key(user_id: str) -> str:
    """Set of a user's scheduled task ids."""
    return f"{user_prefix(user_id)}:sched:{user_id}"


def schedule_tick_key(user_id: str, task_id: str, tick: str) -> str:
    """One tick of a schedule (the step it fired)."""
    return f"{schedule_key(user_id, task_id)}:tick:{tick}"


# -- tokens (aiecs_worker.server.revocation) -----------------------------------------------
#: Prefix of the revoked token ids, users' cut-offs and the revocation generation.
REVOKED_PREFIX = f"{PREFIX}:revoked:"
