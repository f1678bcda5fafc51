"""Execution state in Redis: the atomic transitions of one ``(user_id, task_id, step)``.

The hash ``aiecs:t:{user}:{task}:{step}:state`` holds ``status``, ``celery_id``,
``deliveries``, ``result``/``error``/``usage`` (JSON) and timestamps. Transitions are Lua
scripts, so two processes never both move one execution to a terminal state; the winner's
terminal event is appended and published by the same script
(``events.FINISH_PUBLISH_LUA``).
"""

from __future__ import annotations

import json
from typing import Any

from aiecs_core import TERMINAL_STATUSES

from .hook import GROUP_HOOK_LUA
from .keys import (
    DUE_KEY,
    OWNED_PREFIX,
    PENDING_KEY,
    SUSPECT_KEY,
)
from .settle import SETTLE_LUA

__all__ = [
    "CANCEL_LUA",
    "MESSAGE_SLOT",
    "decode_state",
    "begin_lua",
    "finish_lua",
    "pending_lua",
]

_TERMINAL = "{" + ",".join(f"['{s.value}']=true" for s in TERMINAL_STATUSES) + "}"


NOW_MS_LUA = "local _t = redis.call('TIME'); local now_ms = _t[1] * 1000 + math.floor(_t[2] / 1000)"

#: Where the RUNNING event's message goes in the event JSON handed to begin_lua.
MESSAGE_SLOT = "@@AIECS_MESSAGE@@"


def begin_lua(then: str) -> str:
    """The ``begin`` transition, then the Lua code ``then`` when the execution starts
    running (it publishes the RUNNING event; the Lua local ``msg`` holds its message).

    KEYS: state, steps, celery index, owners, owned (this owner's).
    ARGV: celery_id, ttl, now, user_id, task_name, step, max_deliveries, owner, lease_ms,
    request json, queue, celery task name, force ('1' takes over from a live holder), then
    ``then``'s.  Returns {status, deliveries, cancel_requested, suspect, holder}:

    - status is the stored terminal status when the execution already finished (nothing
      changes then), 'busy' when another live owner holds it (nothing changes; holder
      set), else 'running';
    - deliveries counts the deliveries charged to this execution (losses in a crash it
      did not cause are spared, see aiecs_worker.store.lease).

    One HMGET reads what it decides on; the keys a submission already created (steps,
    celery index, TTL) are written only when the execution has no record yet.
    """
    return f"""
local terminal = {_TERMINAL}
local f = redis.call('HMGET', KEYS[1], 'status', 'owner', 'deliveries', 'spared',
                     'cancel_requested', 'suspect')
local st = f[1]
local delivered = tonumber(f[3] or '0')
if st and terminal[st] then return {{st, delivered, '', '', ''}} end
local holder = f[2] or ''
if st == 'running' and holder ~= '' and holder ~= ARGV[8] and ARGV[13] ~= '1' then
  {NOW_MS_LUA}
  local exp = redis.call('ZSCORE', KEYS[4], holder)
  if exp and tonumber(exp) > now_ms then return {{'busy', delivered, '', '', holder}} end
end
local n = delivered + 1 - tonumber(f[4] or '0')
local cancel = f[5] or ''
local run = n <= tonumber(ARGV[7]) and cancel == ''
local fields = {{'deliveries', delivered + 1, 'celery_id', ARGV[1], 'user_id', ARGV[4],
  'task_name', ARGV[5], 'step', ARGV[6], 'updated', ARGV[3], 'owner', ARGV[8],
  'request', ARGV[10], 'queue', ARGV[11], 'task', ARGV[12]}}
if run then
  fields[#fields + 1] = 'status'; fields[#fields + 1] = 'running'
  fields[#fields + 1] = 'started'; fields[#fields + 1] = ARGV[3]
end
redis.call('HSET', KEYS[1], unpack(fields))
if st == 'pending' then redis.call('ZREM', '{PENDING_KEY}', KEYS[1]) end
if not st then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[3], KEYS[1], 'EX', ARGV[2])
end
redis.call('SADD', KEYS[5], KEYS[1])
if run then
  local msg = 'started'
  if n > 1 then msg = 'redelivered after worker loss (delivery ' .. n .. ')' end
  {then}
end
return {{'running', n, cancel, f[6] or '', ''}}
"""


