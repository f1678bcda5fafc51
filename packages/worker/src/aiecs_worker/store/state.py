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

from .hook import GROUP_HOOK_LUA
from .keys import CELERY_INDEX, OWNED, finish_key
from .results import PUBLISH_LUA as CELERY_PUBLISH_LUA
from .scripts import TERMINAL_LUA
from .settle import SETTLE_LUA

__all__ = [
    "CANCEL_LUA",
    "MESSAGE_SLOT",
    "SHARD_LUA",
    "decode_state",
    "begin_lua",
    "finish_lua",
    "pending_lua",
]

_TERMINAL = TERMINAL_LUA


#: Lua: ``P``, the shard prefix of KEYS[1] (an execution's key): what a script names the
#: few keys it learns from what it reads with (an owner's set, a Celery index entry), so
#: they are in KEYS[1]'s hash slot. Every key the caller can name is in KEYS.
SHARD_LUA = "local P = string.match(KEYS[1], '^[^:]+')"

NOW_MS_LUA = "local _t = redis.call('TIME'); local now_ms = _t[1] * 1000 + math.floor(_t[2] / 1000)"

#: Where the RUNNING event's message goes in the event JSON handed to begin_lua.
MESSAGE_SLOT = "@@AIECS_MESSAGE@@"


def begin_lua(then: str) -> str:
    """The ``begin`` transition, then the Lua code ``then`` when the execution starts
    running (it publishes the RUNNING event; the Lua local ``msg`` holds its message).

    KEYS: state, steps, celery index, owners, owned (this owner's), then ``then``'s
    (the seq and log: KEYS[6], KEYS[7]), then the shard's pending index (KEYS[8]).
    ARGV: celery_id, ttl, now, user_id, task_name, step, max_deliveries, owner, lease_ms,
    request json, queue, celery task name, flags ('1': take over from a live holder;
    'x': do not start it, it cannot run: the caller ends it), then ``then``'s.  Returns
    {status, deliveries, cancel_requested, suspect, holder, prior status, prior
    deliveries} (the last two when it changed the record: what it found, for the
    metrics: a first delivery of a PENDING record, a redelivery):

    - status is the stored terminal status when the execution already finished (nothing
      changes then), 'busy' when another live owner holds it (nothing changes; holder
      set), else 'running';
    - deliveries counts the deliveries charged to this execution (losses in a crash it
      did not cause are spared, see aiecs_worker.store.lease).

    One HMGET reads what it decides on; the keys a submission already created (steps,
    celery index, TTL) are written only when the execution has no record yet.
    Every key it touches is in KEYS.
    """
    return f"""
local terminal = {_TERMINAL}
local f = redis.call('HMGET', KEYS[1], 'status', 'owner', 'deliveries', 'spared',
                     'cancel_requested', 'suspect', 'celery_id')
local st = f[1]
local delivered = tonumber(f[3] or '0')
if st and terminal[st] then return {{st, delivered, '', '', ''}} end
local holder = f[2] or ''
if st == 'running' and holder ~= '' and holder ~= ARGV[8]
   and not string.find(ARGV[13], '1', 1, true) then
  {NOW_MS_LUA}
  local exp = redis.call('ZSCORE', KEYS[4], holder)
  if exp and tonumber(exp) > now_ms then return {{'busy', delivered, '', '', holder}} end
end
local n = delivered + 1 - tonumber(f[4] or '0')
local cancel = f[5] or ''
local run = n <= tonumber(ARGV[7]) and cancel == ''
  and not string.find(ARGV[13], 'x', 1, true)
local fields = {{'deliveries', delivered + 1, 'celery_id', ARGV[1], 'user_id', ARGV[4],
  'task_name', ARGV[5], 'step', ARGV[6], 'updated', ARGV[3], 'owner', ARGV[8],
  'request', ARGV[10], 'queue', ARGV[11], 'task', ARGV[12]}}
if run then
  fields[#fields + 1] = 'status'; fields[#fields + 1] = 'running'
  fields[#fields + 1] = 'started'; fields[#fields + 1] = ARGV[3]
end
redis.call('HSET', KEYS[1], unpack(fields))
if st == 'pending' then redis.call('ZREM', KEYS[8], KEYS[1]) end
if not st then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[3], KEYS[1], 'EX', ARGV[2])
elseif f[7] ~= ARGV[1] then
  -- another Celery id for this execution (a resubmission with its own id): its index
  -- too, so its result is found in the record (aiecs_worker.store.results)
  redis.call('SET', KEYS[3], KEYS[1], 'EX', ARGV[2])
end
redis.call('SADD', KEYS[5], KEYS[1])
if run then
  local msg = 'started'
  if n > 1 then msg = 'redelivered after worker loss (delivery ' .. n .. ')' end
  {then}
end
return {{'running', n, cancel, f[6] or '', '', st or '', delivered}}
"""


