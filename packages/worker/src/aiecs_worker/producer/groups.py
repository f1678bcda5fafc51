"""What batches and workflows share: their errors, group hashes and message sending."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from aiecs_core import InvalidTaskError, TaskRequest

from ..app import app
from ..routing import route
from ..settings import get_settings
from ..store import admission
from ..store.events import TaskKeys, packet_parts
from ..store.hold import ADMIT_LUA, admit_args
from ..store.scripts import pipelined

__all__ = ["GroupError", "NotFoundError", "admitted", "group_fields", "pipelined_sends",
           "send_execution", "task_for"]


class GroupError(InvalidTaskError):
    """A batch or workflow refused at submission; the message names the item or step.

    Nothing was recorded or queued."""


class NotFoundError(KeyError):
    """No batch or workflow of this id for this user (a ``KeyError``: the id is its
    argument)."""


def task_for(request: TaskRequest, heavy: bool | None, *, flow: bool = False
             ) -> tuple[str, str, int]:
    """(Celery task name, queue, priority) of an execution: the operation's declared
    queue unless ``heavy`` overrides it. Raises ServiceNotFoundError /
    OperationNotFoundError when this process's plugins do not know the operation."""
    return route(admission.operation(request).heavy if heavy is None else heavy, flow=flow)


def check_item(request: TaskRequest, where: str) -> None:
    """Refuse an execution whose operation is unknown or whose input fails its model."""
    try:
        admission.check(request)
    except InvalidTaskError as exc:
        raise GroupError(f"{where}: {exc.message}", where=where) from None
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise GroupError(f"{where}: {type(exc).__name__}: {message}", where=where) from None


def group_fields(kind: str, user_id: str, log_id: str) -> list[Any]:
    """HSET fields of a group hash: how to append and publish its own events (on the log
    of ``log_id``, numbered like a task's, in the owner's room)."""
    s = get_settings()
    keys = TaskKeys(user_id, log_id)
    head, tail = packet_parts(user_id)
    event_head = json.dumps({"task_id": log_id, "step": 0, "user_id": user_id,
                             "task_name": kind, "delta": None, "error": None, "usage": [],
                             "partial_output": None}, separators=(",", ":"))[:-1]
    return ["kind", kind, "user", user_id, "seq", keys.seq, "log", keys.log,
            "channel", s.aiecs_socketio_channel, "phead", head, "ptail", tail,
            "maxlen", s.aiecs_events_maxlen, "ttl", s.aiecs_events_ttl, "head", event_head]


@contextlib.contextmanager
def pipelined_sends(producer: Any) -> Iterator[None]:
    """Messages published through ``producer`` inside the block are written to Redis in one
    round trip when the block ends (kombu's Redis transport sends one LPUSH per message,
    through the channel's ``conn_or_acquire``; here that yields one pipeline instead, for
    this producer's channel only). Other transports publish as usual.

    A failure of that round trip raises; the executions' PENDING records stay, and the
    sweeper queues them again (see lease.py)."""
    channel = producer.channel
    if not callable(getattr(channel, "conn_or_acquire", None)) or not hasattr(channel, "client"):
        yield
        return
    pipe = channel.client.pipeline(transaction=False)

    @contextlib.contextmanager
    def into_pipeline(client: Any = None) -> Iterator[Any]:
        yield pipe

    channel.conn_or_acquire = into_pipeline
    try:
        yield
    finally:
        del channel.conn_or_acquire  # the class's own again
    pipe.execute()


def send_execution(producer: Any, task: str, queue: str, priority: int,
                   kwargs: dict[str, Any], celery_id: str) -> None:
    """Queue one execution's message (its PENDING record is already written).

    Celery's own message, sent as ``app.send_task`` sends it, minus the result
    subscription ``send_task`` opens for the caller's AsyncResult: one round trip per
    message instead of three (``AsyncResult(id).get()`` still works, subscribing then)."""
    conf = app.conf
    message = app.amqp.create_task_message(
        celery_id, task, (), kwargs, time_limit=conf.task_time_limit,
        soft_time_limit=conf.task_soft_time_limit)
    app.amqp.send_task_message(producer, task, message, queue=queue, priority=priority)


def admitted(client: Any, sends: list[tuple]) -> list[tuple]:
    """Of ``sends`` (``send_execution``'s arguments, PENDING records written), those to
    send now; the others are held behind their user's fair-share window and sent when a
    slot frees (see aiecs_worker.store.hold). One round trip."""
    if not sends:
        return sends
    s = get_settings()
    calls = []
    for _task, queue, _priority, kwargs, _celery_id in sends:
        state_key = TaskKeys(kwargs["user_id"], kwargs["task_id"]).state(kwargs["step"])
        keys, args = admit_args(s, state_key, kwargs["user_id"], queue, None)
        calls.append((ADMIT_LUA, len(keys), *keys, *args))
    decisions = pipelined(client, calls)
    return [a for a, d in zip(sends, decisions, strict=True) if d != b"held"]
