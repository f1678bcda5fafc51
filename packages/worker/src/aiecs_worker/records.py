"""What a submission and a revocation record: the producer side of an execution's state.

Imported by the tasks (``apply_async`` records PENDING, a revocation records CANCELLED)
and by :mod:`aiecs_worker.control`; it imports neither, so the two do not import each
other. These functions use a synchronous Redis client.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from aiecs_core import TaskEvent, TaskRequest, TaskStatus

from . import metrics
from .events import PENDING_PUBLISH_LUA, TaskKeys, finish_sync, run_script, script_args
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
                   task: str = "", eta: float | None = None) -> bool:
    """Record a queued execution as PENDING (and publish it) unless it already has a state.

    Called for every submission (``.delay()``, ``apply_async``, :func:`submit`). Best
    effort: when Redis is unreachable the task is still queued. The record keeps the
    task's arguments, ``queue`` and Celery ``task`` name until it starts, so the sweeper
    can queue it again if the broker loses its message (see aiecs_worker.lease).

    ``eta`` (a timestamp) marks an execution that must not run before then (``eta`` /
    ``countdown``): its state keeps it, its PENDING event says it, and the sweeper counts
    its wait from then, not from the submission.
    """
    s = get_settings()
    keys = TaskKeys(request.user_id, request.task_id)
    event = TaskEvent(type="status", task_id=request.task_id, step=request.step,
                      user_id=request.user_id, task_name=request.task_name,
                      status=TaskStatus.PENDING,
                      message="queued" if eta is None else f"scheduled for {_iso(eta)}")
    ev_keys, ev_args = script_args(event, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                                   s.aiecs_events_ttl)
    try:
        # the PENDING record and its event, one round trip
        seq = run_script(
            state_redis(), PENDING_PUBLISH_LUA,
            [keys.state(request.step), steps_key(request.user_id, request.task_id),
             celery_index_key(celery_id), PENDING_KEY, *ev_keys],
            [celery_id, s.aiecs_events_ttl, time.time(), request.user_id, request.task_name,
             request.step, request.model_dump_json(), queue, task, *ev_args],
        )
        if seq and eta is not None:
            state_key = keys.state(request.step)
            with state_redis().pipeline(transaction=False) as pipe:
                pipe.hset(state_key, "eta", eta)
                pipe.zadd(PENDING_KEY, {state_key: int(eta * 1000)}, xx=True)
                pipe.execute()
    except Exception:  # noqa: BLE001
        return False
    if seq:
        metrics.submitted(request.task_name)
    return bool(seq)


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
    return seq > 0
