"""Execution leases: a dead worker's executions are noticed and run again within a minute.

Every worker process that runs executions is an *owner* (``host:pid:token``). It holds a
lease in the sorted set ``aiecs:owners`` (score: when the lease ends, on Redis's clock),
renewed every ``AIECS_LEASE_SECONDS / 3`` by its event loop, and lists what it executes in
``aiecs:owned:{owner}``. The ``begin`` transition records the owner and the task's
arguments in the execution's state; the ``finish`` transition removes both.

Every process also sweeps: an owner whose lease ended (its process was SIGKILLed, its host
lost power, its loop is wedged) is claimed by exactly one sweeper (``ZREM``), and each of
its executions still RUNNING under it is queued again with the same Celery id and
arguments. The broker's own copy of the message comes back after the visibility timeout
(``CELERY_VISIBILITY_TIMEOUT``, 5 min); the ``begin`` transition makes that late copy
harmless (the execution is terminal by then, or held by a live owner).

A delivery that finds its execution RUNNING under another owner whose lease is live is a
duplicate (the broker redelivered it after its visibility timeout, or the holder just
died): it is dropped, since the sweeper queues the execution again should the holder be
dead. On the same host a dead PID is seen at once and the delivery takes over (a
SIGKILLed prefork child, whose task Celery redelivers immediately).

**Messages lost in transit.** kombu's Redis transport pops a message (BRPOP) before it
records it as unacknowledged; a worker killed between the two loses it (the broker has no
copy). A submission through aiecs leaves a PENDING record with the task's arguments: the
sweeper queues again an execution still PENDING ``2 × CELERY_VISIBILITY_TIMEOUT`` after
submission (after its eta, for one given ``countdown`` / ``eta``; after its release, for
one held in Redis, see :mod:`aiecs_worker.store.hold`: a held execution is not in the pending
index, so it is never sent from here while held) whose queue is empty (a
message waiting in a backlog, or received and not yet restored, is not lost: the queue is
not empty, or kombu restores it within the visibility timeout). A copy sent while the
original was only late is harmless.

**With RabbitMQ as broker** (``amqp://``) no message is lost in transit: the broker
confirms each submission once its (durable) queue holds the (persistent) message, keeps a
delivered message until it is acknowledged, and returns it to the queue at once when its
consumer's connection closes (there is no visibility timeout). So the sweeper does not
re-send PENDING executions there (it only drops stale entries); a PENDING execution's
message is in its queue or held unacknowledged by a live worker. The leases work as on
Redis: the immediate redelivery of a dead worker's message finds its execution RUNNING
under the dead owner and takes it over at once on the same host (dead PID); on another
host it is dropped as a duplicate, and the sweeper queues the execution again when the
lease ends. Either way the execution runs once more and ends once.

**Poison under the threads pool.** A crashing operation kills every execution of its
process. The sweeper charges a crash only to an execution that is *certainly present at
it*: the owner's only execution, or the one crash *suspect* running in isolation. When a
crash takes several executions and none was isolated, none is charged: all are marked
suspects, and suspects re-run one at a time cluster-wide (``aiecs:suspect``). A poison
then crashes alone and is charged each time until ``AIECS_MAX_DELIVERIES``; an innocent
co-runner is spared and completes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid

from .keys import OWNED, owners_key, pending_key, suspect_key
from .state import NOW_MS_LUA, SHARD_LUA

__all__ = [
    "HEARTBEAT_LUA",
    "REAP_LUA",
    "SWEEP_LUA",
    "WORKER_HOST",
    "holder_is_dead_here",
    "make_owner",
    "queue_names",
]

# KEYS: owners, suspect.  ARGV: owner, lease_ms, suspect state key held ('' if none).
# Renews the owner's lease (and the suspect lock it holds). Returns the lease's end (ms).
HEARTBEAT_LUA = f"""
{NOW_MS_LUA}
local until_ms = now_ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], until_ms, ARGV[1])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return until_ms
"""

# KEYS: owners, suspect (of one shard: the owned sets are the shard's).  ARGV: how many dead
# owners at most, now (seconds, for records).
# Claims owners whose lease ended and returns their orphaned executions, flat:
# {state key, celery id, celery task name, queue, request json, charged ('1'/''), ...}.
# Keys not in KEYS: each dead owner's set ``P .. ':owned:' .. owner`` (``P``: KEYS[1]'s
# shard prefix; the owners are found here) and the states it lists (the shard's).
SWEEP_LUA = f"""
{NOW_MS_LUA}
{SHARD_LUA}
local out = {{}}
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[1])
local lock = redis.call('GET', KEYS[2])
for _, owner in ipairs(dead) do
  if redis.call('ZREM', KEYS[1], owner) == 1 then
    local set = P .. '{OWNED}' .. owner
    local live = {{}}
    for _, k in ipairs(redis.call('SMEMBERS', set)) do
      if redis.call('HGET', k, 'status') == 'running'
         and redis.call('HGET', k, 'owner') == owner then
        live[#live + 1] = k
      end
    end
    redis.call('DEL', set)
    for _, k in ipairs(live) do
      local charged = (#live == 1) or (lock == k)
      if not charged then
        redis.call('HINCRBY', k, 'spared', 1)
        redis.call('HSET', k, 'suspect', '1')
      end
      if lock == k then redis.call('DEL', KEYS[2]) end
      redis.call('HSET', k, 'owner', '', 'swept', ARGV[2])
      local f = redis.call('HMGET', k, 'celery_id', 'task', 'queue', 'request')
      out[#out + 1] = k
      for i = 1, 4 do out[#out + 1] = f[i] or '' end
      out[#out + 1] = charged and '1' or ''
    end
  end
end
return out
"""

# KEYS: pending.  ARGV: age (ms), how many at most, the queue-name separator of kombu's
# priority queues, '1' to only drop stale entries (RabbitMQ: nothing is lost in transit),
# '2' when the broker is another Redis (a Redis Cluster's state never holds the queues):
# every old entry is returned (and stamped), the caller looks at its queue on the broker.
# PENDING executions older than ``age`` whose queue is empty (so their message is
# nowhere: kombu's Redis transport pops a message before it records it as
# unacknowledged, and a worker killed in between loses it) are returned, flat:
# {state key, celery id, celery task name, queue, request json, ...}; each is stamped
# anew so it is sent again at most once per ``age``. Stale entries are dropped.
# Keys not in KEYS: the entries' states (the shard's) and, when the broker is this same
# Redis (never on a cluster: ARGV[4] is '2' there), the queue's broker lists.
REAP_LUA = f"""
{NOW_MS_LUA}
local function queue_names(q, sep)
  return {{q, q .. sep .. '3', q .. sep .. '6', q .. sep .. '9'}}
end
local out = {{}}
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[1]),
                       'LIMIT', 0, ARGV[2])
for _, k in ipairs(old) do
  local f = redis.call('HMGET', k, 'status', 'celery_id', 'task', 'queue', 'request')
  if f[1] ~= 'pending' or not f[5] then
    redis.call('ZREM', KEYS[1], k)
  elseif ARGV[4] ~= '1' then
    local q = f[4] or ''
    local n = 0
    if ARGV[4] ~= '2' then
      for _, name in ipairs(queue_names(q, ARGV[3])) do n = n + redis.call('LLEN', name) end
    end
    if n == 0 then
      redis.call('ZADD', KEYS[1], now_ms, k)
      out[#out + 1] = k
      for i = 2, 5 do out[#out + 1] = f[i] or '' end
    end
  end
end
return out
"""

def queue_names(queue: str, separator: str) -> list[str]:
    """The broker lists of a queue (kombu's Redis transport: one per priority step), as
    :data:`REAP_LUA` counts them."""
    return [queue, *(f"{queue}{separator}{n}" for n in (3, 6, 9))]


def sweep_keys(shard: str) -> list[str]:
    """KEYS of :data:`SWEEP_LUA` (and :data:`HEARTBEAT_LUA`) in one shard: each shard has
    its owners' leases and its crash suspect; a worker renews its lease in every shard."""
    return [owners_key(shard), suspect_key(shard)]


def reap_keys(shard: str) -> list[str]:
    """KEYS of :data:`REAP_LUA` in one shard."""
    return [pending_key(shard)]

_HOST = socket.gethostname()
#: This host's name (the history's ``worker``).
WORKER_HOST = _HOST


def make_owner() -> str:
    """This process's owner id: ``host:pid:token`` (the token tells PID reuse apart)."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead_here(holder: str) -> bool:
    """True when ``holder`` is a process of this host that no longer exists."""
    try:
        host, pid, _token = holder.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != _HOST or pid_n == os.getpid():
        return False
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # a zombie (a SIGKILLed child its parent has not reaped yet) is dead too
    with contextlib.suppress(OSError), open(f"/proc/{pid_n}/stat", "rb") as f:
        return f.read().split(b")", 1)[1].split()[0] == b"Z"
    return False
