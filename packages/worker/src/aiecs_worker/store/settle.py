"""The Lua run inside an execution's terminal transition that settles its budget
reservation (see :mod:`aiecs_worker.store.budgets` for the whole story).

:func:`aiecs_worker.store.state.finish_lua` runs :data:`SETTLE_LUA` in the same script as
the terminal record, so a reservation is replaced by the real use exactly once, whatever
process ends the execution (the worker, a cancel, the sweeper, a malformed message).
This module imports only key names (:mod:`aiecs_worker.store.keys`).
"""

from __future__ import annotations

from .keys import finish_key

__all__ = ["NANO", "SETTLE_LUA"]

#: Nano-dollars per dollar: money is counted in integers.
NANO = 1_000_000_000
#: Seconds a period counter that had expired lives when a late settlement writes it again.
RECREATED_TTL = 3 * 86400

#: Lua run by the terminal transition (:func:`aiecs_worker.store.state.finish_lua`):
#: replace the execution's reservation by what it used (see
#: :mod:`aiecs_worker.store.budgets`). It reads ``KEYS[1]`` (the state key), the
#: reservation's key (the terminal transition's KEYS, ``budget_hold``) and ``ARGV[4]``
#: (the usage JSON); its own locals stay in a ``do`` block. The period counters it
#: charges are the reservation's ``day`` and ``month`` fields (the periods it was made
#: in, which the caller cannot know): written by the reservation from its KEYS, the
#: user's keys, in the execution's hash slot. Amounts go to Redis formatted with ``%d``:
#: always an integer's text, which HINCRBY requires.
SETTLE_LUA = f"""
do
local bh = redis.call('HMGET', {finish_key('budget_hold')}, 'usd', 'tok', 'day', 'month')
if bh[3] then
  local rusd, rtok = tonumber(bh[1]), tonumber(bh[2])
  local cusd, ctok, unknown = 0, 0, false
  local okj, used = pcall(cjson.decode, ARGV[4])
  if okj and type(used) == 'table' then
    for _, u in ipairs(used) do
      if type(u) == 'table' then
        ctok = ctok + (tonumber(u['input_tokens']) or 0) + (tonumber(u['output_tokens']) or 0)
        local cost = tonumber(u['cost'])
        if u['estimated'] == true or cost == nil then unknown = true
        else cusd = cusd + math.floor(cost * {NANO} + 0.5) end
      end
    end
  end
  local lost = tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') > 1
  if unknown or lost then cusd = math.max(cusd, rusd) end
  if lost then ctok = math.max(ctok, rtok) end
  for _, ck in ipairs({{bh[3], bh[4]}}) do
    redis.call('HINCRBY', ck, 'usd_held', string.format('%d', -rusd))
    redis.call('HINCRBY', ck, 'tok_held', string.format('%d', -rtok))
    redis.call('HINCRBY', ck, 'usd_spent', string.format('%d', cusd))
    redis.call('HINCRBY', ck, 'tok_spent', string.format('%d', ctok))
    if redis.call('TTL', ck) < 0 then redis.call('EXPIRE', ck, {RECREATED_TTL}) end
  end
  redis.call('DEL', {finish_key('budget_hold')})
end
end
"""
