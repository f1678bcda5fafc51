"""Submitting, cancelling and inspecting executions from any process (API, CLI, scripts).

These functions use a synchronous Redis client; call them from a thread in async code.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection
from datetime import datetime
from typing import Any

from aiecs_core import TaskRequest
from celery.result import AsyncResult

from ..app import app
from ..routing import route
from ..settings import get_settings
from ..store import admission
from ..store.events import TaskKeys, celery_task_id, run_script
from ..store.keys import CANCEL_CHANNEL, SHARD_PREFIXES, celery_index_key, steps_key
from ..store.records import pubsub_redis, record_pending, state_redis
from ..store.results import unwatched
from ..store.state import CANCEL_LUA, decode_state
from .advance import after_cancel
from .release import record_cancelled

__all__ = ["cancel", "cancel_celery", "get_state", "record_cancelled", "record_pending",
           "submit", "task_steps"]




def submit(request: TaskRequest, *, heavy: bool | None = None,
           eta: datetime | None = None, countdown: float | None = None,
           steps: Collection[int] | None = None, watch: bool = True) -> AsyncResult:
    """Queue one execution; the queue follows the operation's declaration unless overridden.

    With ``eta`` (an aware datetime; naive is UTC) or ``countdown`` (seconds) it runs no
    earlier than then, PENDING until; :func:`cancel` ends it CANCELLED at once.

    Raises PayloadTooLargeError / ServiceNotFoundError / OperationNotFoundError /
    InputValidationError before anything is queued (it loads the same plugins as the
    workers), and QuotaExceededError when a quota of the user refuses it: the one
    submission check, :mod:`aiecs_worker.store.admission`.

    ``steps``: the task's steps (:func:`task_steps`) when the caller has just read them
    (the step limit is checked against them, not read again). ``watch=False``: this
    process will not wait for the result, so the send does not subscribe to its channel
    (:func:`aiecs_worker.store.results.unwatched`); ``.get()`` on the answer still works.
    """
    spec = admission.check_request(request, client=state_redis(), steps=steps)
    # the task by its name: registered by aiecs_worker.runner.tasks (the package init imports it)
    task = app.tasks[route(spec.heavy if heavy is None else heavy).task]
    celery_id = celery_task_id(request.user_id, request.task_id, request.step)
    timing = {k: v for k, v in (("eta", eta), ("countdown", countdown)) if v is not None}
    with contextlib.nullcontext() if watch else unwatched():
        return task.apply_async(kwargs=request.model_dump(mode="json"), task_id=celery_id,
                                **timing)


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
    with state_redis().pipeline(transaction=False) as pipe:  # its user's shard is unknown
        for shard in SHARD_PREFIXES:
            pipe.get(celery_index_key(celery_id, shard))
        state_key = next((k for k in pipe.execute() if k is not None), None)
    if state_key is None:
        pubsub_redis().publish(CANCEL_CHANNEL, celery_id)
        app.control.revoke(celery_id)
        return True
    return _cancel_state(state_key.decode(), celery_id)


def _cancel_state(state_key: str, celery_id: str) -> bool:
    s = get_settings()
    client = state_redis()
    marked = run_script(client, CANCEL_LUA, [state_key], [time.time(), s.aiecs_events_ttl])
    if marked:
        pubsub_redis().publish(CANCEL_CHANNEL, celery_id)
        app.control.revoke(celery_id)
        after_cancel(client, state_key)  # a waiting workflow step ends now
        _end_if_not_due(client, state_key)
    return bool(marked)


def _end_if_not_due(client: Any, state_key: str) -> None:
    """A PENDING execution held in Redis (see aiecs_worker.store.hold), or whose eta is still
    ahead, ends CANCELLED now, not when it would have been sent or run: the terminal
    transition removes what it held (index entry, request, window entry), and a message
    that comes later finds it terminal and does not run it."""
    status, eta, request, held = client.hmget(state_key, "status", "eta", "request", "held")
    if status == b"pending" and request and (held or (eta and float(eta) > time.time() + 1)):
        reason = ("cancelled before its scheduled time" if held != b"fair"
                  else "cancelled before it started")
        record_cancelled((), json.loads(request), reason)


def get_state(user_id: str, task_id: str, step: int | None = None, *,
              newest: int | None = None) -> dict[str, Any]:
    """Status, result or error of a task's steps (all of them when ``step`` is None, or
    the ``newest`` ones), read in one round trip.

    Returns ``{"task_id", "user_id", "steps": {step: state}, "steps_total"}``; ``steps``
    is empty for an unknown task; ``steps_total`` counts the steps the task lists.
    """
    client = state_redis()
    keys = TaskKeys(user_id, task_id)
    if step is not None:
        steps, total = [step], None
    else:
        steps = task_steps(user_id, task_id, client=client)
        total = len(steps)
        if newest is not None:
            steps = steps[-newest:] if newest > 0 else []
    pipe = client.pipeline(transaction=False)
    for st in steps:
        pipe.hgetall(keys.state(st))
    out: dict[str, Any] = {"task_id": task_id, "user_id": user_id, "steps": {}}
    for st, raw in zip(steps, pipe.execute() if steps else [], strict=True):
        if raw:
            out["steps"][st] = decode_state(raw)
    out["steps_total"] = total if total is not None else len(out["steps"])
    return out


def task_steps(user_id: str, task_id: str, *, client: Any = None) -> list[int]:
    """The steps a task lists (queued or run), in order."""
    client = client or state_redis()
    return sorted(int(x) for x in client.smembers(steps_key(user_id, task_id)))


def last_events(user_id: str, task_id: str, count: int = 50) -> list[dict[str, Any]]:
    """The newest ``count`` events of a task's log, oldest first."""
    entries = state_redis().xrevrange(TaskKeys(user_id, task_id).log, count=count)
    return [json.loads(fields[b"e"]) for _, fields in reversed(entries)]
