"""The Lua run inside an execution's terminal transition when it belongs to a group.

A batch item's or workflow step's state hash carries ``group``: the key of its batch or
workflow hash. :func:`aiecs_worker.store.state.finish_lua` runs :data:`GROUP_HOOK_LUA` in the
same script as the terminal record, so the group learns of every terminal state exactly
once, whatever process dies afterwards:

- a **batch** counts it (``completed`` / ``failed`` / ``timed_out`` / ``cancelled``,
  ``done``) and publishes the batch's progress event to the owner's room and to the
  batch's own replayable log; the last item publishes the batch's terminal event and
  gives the batch's keys (its hash, item list, seq and log) the workers' TTL;
- a **workflow** bumps ``ver`` and stamps itself in ``aiecs:flows:due``: the process that
  ran the step advances the workflow right after (releases or cancels dependents, see
  :mod:`aiecs_worker.producer.advance`); when that process died first, any worker's sweeper
  does it. It counts down ``left`` (its steps not ended): the last step to end gives the
  workflow hash the workers' TTL, as its own keys get (the task's steps, seq and log are
  one task's keys: the terminal transition gives them theirs). A workflow created before
  ``left`` existed keeps its submitter's TTL.

This module imports only key names (:mod:`aiecs_worker.store.keys`).
Lua it may use: the terminal transition's KEYS (:data:`aiecs_worker.store.keys.FINISH_KEYS`:
the shard's due workflows), ``f[4]`` (the group key), ``ARGV[1]``
(the terminal status),
``ARGV[5]`` (now, seconds) and ``ttl`` (the workers' retention, see
:func:`aiecs_worker.store.state.finish_lua`).

The group's keys are not in KEYS: the group hash is named by the execution's ``group``
field, its item list after it, its seq and log by the hash's own fields; all were written
by the submission as the user's keys (:func:`aiecs_worker.store.keys.batch_key`,
:func:`~aiecs_worker.store.keys.flow_key`, :class:`~aiecs_worker.store.keys.TaskKeys`),
so they are in the execution's hash slot.
"""

from __future__ import annotations

from .keys import finish_key

__all__ = ["GROUP_HOOK_LUA", "PUBLISH_GROUP_EVENT_LUA", "publish_group_event_lua"]


def publish_group_event_lua(seq: str = "p[1]", log: str = "p[2]") -> str:
    """Lua: append and publish the event body ``body`` (JSON without seq, starting with
    '{') on the group ``g``'s log (fields seq, log, channel, phead, ptail, maxlen, ttl of
    g). ``seq`` and ``log`` name the group's seq and log: KEYS when the caller knows them
    (the batch's creation), else the fields just read (``p[1]``, ``p[2]``)."""
    return f"""
local p = redis.call('HMGET', g, 'seq', 'log', 'channel', 'phead', 'ptail', 'maxlen', 'ttl')
local gseq = redis.call('INCR', {seq})
local gev = '{{"seq":' .. gseq .. ',' .. string.sub(body, 2)
redis.call('XADD', {log}, 'MAXLEN', '~', p[6], gseq .. '-0', 'e', gev)
redis.call('EXPIRE', {seq}, p[7])
redis.call('EXPIRE', {log}, p[7])
redis.call('EXPIRE', g, p[7])
redis.call('PUBLISH', p[3], p[4] .. gev .. p[5])
"""


#: :func:`publish_group_event_lua` with the group's seq and log read from its hash.
PUBLISH_GROUP_EVENT_LUA = publish_group_event_lua()

#: Lua: the body of a batch event from g's counters (locals: g, now).
BATCH_EVENT_LUA = """
local c = redis.call('HMGET', g, 'total', 'completed', 'failed', 'timed_out', 'cancelled',
                     'done', 'head', 'cancel_requested')
local total = tonumber(c[1] or '0')
local done = tonumber(c[6] or '0')
local counts = '{"total":' .. total .. ',"completed":' .. (c[2] or '0') .. ',"failed":'
  .. (c[3] or '0') .. ',"timed_out":' .. (c[4] or '0') .. ',"cancelled":' .. (c[5] or '0')
  .. ',"done":' .. done .. '}'
local kind, st, msg = 'progress', 'running', done .. ' of ' .. total .. ' items ended'
if done >= total then
  kind = 'status'
  local ok = tonumber(c[2] or '0')
  if ok == total then
    st, msg = 'completed', 'all ' .. total .. ' items completed'
  else
    if c[8] and tonumber(c[3] or '0') + tonumber(c[4] or '0') == 0 then st = 'cancelled'
    else st = 'failed' end
    msg = 'partial failure: ' .. ok .. ' of ' .. total .. ' items completed, ' .. (c[3] or '0')
      .. ' failed, ' .. (c[4] or '0') .. ' timed out, ' .. (c[5] or '0') .. ' cancelled'
  end
  redis.call('HSET', g, 'status', st, 'finished', now)
end
local progress = 1
if total > 0 then progress = done / total end
local body = c[7] .. ',"type":"' .. kind .. '","status":"' .. st .. '","progress":'
  .. string.format('%.6f', progress) .. ',"message":"' .. msg .. '","result":' .. counts
  .. ',"timestamp":' .. now .. '}'
"""

GROUP_HOOK_LUA = f"""
if f[4] and f[4] ~= '' then
  local g = f[4]
  local now = ARGV[5]
  local kind = redis.call('HGET', g, 'kind')
  if kind == 'batch' then
    redis.call('HINCRBY', g, ARGV[1], 1)
    redis.call('HINCRBY', g, 'done', 1)
    {BATCH_EVENT_LUA}
    {PUBLISH_GROUP_EVENT_LUA}
    if kind == 'status' then  -- the batch ended: its keys get the workers' TTL (finish's)
      for _, k in ipairs({{g, g .. ':items', p[1], p[2]}}) do redis.call('EXPIRE', k, ttl) end
    end
  elseif kind == 'flow' then
    redis.call('HINCRBY', g, 'ver', 1)
    if redis.call('HINCRBY', g, 'left', -1) == 0 then  -- its last step: the workers' TTL
      redis.call('EXPIRE', g, ttl)
    end
    local _t = redis.call('TIME')
    redis.call('ZADD', {finish_key('flows_due')}, _t[1] * 1000 + math.floor(_t[2] / 1000), g)
  end
end
"""