#: Retention at the terminal transition (KEYS as :func:`finish_lua`'s; ``terminal`` in
#: scope): the Lua local ``ttl`` is the workers' AIECS_EVENTS_TTL: ARGV[6] as given when it
#: starts with ``=`` (a worker's own, the value every worker writes to the shard's RETENTION
#: key: no read), else that key's or, before any worker started, ARGV[6] (the caller's: a
#: cancel from the server, say). ``retain(k)`` gives a key the task's steps share (steps,
#: seq, log) that TTL, unless it holds a longer one for another step still waiting (one
#: scheduled further ahead than the TTL, say): then it is left alone. The keys' TTLs are
#: read only when the task has another step (its steps set has more than this one): a
#: one-step task's keys get the TTL directly, with no ``TTL`` read each.
_RETAIN_LUA = f"""
local ttl
if string.sub(ARGV[6], 1, 1) == '=' then ttl = tonumber(string.sub(ARGV[6], 2))
else ttl = tonumber(redis.call('GET', {finish_key("retention")}) or '') or tonumber(ARGV[6]) end
local steps = {finish_key("steps")}
local alone = redis.call('SCARD', steps) <= 1
local waiting = nil
local function retain(k)
  if alone then
    redis.call('EXPIRE', k, ttl)
    return
  end
  local left = redis.call('TTL', k)
  if left == -2 then return end
  if left > ttl then
    if waiting == nil then
      waiting = false
      local base = string.sub(steps, 1, -6)
      for _, st in ipairs(redis.call('SMEMBERS', steps)) do
        local other = base .. st .. ':state'
        local s2 = other ~= KEYS[1] and redis.call('HGET', other, 'status')
        if s2 and not terminal[s2] then waiting = true; break end
      end
    end
    if waiting then return end
  end
  redis.call('EXPIRE', k, ttl)
end
"""


def finish_lua(then: str, extra: int = 7) -> str:
    """The terminal transition, then the Lua code ``then`` (run only by the winner).

    KEYS: :data:`aiecs_worker.store.keys.FINISH_KEYS` (state, the task's seq and log, which
    ``then`` uses, its step set, the shard's pending index, held index, retention, outbox,
    crash suspect and due workflows, the execution's budget reservation; built by
    :func:`aiecs_worker.store.keys.finish_keys`).  ARGV[1..6]: status, result, error, usage,
    now, ttl; ARGV[extra], ARGV[extra + 1] and ARGV[extra + 2] (optional): ``meta`` (JSON:
    what the history row needs that the state lacks, see
    :func:`aiecs_worker.store.records.terminal_fields`), ``1`` to append to the outbox of
    the execution's shard (empty: history off) and the Celery result meta the script
    publishes on Celery's channel (empty: Celery stores its own; see
    aiecs_worker.store.results).  Returns 0 when the execution was already terminal
    (nothing changes), else what ``then`` returns.
    Every key of the execution gets the workers' TTL (:data:`_RETAIN_LUA`: ``then`` calls
    ``retain`` on the task's seq and log).
    A batch item or workflow step (field ``group``) tells its group in the same script
    (see aiecs_worker.store.hook). The execution leaves its fair-share window and
    the index of held executions (see aiecs_worker.store.hold). Its budget reservation is
    replaced by what it used (see aiecs_worker.store.settle). The finished state, its
    ``request`` included (read before it is deleted), is appended to the outbox of its
    shard (:func:`aiecs_worker.store.keys.outbox_key`) for the history recorders: two
    commands (HGETALL, XADD) in the same atomic step, so every terminal state has its
    entry.

    Keys not in KEYS, known only from what the script reads (each in KEYS[1]'s hash slot
    by construction; ``tests/worker/test_script_keys.py`` lists them):

    - the fair-share window (field ``window``, written by the admission from its KEYS:
      the user's shard), and its FIFO of held executions (``window .. ':held'``, which
      the worker's terminal step asks about: events.HELD_LUA);
    - the Celery index entry ``P .. ':celery:' .. celery_id`` (``P``: KEYS[1]'s shard
      prefix; the Celery id is the state's: a cancel or a sweep does not know it);
    - the owner's set ``P .. ':owned:' .. owner`` (the owner is the state's: the process
      ending the execution may be another one);
    - the other steps' states of the task (``retain``: the step numbers are the step
      set's members);
    - the group hash and its item list, seq and log (the ``group`` field and the group
      hash's fields: batch and workflow keys of the user, see aiecs_worker.store.hook);
    - the budget counters the reservation charged (the reservation's ``day`` and
      ``month`` fields: the periods it was made in, see aiecs_worker.store.settle).
    """
    return f"""
local terminal = {_TERMINAL}
{SHARD_LUA}
local f = redis.call('HMGET', KEYS[1], 'status', 'owner', 'suspect', 'group', 'window',
                     'held', 'celery_id')
if f[1] and terminal[f[1]] then return 0 end
if f[5] then redis.call('ZREM', f[5], KEYS[1]) end
if f[6] == 'due' then redis.call('ZREM', {finish_key('due')}, KEYS[1]) end
if f[6] then redis.call('HDEL', KEYS[1], 'held') end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
           'usage', ARGV[4], 'finished', ARGV[5], 'updated', ARGV[5],
           'meta', ARGV[{extra}] or '')
{_RETAIN_LUA}
redis.call('EXPIRE', KEYS[1], ttl)
if f[7] then redis.call('EXPIRE', P .. '{CELERY_INDEX}' .. f[7], ttl) end
retain(steps)
do
  if ARGV[{extra + 1}] == '1' then
    redis.call('XADD', {finish_key('outbox')}, '*', 'key', KEYS[1],
               unpack(redis.call('HGETALL', KEYS[1])))
  end
end
if f[1] == 'pending' then redis.call('ZREM', {finish_key('pending')}, KEYS[1]) end
if f[2] then
  if f[2] ~= '' then redis.call('SREM', P .. '{OWNED}' .. f[2], KEYS[1]) end
  redis.call('HDEL', KEYS[1], 'request', 'owner')
elseif f[1] == 'pending' then
  redis.call('HDEL', KEYS[1], 'request')
end
if f[3] == '1' and redis.call('GET', {finish_key('suspect')}) == KEYS[1] then
  redis.call('DEL', {finish_key('suspect')})
end
{GROUP_HOOK_LUA}
{SETTLE_LUA}
do
  local meta = ARGV[{extra + 2}] or ''
  {CELERY_PUBLISH_LUA}
end
{then}"""