def finish_lua(then: str) -> str:
    """The terminal transition, then the Lua code ``then`` (run only by the winner).

    KEYS[1]: state.  ARGV[1..6]: status, result, error, usage, now, ttl.  Returns 0 when
    the execution was already terminal (nothing changes), else what ``then`` returns.
    A batch item or workflow step (field ``group``) tells its group in the same script
    (see aiecs_worker.store.hook). The execution leaves its fair-share window and
    the index of held executions (see aiecs_worker.store.hold). Its budget reservation is
    replaced by what it used (see aiecs_worker.store.settle).
    """
    return f"""
local terminal = {_TERMINAL}
local f = redis.call('HMGET', KEYS[1], 'status', 'owner', 'suspect', 'group', 'window',
                     'held')
if f[1] and terminal[f[1]] then return 0 end
if f[5] then redis.call('ZREM', f[5], KEYS[1]) end
if f[6] == 'due' then redis.call('ZREM', '{DUE_KEY}', KEYS[1]) end
if f[6] then redis.call('HDEL', KEYS[1], 'held') end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
           'usage', ARGV[4], 'finished', ARGV[5], 'updated', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if f[1] == 'pending' then redis.call('ZREM', '{PENDING_KEY}', KEYS[1]) end
if f[2] then
  if f[2] ~= '' then redis.call('SREM', '{OWNED_PREFIX}' .. f[2], KEYS[1]) end
  redis.call('HDEL', KEYS[1], 'request', 'owner')
elseif f[1] == 'pending' then
  redis.call('HDEL', KEYS[1], 'request')
end
if f[3] == '1' and redis.call('GET', '{SUSPECT_KEY}') == KEYS[1] then
  redis.call('DEL', '{SUSPECT_KEY}')
end
{GROUP_HOOK_LUA}
{SETTLE_LUA}
{then}"""


def pending_lua(then: str) -> str:
    """Record a submitted execution as pending unless it already has a state, then run the
    Lua code ``then`` (it publishes the PENDING event).

    KEYS: state, steps, celery index, pending.  ARGV: celery_id, ttl, now, user_id,
    task_name, step, request json, queue, celery task name, then ``then``'s.  Returns 0
    when the execution already had a state.
    """
    return f"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pending', 'celery_id', ARGV[1], 'user_id', ARGV[4],
           'task_name', ARGV[5], 'step', ARGV[6], 'submitted', ARGV[3], 'updated', ARGV[3],
           'request', ARGV[7], 'queue', ARGV[8], 'task', ARGV[9])
{NOW_MS_LUA}
redis.call('ZADD', KEYS[4], now_ms, KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], KEYS[1], 'EX', ARGV[2])
{then}"""


# KEYS: state.  ARGV: now, ttl.  Marks a cancel request unless already terminal.
CANCEL_LUA = f"""
local terminal = {_TERMINAL}
local st = redis.call('HGET', KEYS[1], 'status')
if st and terminal[st] then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1], 'updated', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""



def decode_state(raw: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    """A state hash as a JSON-ready dict (JSON fields parsed)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        val = v.decode() if isinstance(v, bytes) else v
        if key == "request":
            continue  # the task's arguments, kept only while it runs (for re-delivery)
        if key in ("result", "error", "usage"):
            val = json.loads(val) if val else None
        elif key in ("step", "deliveries", "spared"):
            val = int(val)
        elif key in ("started", "finished", "submitted", "updated", "cancel_requested", "eta"):
            val = float(val) if val else None
        out[key] = val
    return out
