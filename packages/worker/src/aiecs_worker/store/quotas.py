"""Quotas per user: what one user may submit, checked before anything is recorded or queued.

Every entry point calls :func:`admit` (``control.submit``, ``submit_batch``,
``submit_workflow``, ``schedules.create``, and through them every HTTP route that submits).
One Lua script, atomically per user:

- **submissions per second**: a token bucket ``aiecs:quota:{user}:submit`` (a hash of
  ``t`` tokens and ``ts`` seconds, Redis's clock; it expires once full again). A task, a
  batch, a workflow, a schedule each take one token.
- **executions queued and in flight**: the sorted set ``aiecs:quota:{user}:active`` of the
  state keys of the user's admitted executions (score: when admitted). A submission of
  ``n`` executions passes while the set holds at most ``limit - n``; the same execution
  admitted again is not counted twice.
- **batches in flight**: the sorted set ``aiecs:quota:{user}:batches`` of batch keys.

Nothing on the hot path removes members: when a submission would be refused for a count,
:func:`_prune` first drops the members that ended (their state is terminal, or gone and
older than :data:`GRACE`; a batch whose items all ended, or gone), at most once a second
per user, and the script runs again. A refusal raises :class:`~aiecs_core.QuotaExceededError`
with ``retry_after`` (HTTP 429 with ``Retry-After``) and names the limit and its setting.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from aiecs_core import TERMINAL_STATUSES, QuotaExceededError

from ..ops import metrics
from ..settings import get_settings
from .events import run_script
from .keys import quota_key, steps_key
from .records import state_redis

__all__ = ["admit", "check_steps", "never", "refused", "retry_after_header"]

#: Seconds a refused count (executions, batches) tells the user to wait: they free up when
#: executions end, which nothing here can predict.
COUNT_RETRY_AFTER = 5
#: Seconds an admitted execution without a state record yet is still counted (its
#: PENDING record is written just after admission).
GRACE = 60.0
_TERMINAL = {s.value.encode() for s in TERMINAL_STATUSES}
_CHUNK = 1000

# KEYS: bucket, active, batches.  ARGV: rate, burst, max active, max batches, ttl,
# batch member ('' for none), then numbered members (prefix, count, suffix: members
# prefix..i..suffix for i in 0..count-1, a batch's items, sent as three strings), then
# the execution members.
# Returns {0, ''} admitted, or {1, wait seconds} rate, {2, ''} executions, {3, ''} batches.
_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = burst
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
if b[1] then
  tokens = math.min(burst, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * rate)
end
if tokens < 1 then return {1, tostring((1 - tokens) / rate)} end
local gen = tonumber(ARGV[8])
local n = gen + #ARGV - 9
local function member(i)
  if i <= gen then return ARGV[7] .. (i - 1) .. ARGV[9] end
  return ARGV[9 + i - gen]
end
if n > 0 and redis.call('ZCARD', KEYS[2]) + n > tonumber(ARGV[3]) then
  local fresh = 0
  for i = 1, n do
    if not redis.call('ZSCORE', KEYS[2], member(i)) then fresh = fresh + 1 end
  end
  if redis.call('ZCARD', KEYS[2]) + fresh > tonumber(ARGV[3]) then return {2, ''} end
end
if ARGV[6] ~= '' and not redis.call('ZSCORE', KEYS[3], ARGV[6])
   and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return {3, ''} end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
for i = 1, n, 1000 do
  local args = {}
  for j = i, math.min(i + 999, n) do
    args[#args + 1] = now
    args[#args + 1] = member(j)
  end
  redis.call('ZADD', KEYS[2], unpack(args))
end
if n > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[3], now, ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return {0, ''}
"""


def _key(user_id: str, what: str) -> str:
    return quota_key(user_id, what)


def refused(message: str, limit: int | float, setting: str, retry_after: float
            ) -> QuotaExceededError:
    """A refusal that frees up after ``retry_after`` seconds (HTTP 429), counted in
    ``aiecs_quota_refusals_total``."""
    metrics.quota_refused(setting)
    return QuotaExceededError(message, limit=limit, setting=setting, retry_after=retry_after)


def never(message: str, limit: int | float, setting: str) -> QuotaExceededError:
    """A refusal the same request can never pass (HTTP 422): no ``retry_after``; counted
    in ``aiecs_quota_refusals_total``."""
    metrics.quota_refused(setting)
    return QuotaExceededError(message, limit=limit, setting=setting, retryable=False)