def pending_lua(then: str, *, before: str = "") -> str:
    """Record a submitted execution as pending unless it already has a state, then run the
    Lua code ``then`` (it publishes the PENDING event). ``before``: Lua run first when it
    has no state (its budget reservation, which may refuse it: nothing recorded then).

    KEYS: state, steps, celery index, pending.  ARGV: celery_id, ttl, now, user_id,
    task_name, step, request json, queue, celery task name, then ``then``'s.  Returns 0
    when the execution already had a state.
    """
    return f"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
{before}
redis.call('HSET', KEYS[1], 'status', 'pending', 'celery_id', ARGV[1], 'user_id', ARGV[4],
           'task_name', ARGV[5], 'step', ARGV[6], 'submitted', ARGV[3], 'updated', ARGV[3],
           'request', ARGV[7], 'queue', ARGV[8], 'task', ARGV[9])
{NOW_MS_LUA}
redis.call('ZADD', KEYS[4], now_ms, KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[6])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
redis.call('SET', KEYS[3], KEYS[1], 'EX', ARGV[2])
{then}"""


# KEYS: state.  ARGV: now, ttl.  Marks a cancel request unless already terminal. The TTL
# (``ttl``) is given only to a record the mark creates: a waiting or running execution
# keeps its own, which the canceller's settings must not shorten (the record would expire
# with its mark before the worker honours it).
CANCEL_LUA = f"""
local terminal = {_TERMINAL}
local st = redis.call('HGET', KEYS[1], 'status')
if st and terminal[st] then return 0 end
redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1], 'updated', ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""



def decode_state(raw: dict[bytes | str, bytes | str]) -> dict[str, Any]:
    """A state hash as a JSON-ready dict (JSON fields parsed)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        val = v.decode() if isinstance(v, bytes) else v
        if key in ("request", "trace"):
            continue  # the task's arguments, kept only while it runs (for re-delivery);
            # the trace context a held execution is released in
        if key in ("result", "error", "usage", "meta"):
            val = json.loads(val) if val else None
        elif key in ("step", "deliveries", "spared"):
            val = int(val)
        elif key in ("started", "finished", "submitted", "updated", "cancel_requested", "eta"):
            val = float(val) if val else None
        out[key] = val
    return out
