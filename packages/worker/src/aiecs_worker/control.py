"""Submitting, cancelling and inspecting executions from any process (API, CLI, scripts).

These functions use a synchronous Redis client; call them from a thread in async code.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from aiecs_core import TaskEvent, TaskRequest, TaskStatus, load_plugins
from celery.result import AsyncResult

from .app import app
from .events import (
    PENDING_PUBLISH_LUA,
    TaskKeys,
    celery_task_id,
    finish_sync,
    run_script,
    script_args,
)
from .runtime import CANCEL_CHANNEL, _routable
from .settings import get_settings
from .state import (
    CANCEL_LUA,
    PENDING_KEY,
    celery_index_key,
    decode_state,
    steps_key,
)

__all__ = ["cancel", "cancel_celery", "get_state", "record_cancelled", "submit"]


@functools.lru_cache(maxsize=1)
def _redis():
    import redis

    return redis.Redis.from_url(get_settings().state_redis_url, socket_timeout=5)


def submit(request: TaskRequest, *, heavy: bool | None = None) -> AsyncResult:
    """Queue one execution; the queue follows the operation's declaration unless overridden.

    Raises ServiceNotFoundError / OperationNotFoundError / InputValidationError before
    anything is queued when this process knows the service (it loads the same plugins).
    """
    from aiecs_core import validate_input

    from .tasks import execute_heavy_task, execute_task

    spec = load_plugins().operation(request.mode, request.service, request.task_name)
    validate_input(spec, request.input_data)
    if heavy is None:
        heavy = spec.heavy
    task = execute_heavy_task if heavy else execute_task
    celery_id = celery_task_id(request.user_id, request.task_id, request.step)
    return task.apply_async(kwargs=request.model_dump(mode="json"), task_id=celery_id)


def record_pending(request: TaskRequest, celery_id: str, *, queue: str = "",
                   task: str = "") -> bool:
    """Record a queued execution as PENDING (and publish it) unless it already has a state.

    Called for every submission (``.delay()``, ``apply_async``, :func:`submit`). Best
    effort: when Redis is unreachable the task is still queued. The record keeps the
    task's arguments, ``queue`` and Celery ``task`` name until it starts, so the sweeper
    can queue it again if the broker loses its message (see aiecs_worker.lease).
    """
    s = get_settings()
    keys = TaskKeys(request.user_id, request.task_id)
    event = TaskEvent(type="status", task_id=request.task_id, step=request.step,
                      user_id=request.user_id, task_name=request.task_name,
                      status=TaskStatus.PENDING, message="queued")
    ev_keys, ev_args = script_args(event, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                                   s.aiecs_events_ttl)
    try:
        # the PENDING record and its event, one round trip
        seq = run_script(
            _redis(), PENDING_PUBLISH_LUA,
            [keys.state(request.step), steps_key(request.user_id, request.task_id),
             celery_index_key(celery_id), PENDING_KEY, *ev_keys],
            [celery_id, s.aiecs_events_ttl, time.time(), request.user_id, request.task_name,
             request.step, request.model_dump_json(), queue, task, *ev_args],
        )
    except Exception:  # noqa: BLE001
        return False
    return bool(seq)


def cancel(user_id: str, task_id: str, step: int) -> bool:
    """Cancel an execution, queued or running. False when it had already finished."""
    return _cancel_state(
        TaskKeys(user_id, task_id).state(step), celery_task_id(user_id, task_id, step)
    )


def cancel_celery(celery_id: str) -> bool:
    """Cancel an execution by its Celery task id. False when it had already finished.

    An id this deployment has never seen (submitted by ``.delay()`` and not yet picked up)
    is still revoked and broadcast, so a worker that holds or later receives it skips it.
    """
    state_key = _redis().get(celery_index_key(celery_id))
    if state_key is None:
        _redis().publish(CANCEL_CHANNEL, celery_id)
        app.control.revoke(celery_id)
        return True
    return _cancel_state(state_key.decode(), celery_id)


def _cancel_state(state_key: str, celery_id: str) -> bool:
    s = get_settings()
    client = _redis()
    marked = run_script(client, CANCEL_LUA, [state_key], [time.time(), s.aiecs_events_ttl])
    if marked:
        client.publish(CANCEL_CHANNEL, celery_id)
        app.control.revoke(celery_id)
    return bool(marked)


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
        _redis(), event, keys.state(request.step),
        ["cancelled", "", info.model_dump_json(), "[]", time.time(), s.aiecs_events_ttl],
        s.aiecs_socketio_channel, s.aiecs_events_maxlen, s.aiecs_events_ttl,
    )
    return seq > 0


def get_state(user_id: str, task_id: str, step: int | None = None) -> dict[str, Any]:
    """Status, result or error of a task's steps (all of them when ``step`` is None).

    Returns ``{"task_id", "user_id", "steps": {step: state}}``; ``steps`` is empty for an
    unknown task.
    """
    client = _redis()
    keys = TaskKeys(user_id, task_id)
    steps = [step] if step is not None else sorted(
        int(x) for x in client.smembers(steps_key(user_id, task_id))
    )
    out: dict[str, Any] = {"task_id": task_id, "user_id": user_id, "steps": {}}
    for st in steps:
        raw = client.hgetall(keys.state(st))
        if raw:
            out["steps"][st] = decode_state(raw)
    return out


def last_events(user_id: str, task_id: str, count: int = 50) -> list[dict[str, Any]]:
    """The newest ``count`` events of a task's log, oldest first."""
    entries = _redis().xrevrange(TaskKeys(user_id, task_id).log, count=count)
    return [json.loads(fields[b"e"]) for _, fields in reversed(entries)]