def admit(user_id: str, executions: Sequence[str] = (), *, batch: str | None = None,
          numbered: tuple[str, int, str] = ("", 0, ""), client: Any = None) -> None:
    """Count one submission of ``user_id`` with the state keys of its ``executions`` and
    the ``numbered`` ones (``(prefix, count, suffix)``: ``f"{prefix}{i}{suffix}"`` for
    ``i`` in ``range(count)``, a batch's items in a few bytes), and the key of its
    ``batch``; or raise :class:`QuotaExceededError` with nothing counted."""
    s = get_settings()
    asked = len(executions) + numbered[1]
    if asked > s.aiecs_user_max_active:
        raise never(f"{asked} executions in one submission: a user may have at "
                    f"most {s.aiecs_user_max_active} queued or running "
                    "(limit set by AIECS_USER_MAX_ACTIVE)",
                    s.aiecs_user_max_active, "AIECS_USER_MAX_ACTIVE")
    client = client or state_redis()
    keys = [_key(user_id, "submit"), _key(user_id, "active"), _key(user_id, "batches")]
    ttl = s.aiecs_events_ttl + 3600  # members outlive their states' ttl by an hour at most
    args = [repr(s.aiecs_user_submit_rate), s.aiecs_user_submit_burst,
            s.aiecs_user_max_active, s.aiecs_user_max_batches, ttl, batch or "",
            *numbered, *executions]
    for attempt in (0, 1):
        code, wait = run_script(client, _ADMIT_LUA, keys, args)
        code = int(code)
        if code == 0:
            return
        if code == 1 or attempt or not _prune(client, user_id):
            break
    if code == 1:
        rate, burst = s.aiecs_user_submit_rate, s.aiecs_user_submit_burst
        raise refused(
            f"too many submissions: limit {rate:g} per second (burst {burst}) per user, "
            "set by AIECS_USER_SUBMIT_RATE and AIECS_USER_SUBMIT_BURST",
            rate, "AIECS_USER_SUBMIT_RATE", max(0.001, float(wait)))
    if code == 2:
        limit = s.aiecs_user_max_active
        raise refused(
            f"too many executions queued or running: limit {limit} per user, set by "
            f"AIECS_USER_MAX_ACTIVE ({asked} more asked); retry when some end",
            limit, "AIECS_USER_MAX_ACTIVE", COUNT_RETRY_AFTER)
    limit = s.aiecs_user_max_batches
    raise refused(
        f"too many batches in flight: limit {limit} per user, set by "
        "AIECS_USER_MAX_BATCHES; retry when one finishes (or cancel one)",
        limit, "AIECS_USER_MAX_BATCHES", COUNT_RETRY_AFTER)


def _prune(client: Any, user_id: str) -> bool:
    """Drop the user's members that ended; False when another call pruned within the last
    second (then the counts stand)."""
    if not client.set(_key(user_id, "pruned"), 1, nx=True, ex=1):
        return False
    now = float(client.time()[0])
    active = _key(user_id, "active")
    members = client.zrange(active, 0, -1, withscores=True)
    dead = []
    for start in range(0, len(members), _CHUNK):
        chunk = members[start:start + _CHUNK]
        pipe = client.pipeline(transaction=False)
        for member, _ in chunk:
            pipe.hget(member, "status")
        for (member, score), status in zip(chunk, pipe.execute(), strict=True):
            if status in _TERMINAL or (status is None and score < now - GRACE):
                dead.append(member)
    batches = _key(user_id, "batches")
    entries = client.zrange(batches, 0, -1)
    pipe = client.pipeline(transaction=False)
    for key in entries:
        pipe.hmget(key, "done", "total")
    ended = [key for key, (done, total) in zip(entries, pipe.execute(), strict=True)
             if total is None or int(done or 0) >= int(total)]
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(dead), _CHUNK):
        pipe.zrem(active, *dead[start:start + _CHUNK])
    if ended:
        pipe.zrem(batches, *ended)
    pipe.execute()
    return True


def check_steps(client: Any, user_id: str, task_id: str, step: int,
                steps: Collection[int] | None = None) -> None:
    """Refuse a new step of a task that has AIECS_MAX_STEPS_PER_TASK steps already.
    ``steps``: the task's steps as the caller just read them (``POST /tasks`` reads them
    to number the step): the check reads nothing more."""
    limit = get_settings().aiecs_max_steps_per_task
    if steps is not None:
        count, known = len(steps), step in steps
    else:
        key = steps_key(user_id, task_id)
        pipe = client.pipeline(transaction=False)
        pipe.scard(key)
        pipe.sismember(key, step)
        count, known = pipe.execute()
    if count >= limit and not known:
        raise never(f"task {task_id!r} has {count} steps: limit {limit} steps per task, set "
                    "by AIECS_MAX_STEPS_PER_TASK; submit to a new task_id",
                    limit, "AIECS_MAX_STEPS_PER_TASK")


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
