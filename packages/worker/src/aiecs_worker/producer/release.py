"""A fair-share slot freed: the user's next held executions are sent (see
:mod:`aiecs_worker.store.hold`); an execution revoked before it ran ends CANCELLED and frees
its slot. Any process may call these (they send messages: above the store)."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from ..app import app
from ..ops import tracing
from ..settings import get_settings
from ..store.events import run_script
from ..store.hold import RELEASE_LUA, decode, release_args
from ..store.records import end_cancelled, state_redis

__all__ = ["record_cancelled", "release_window", "send_released"]


def send_released(released: list[str]) -> int:
    """Send the messages of executions :data:`RELEASE_LUA` released (flat list: celery
    id, task, queue, request, eta, trace); how many.

    Each is sent in the trace context its submission stored (``trace``): its trace goes
    on from there. A failed send leaves them PENDING in the pending index: the reaper
    sends them again."""
    if not released:
        return 0
    routes = app.conf.task_routes or {}
    conf = app.conf
    with app.producer_or_acquire() as producer:
        for i in range(0, len(released), 6):
            celery_id, task, queue, request, eta, trace = released[i:i + 6]
            when = None
            if eta and float(eta) > time.time():
                when = datetime.fromtimestamp(float(eta), UTC)
            message = app.amqp.create_task_message(
                celery_id, task, (), json.loads(request), eta=when,
                time_limit=conf.task_time_limit, soft_time_limit=conf.task_soft_time_limit)
            priority = (routes.get(task) or {}).get("priority")
            with tracing.resumed(trace):
                app.amqp.send_task_message(producer, task, message, queue=queue or None,
                                           priority=priority)
    return len(released) // 6


def release_window(client: Any, settings: Any, *, state_key: str = "", window: str = "",
                   clean: bool = False) -> int:
    """Fill one window from its user's FIFO (synchronous client); how many were sent."""
    keys, args = release_args(settings, state_key=state_key, window=window, clean=clean)
    return send_released(decode(run_script(client, RELEASE_LUA, keys, args)))


def record_cancelled(args: tuple, kwargs: dict[str, Any], reason: str) -> bool:
    """Mark a revoked-before-running execution CANCELLED and publish its terminal event;
    its slot in its user's fair-share window is free (else the workers' sweep frees it)."""
    state_key = end_cancelled(args, kwargs, reason)
    if state_key:
        with contextlib.suppress(Exception):
            release_window(state_redis(), get_settings(), state_key=state_key)
    return bool(state_key)
