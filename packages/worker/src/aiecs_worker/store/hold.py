"""Held executions: an admitted execution is sent to the broker now, or held in Redis and
sent by a releaser when it may run.

Every aiecs submission (``apply_async`` / ``.delay()``,
:func:`aiecs_worker.producer.control.submit`, ``POST /tasks``, batches, workflow steps,
schedule runs) records its execution PENDING
with its arguments, then *admits* it (:data:`ADMIT_LUA`, one Lua call):

- **Due later than the horizon** (``AIECS_SCHEDULE_HORIZON``; a ``countdown`` / ``eta``
  further ahead): held in the sorted set ``aiecs:held:due`` (state key → due time, ms).
  No broker message exists, so no worker holds it in memory and the Redis broker does not
  hand out copies of it every visibility timeout. Every worker process's periodic sweep
  claims (``ZREM``, so exactly one sends each) those due within the horizon and admits
  them again, now with their remaining countdown.
- **Beyond its user's fair-share window**: each (queue, user) has a window
  ``aiecs:fair:{queue}:{user}`` (sorted set of the state keys of its executions sent to
  the broker and not yet ended: queued, reserved or running), at most
  ``AIECS_FAIR_WINDOW_FAST`` / ``AIECS_FAIR_WINDOW_HEAVY`` wide. An execution admitted
  while the window is full (or while older ones wait) is appended to the user's FIFO
  ``aiecs:fair:{queue}:{user}:held`` and the window is listed in ``aiecs:fair:backlog``.
  The terminal transition removes an execution from its window; the worker that ended
  it then releases that user's next held executions (:data:`RELEASE_LUA`; only when the
  terminal script says some are held: store/events.py ``HELD_LUA``), and the
  periodic sweep does the same for every window with a backlog (crash safety), dropping
  entries whose execution ended or expired, and renews (hourly) the TTLs of what the
  waiting executions keep, so a backlog longer than AIECS_EVENTS_TTL loses nothing.

So the broker's FIFO queue holds at most W messages of any one user: another user's
execution waits behind at most ``W × (users with work on that queue)`` messages.

A held execution is not in ``aiecs:pending`` (the reaper of lost messages, see
:mod:`aiecs_worker.store.lease`, must not send it); a released one is put back there, so one
whose send was lost (a process killed between the claim and the send) is sent again by
the reaper. Cancelling a held execution ends it CANCELLED at once (its entries go with
the terminal transition, or are skipped when popped).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..ops import tracing
from ..routing import HEAVY_QUEUE
from .keys import (
    CELERY_INDEX,
    backlog_key,
    due_key,
    pending_key,
    prefix_of,
    window_key,
)
from .state import _TERMINAL, NOW_MS_LUA

__all__ = [
    "ADMIT_LUA",
    "ADMIT_PUSH_LUA",
    "KEEP_ALIVE_LUA",
    "RELEASE_LUA",
    "admit_args",
    "window_key",
]

log = logging.getLogger("aiecs.worker")

#: Set of the fair-share windows whose user has held executions.




# KEYS: state, pending, due, backlog, the user's window on the queue, its FIFO.  ARGV:
# window width (0: no window), due time ms ('' if none), horizon ms, ttl, trace context
# ('' if none).  Returns 'send' (send the message now: counted in the window, or not
# aiecs's to hold: not pending, or already admitted) or 'held' (no message: the releaser
# sends it, in the trace context the record keeps as ``trace``).
ADMIT_LUA = f"""
local f = redis.call('HMGET', KEYS[1], 'status', 'held', 'window')
if f[1] ~= 'pending' then return 'send' end
if f[2] then return 'held' end
if f[3] then return 'send' end
{NOW_MS_LUA}
if ARGV[2] ~= '' and tonumber(ARGV[2]) > now_ms + tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'held', 'due')
  if (ARGV[5] or '') ~= '' then redis.call('HSET', KEYS[1], 'trace', ARGV[5]) end
  redis.call('ZADD', KEYS[3], ARGV[2], KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  return 'held'
end
local w = tonumber(ARGV[1])
if w <= 0 then return 'send' end
local win = KEYS[5]
local fifo = KEYS[6]
redis.call('HSET', KEYS[1], 'window', win)
if redis.call('LLEN', fifo) == 0 and redis.call('ZCARD', win) < w then
  redis.call('ZADD', win, now_ms, KEYS[1])
  redis.call('EXPIRE', win, ARGV[4])
  return 'send'
end
redis.call('RPUSH', fifo, KEYS[1])
redis.call('EXPIRE', fifo, ARGV[4])
redis.call('EXPIRE', win, ARGV[4])
redis.call('SADD', KEYS[4], win)
redis.call('HSET', KEYS[1], 'held', 'fair')
if (ARGV[5] or '') ~= '' then redis.call('HSET', KEYS[1], 'trace', ARGV[5]) end
redis.call('ZREM', KEYS[2], KEYS[1])
return 'held'
"""

# KEYS: ADMIT_LUA's six, then the broker's list of the execution's queue.  ARGV: ADMIT_LUA's
# five, then the execution's broker message (see aiecs_worker.runner.send).  ADMIT_LUA, and
# when it decides 'send' and the execution has a state (it has none when its budget refused
# it: nothing recorded, nothing sent), LPUSH of the message: returns 'pushed' instead of
# 'send' then. The caller sends the message itself on 'send' (as after ADMIT_LUA).
ADMIT_PUSH_LUA = (
    "local function admit()\n" + ADMIT_LUA + "end\n"
    + """local decision = admit()
if decision == 'send' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('LPUSH', KEYS[7], ARGV[6])
  return 'pushed'
end
return decision
""")

# KEYS: due, pending.  ARGV: horizon ms, how many at most.  Claims the executions held
# until a time now within the horizon (ZREM: one sweeper gets each), puts them back in
# the pending index (scored by their due time), and returns them flat:
# {state key, user id, queue, celery id, task, request, eta, trace, due ms, ...}; the caller
# admits each again (:data:`ADMIT_LUA`) and sends those it may.  Keys not in KEYS: the
# claimed executions' states (members of the shard's held index, in its hash slot).
CLAIM_DUE_LUA = f"""
{NOW_MS_LUA}
local out = {{}}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms + tonumber(ARGV[1]),
                       'LIMIT', 0, ARGV[2])
