"""Forgetting a user in Redis: the state, event log and step set of each of their tasks
whose executions all ended (``aiecs forget USER``, ``DELETE /users/{user}/history``).

An execution still pending or running is left alone (its worker needs its state, its
watchers its log): its task keeps its log and step set, and its ended steps' states are
removed. One Lua call per task decides on what it reads, so a step submitted meanwhile
(a member of the step set the scan did not see) counts as live and keeps the log.
"""

from __future__ import annotations

from typing import Any

from .events import run_script
from .keys import (
    CELERY_INDEX,
    TaskKeys,
    steps_key,
    task_of_key,
    user_tasks_pattern,
)
from .scripts import TERMINAL_LUA
from .state import SHARD_LUA

__all__ = ["FORGET_TASK_LUA", "forget_user"]

_TERMINAL = TERMINAL_LUA

# KEYS: seq, log, steps, then the state key of each step in ARGV[2..].  ARGV[1]: unused
# (''). Deletes the ended steps' states (and their Celery index entries that point at
# them); the log, seq and step set too when no step is live.  Returns {states deleted,
# steps live}.  Keys not in KEYS: the Celery index entries ``P .. ':celery:' .. id``
# (``P``: KEYS[1]'s shard prefix; the ids are the states').
FORGET_TASK_LUA = f"""
local terminal = {_TERMINAL}
{SHARD_LUA}
local known = {{}}
for i = 2, #ARGV do known[ARGV[i]] = KEYS[i + 2] end
local live, deleted = 0, 0
for _, s in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not known[s] then live = live + 1 end
end
for i = 2, #ARGV do
  local sk = KEYS[i + 2]
  local f = redis.call('HMGET', sk, 'status', 'celery_id')
  if f[1] and not terminal[f[1]] then
    live = live + 1
  else
    local index = P .. '{CELERY_INDEX}' .. (f[2] or '')
    if f[2] and redis.call('GET', index) == sk then
      redis.call('DEL', index)
    end
    deleted = deleted + redis.call('DEL', sk)
    redis.call('SREM', KEYS[3], ARGV[i])
  end
end
if live == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
return {{deleted, live}}
"""


def forget_user(client: Any, user_id: str, *, scan_count: int = 1000) -> dict[str, int]:
    """Delete what Redis holds of ``user_id``'s ended executions (synchronous client).

    Returns ``{"tasks": tasks whose keys all went, "states": ended executions' states
    removed, "live": executions left because they have not ended}``. The scan walks the
    whole keyspace once (SCAN, in steps of ``scan_count``: Redis keeps serving).
    """
    tasks: dict[str, set[int]] = {}
    for raw in client.scan_iter(match=user_tasks_pattern(user_id), count=scan_count):
        key = raw.decode() if isinstance(raw, bytes) else raw
        task_id = task_of_key(key, user_id)
        if task_id is None:
            continue
        seen = tasks.setdefault(task_id, set())
        rest = key.split(":")[-2:]
        if rest[1] == "state" and rest[0].isdigit():
            seen.add(int(rest[0]))
    out = {"tasks": 0, "states": 0, "live": 0}
    for task_id, scanned in tasks.items():
        keys = TaskKeys(user_id, task_id)
        listed = {int(s) for s in client.smembers(steps_key(user_id, task_id))
                  if s.isdigit()}
        steps = sorted(scanned | listed)
        deleted, live = run_script(
            client, FORGET_TASK_LUA,
            [keys.seq, keys.log, steps_key(user_id, task_id), *(keys.state(s) for s in steps)],
            ["", *(str(s) for s in steps)])
        out["states"] += int(deleted)
        out["live"] += int(live)
        out["tasks"] += int(live) == 0
    return out
