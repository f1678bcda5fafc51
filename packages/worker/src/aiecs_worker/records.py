"""What a submission and a revocation record: the producer side of an execution's state.

Imported by the tasks (``apply_async`` records PENDING, a revocation records CANCELLED)
and by :mod:`aiecs_worker.control`; it imports neither, so the two do not import each
other. These functions use a synchronous Redis client.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from aiecs_core import TaskEvent, TaskRequest, TaskStatus

from . import metrics
from .events import PENDING_PUBLISH_LUA, TaskKeys, finish_sync, script_args
from .runtime import _routable
from .settings import get_settings
from .state import PENDING_KEY, celery_index_key, steps_key

__all__ = ["record_cancelled", "record_pending", "state_redis"]


@functools.lru_cache(maxsize=1)
def state_redis():
    """This process's synchronous client of the state Redis."""
    import redis

    return redis.Redis.from_url(get_settings().state_redis_url, socket_timeout=5)


def record_pending(request: TaskRequest, celery_id: str, *, queue: str = "",
                   task: str = "", eta: float | None = None) -> str:
    """Record a queued execution as PENDING (and publish it) unless it already has a
    state, and admit it (see :mod:`aiecs_worker.hold`): ``"send"`` (send its message
    now), ``"held"`` (do not: a releaser sends it when it may run), or ``""`` when nothing
    was recorded (it already had a state, or Redis is unreachable: send it as before).

    Called for every submission (``.delay()``, ``apply_async``, :func:`submit`). Best
    effort: when Redis is unreachable the task is still queued. The record keeps the
    task's arguments, ``queue`` and Celery ``task`` name until it starts, so the sweeper
    can queue it again if the broker loses its message (see aiecs_worker.lease).

    ``eta`` (a timestamp) marks an execution that must not run before then (``eta`` /
    ``countdown``): its state keeps it, its PENDING event says it, the sweeper counts
    its wait from then, not from the submission, and its state and log are kept until
    then plus AIECS_EVENTS_TTL.
    """
    from .hold import ADMIT_LUA, admit_args, held_ttl

    s = get_settings()
    keys = TaskKeys(request.user_id, request.task_id)
    state_key = keys.state(request.step)
    ttl = held_ttl(s, eta)
    event = TaskEvent(type="status", task_id=request.task_id, step=request.step,
                      user_id=request.user_id, task_name=request.task_name,
                      status=TaskStatus.PENDING,
                      message="queued" if eta is None else f"scheduled for {_iso(eta)}")
    ev_keys, ev_args = script_args(event, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                                   ttl)
    client = state_redis()
    try:
        # the PENDING record, its event and its admission: one round trip
        with client.pipeline(transaction=False) as pipe:
            _script(client, PENDING_PUBLISH_LUA)(
                keys=[state_key, steps_key(request.user_id, request.task_id),
                      celery_index_key(celery_id), PENDING_KEY, *ev_keys],
                args=[celery_id, ttl, time.time(), request.user_id, request.task_name,
                      request.step, request.model_dump_json(), queue, task, *ev_args],
                client=pipe)
            if eta is not None:
                pipe.eval(_ETA_LUA, 2, state_key, PENDING_KEY, eta, int(eta * 1000))
            a_keys, a_args = admit_args(s, state_key, request.user_id, queue, eta)
            _script(client, ADMIT_LUA)(keys=a_keys, args=a_args, client=pipe)
            out = pipe.execute()
    except Exception:  # noqa: BLE001
        return ""
    seq, decision = out[0], out[-1]
    if not seq:
        return ""
    metrics.submitted(request.task_name)
    return decision.decode() if isinstance(decision, bytes) else str(decision)


# KEYS: state, pending.  ARGV: eta (s), eta (ms).  Stamps a just-recorded execution's eta.
_ETA_LUA = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' or redis.call('HEXISTS', KEYS[1], 'eta') == 1
then return 0 end
redis.call('HSET', KEYS[1], 'eta', ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], KEYS[1])
return 1
"""

_registered: dict[tuple[int, str], Any] = {}


def _script(client: Any, script: str) -> Any:
    obj = _registered.get((id(client), script))
    if obj is None:
        obj = _registered[(id(client), script)] = client.register_script(script)
    return obj


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_cancelled(args: tuple, kwargs: dict[str, Any], reason: str) -> bool:
    """Mark a revoked-before-running execution CANCELLED and publish its terminal event."""
    request = _routable(dict(zip(("task_name", "user_id", "task_id", "step"), args,
                                 strict=False)) | kwargs)
    if request is None:
        return False
    s = get_settings()
    keys = TaskKeys(request.user_id, request.task_id)
    from aiecs_core import TaskCancelledError

    info = TaskCancelledError(reason).to_info()
    event = TaskEvent(type="status", task_id=request.task_id, step=request.step,
                      user_id=request.user_id, task_name=request.task_name,
                      status=TaskStatus.CANCELLED, message=reason, error=info)
    seq = finish_sync(
        state_redis(), event, keys.state(request.step),
        ["cancelled", "", info.model_dump_json(), "[]", time.time(), s.aiecs_events_ttl],
        s.aiecs_socketio_channel, s.aiecs_events_maxlen, s.aiecs_events_ttl,
    )
    if seq > 0:
        from .hold import release_window

        # its slot in its user's fair-share window is free (else the workers' sweep)
        with contextlib.suppress(Exception):
            release_window(state_redis(), s, state_key=keys.state(request.step))
    return seq > 0