for _, k in ipairs(due) do
  local score = redis.call('ZSCORE', KEYS[1], k)
  if redis.call('ZREM', KEYS[1], k) == 1 then
    local f = redis.call('HMGET', k, 'status', 'held', 'user_id', 'queue', 'celery_id',
                         'task', 'request', 'eta', 'trace')
    if f[1] == 'pending' and f[2] == 'due' and f[7] then
      redis.call('HDEL', k, 'held')
      redis.call('ZADD', KEYS[2], score, k)
      out[#out + 1] = k
      for i = 3, 9 do out[#out + 1] = f[i] or '' end
      out[#out + 1] = score
    end
  end
end
return out
"""

# KEYS: backlog, pending, state, window, its FIFO (the state: any key of the shard when
# the window is given; the window and FIFO: any key of the shard when it is not).  ARGV:
# '1' the window is KEYS[4] ('': the window of the state's execution, read from its
# ``window`` field), fast width, how many at most, '1' to drop window entries whose
# execution ended or expired, heavy width, the heavy windows' key prefix.  Fills the window
# from the user's FIFO (first dropping, when asked and the window is full, its entries
# whose execution ended or expired: a crash's leftovers); returns the released executions
# flat: {celery id, task, queue, request, eta, trace, ...}.
# Keys not in KEYS: the window of the state's execution (its ``window`` field, written by
# ADMIT_LUA from its KEYS: the user's window, in the state's hash slot) and its FIFO;
# the executions popped from the FIFO (their state keys: the shard's).
RELEASE_LUA = f"""
local terminal = {_TERMINAL}
local win, fifo = KEYS[4], KEYS[5]
if ARGV[1] == '' then
  win = redis.call('HGET', KEYS[3], 'window')
  if not win then return {{}} end
  fifo = win .. ':held'
end
local w = tonumber(ARGV[2])
if string.sub(win, 1, #ARGV[6]) == ARGV[6] then w = tonumber(ARGV[5]) end
if ARGV[4] == '1' and redis.call('ZCARD', win) >= w then
  for _, k in ipairs(redis.call('ZRANGE', win, 0, -1)) do
    local st = redis.call('HGET', k, 'status')
    if not st or terminal[st] then redis.call('ZREM', win, k) end
  end
end
local out = {{}}
local free = w - redis.call('ZCARD', win)
if free <= 0 then return out end
{NOW_MS_LUA}
local popped = 0
while free > 0 and popped < tonumber(ARGV[3]) do
  local k = redis.call('LPOP', fifo)
  if not k then break end
  popped = popped + 1
  local f = redis.call('HMGET', k, 'status', 'held', 'celery_id', 'task', 'queue', 'request',
                       'eta', 'trace')
  if f[1] == 'pending' and f[2] == 'fair' and f[6] then
    redis.call('HDEL', k, 'held')
    redis.call('ZADD', win, now_ms, k)
    local since = now_ms
    if f[7] and tonumber(f[7]) * 1000 > now_ms then since = math.floor(tonumber(f[7]) * 1000) end
    redis.call('ZADD', KEYS[2], since, k)
    out[#out + 1] = f[3] or ''
    out[#out + 1] = f[4] or ''
    out[#out + 1] = f[5] or ''
    out[#out + 1] = f[6]
    out[#out + 1] = f[7] or ''
    out[#out + 1] = f[8] or ''
    free = free - 1
  end
end
if redis.call('LLEN', fifo) == 0 then redis.call('SREM', KEYS[1], win) end
return out
"""

# KEYS: fifo, marker.  ARGV: ttl, interval (s).  At most once per interval (the marker),
# renews the TTL of everything each execution waiting in the FIFO keeps (state, steps,
# celery index, seq, log, group hash and its item list): a backlog longer than
# AIECS_EVENTS_TTL loses nothing. Returns how many executions it renewed.
# Keys not in KEYS: each waiting execution's keys, named from its state key (a member of
# the FIFO: the shard's) and its fields (Celery id, group: the user's keys), all in the
# FIFO's hash slot.
KEEP_ALIVE_LUA = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 0 end
local n = 0
for _, k in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXPIRE', k, ARGV[1]) == 1 then
    n = n + 1
    local f = redis.call('HMGET', k, 'celery_id', 'group')
    local base = string.gsub(k, ':[^:]+:state$', '')
    for _, key in ipairs({base .. ':steps', base .. ':seq', base .. ':log'}) do
      redis.call('EXPIRE', key, ARGV[1])
    end
    if f[1] then
      redis.call('EXPIRE', string.match(k, '^[^:]+') .. '__CELERY_INDEX__' .. f[1], ARGV[1])
    end
    if f[2] then
      redis.call('EXPIRE', f[2], ARGV[1])
      redis.call('EXPIRE', f[2] .. ':items', ARGV[1])
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
""".replace("__CELERY_INDEX__", CELERY_INDEX)


def keep_alive_args(settings: Any, window: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`KEEP_ALIVE_LUA` for one window's FIFO (once an hour, or a
    quarter of AIECS_EVENTS_TTL when shorter)."""
    ttl = settings.aiecs_events_ttl
    return ([window + ":held", window + ":kept"], [ttl, max(1, min(3600, ttl // 4))])


def width(settings: Any, queue: str) -> int:
    """The fair-share window of ``queue`` (0: none)."""
    return (settings.aiecs_fair_window_heavy if queue == HEAVY_QUEUE
            else settings.aiecs_fair_window_fast)


def admit_args(settings: Any, state_key: str, user_id: str, queue: str,
               eta: float | None) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`ADMIT_LUA` for one execution (admitted in the current
    trace context: the one its release continues, should it be held)."""
    shard = prefix_of(state_key)
    window = window_key(queue, user_id)
    return ([state_key, pending_key(shard), due_key(shard), backlog_key(shard), window,
             window + ":held"],
            [width(settings, queue),
             "" if eta is None else int(eta * 1000),
             int(settings.schedule_horizon * 1000), settings.aiecs_events_ttl,
             tracing.carrier()])


def held_ttl(settings: Any, eta: float | None) -> int:
    """TTL of a submission's state and log: until its eta, then AIECS_EVENTS_TTL."""
    ahead = 0 if eta is None else max(0, int(eta - time.time()) + 1)
    return settings.aiecs_events_ttl + ahead


def decode(values: list[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def release_args(settings: Any, *, state_key: str = "", window: str = "",
                 clean: bool = False) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of :data:`RELEASE_LUA`: fill ``window``, or the window of the
    execution ``state_key`` (one that just ended)."""
    shard = prefix_of(state_key or window)
    return ([backlog_key(shard), pending_key(shard), state_key or backlog_key(shard),
             window or backlog_key(shard), window + ":held" if window else backlog_key(shard)],
            ["1" if window else "", settings.aiecs_fair_window_fast, 1000, "1" if clean else "",
             settings.aiecs_fair_window_heavy, window_key(HEAVY_QUEUE, "", shard)])
