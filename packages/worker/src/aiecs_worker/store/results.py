"""Celery's result backend, read from the execution's terminal record: one record, not two.

An aiecs task ends in its state hash (``aiecs:t:{user}:{task}:{step}:state``, written by
the terminal script, see :func:`aiecs_worker.store.state.finish_lua`). Celery's Redis
backend would store the same outcome a second time (``GET`` of the old result, then
``SETEX celery-task-meta-<id>`` + ``PUBLISH`` in a ``MULTI``: five commands and two round
trips per task). Here, when the result backend is the state Redis
(:attr:`aiecs_worker.settings.Settings.one_result_record`):

- the terminal script publishes the Celery result on Celery's channel
  (``celery-task-meta-<celery id>``, :data:`PUBLISH_LUA`), in the same atomic step as the
  record, so a waiting ``AsyncResult.get()`` wakes as before;
- the backend (:class:`RedisBackend`, :class:`SentinelBackend`) reads an id's result from
  the record its celery index names (:data:`READ_LUA`, one round trip), falling back to
  Celery's own key: a task that is not aiecs's, or an outcome the runner did not record
  (arguments naming no execution, an answer replayed to another Celery id);
- the worker does not store what the record holds: the task marks its request
  (:data:`RECORDED`) and :meth:`RedisBackend.store_result` skips it;
- a send made inside :func:`unwatched` (the progress server's ``POST /tasks``: nobody in
  that process waits for the result) does not subscribe to the result's channel. Celery
  subscribes at every send so that a result published before ``.get()`` is not missed;
  ``.get()`` subscribes itself and then reads the record, so an unwatched result can
  still be waited for, from any process (``AsyncResult(id).get()``).

What a Celery user sees is what the tracer stored: ``SUCCESS`` and the task's (redacted)
result; ``FAILURE`` and the aiecs error rebuilt with ``cls(message, details)`` (no
traceback: none is kept); ``REVOKED`` and ``TaskRevokedError(reason)`` for a cancelled
execution. Pending and running executions are ``PENDING``, as with
``task_track_started`` off.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from aiecs_core import AiecsError, TaskStatus
from celery.backends import redis as celery_redis

from .keys import BASE_PREFIX, celery_index_key
from .scripts import TERMINAL_LUA, pipelined

__all__ = ["META_PREFIX", "PUBLISH_LUA", "READ_LUA", "RECORDED", "RedisBackend",
           "SentinelBackend", "backend_url", "celery_meta", "unwatched"]

#: Celery's result key and channel prefix (``celery.backends.base.KeyValueStoreBackend``).
META_PREFIX = "celery-task-meta-"
#: The request attribute a task sets when the runner recorded its outcome.
RECORDED = "aiecs_recorded"

_TERMINAL = TERMINAL_LUA

#: Lua, run by the terminal script's winner (``f[7]``: the record's celery id; ``meta``:
#: the Lua expression of :func:`celery_meta`'s JSON, '' when Celery stores its own).
PUBLISH_LUA = f"""
if meta ~= '' and f[7] then
  redis.call('PUBLISH', '{META_PREFIX}' .. f[7],
             '{{"task_id":"' .. f[7] .. '",' .. string.sub(meta, 2))
end
"""

# KEYS: Celery's result key, the celery index.  Returns {status, result, error, finished}
# of a terminal record, else Celery's stored value (or nil).
READ_LUA = f"""
local terminal = {_TERMINAL}
local state = redis.call('GET', KEYS[2])
if state then
  local f = redis.call('HMGET', state, 'status', 'result', 'error', 'finished')
  if f[1] and terminal[f[1]] then return {{f[1], f[2] or '', f[3] or '', f[4] or ''}} end
end
return redis.call('GET', KEYS[1])
"""


@functools.cache
def _module_of(name: str) -> str | None:
    """The module of the aiecs error class called ``name`` (None: unknown here)."""
    todo: list[type] = [AiecsError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls.__module__
        todo.extend(cls.__subclasses__())
    return None


def celery_meta(status: str, result: str, error: str, finished: Any) -> str:
    """The Celery result meta (JSON, without ``task_id``) of a terminal record's fields:
    ``status``, ``result`` and ``error`` JSON (already redacted), ``finished`` (a timestamp).
    """
    done = datetime.fromtimestamp(float(finished or 0), UTC).isoformat()
    if status == TaskStatus.COMPLETED.value:
        state, value = "SUCCESS", result or "{}"
    else:
        info = json.loads(error) if error else {}
        message = info.get("message", "")
        if status == TaskStatus.CANCELLED.value:
            state = "REVOKED"
            exc = {"exc_type": "TaskRevokedError", "exc_message": [message or "cancelled"],
                   "exc_module": "celery.exceptions"}
        else:
            state = "FAILURE"
            name = info.get("type") or "TaskCancelledError"
            exc = {"exc_type": name, "exc_message": [message, info.get("details") or {}],
                   "exc_module": _module_of(name) or "aiecs_core.errors"}
        value = json.dumps(exc, separators=(",", ":"))
    return ('{"status":"' + state + '","result":' + value
            + ',"traceback":null,"children":[],"date_done":"' + done + '"}')


#: ``on``: this thread's sends subscribe to nothing (:func:`unwatched`).
_sends = threading.local()


@contextlib.contextmanager
def unwatched() -> Iterator[None]:
    """The sends of this block (this thread) do not subscribe to their results' channels:
    for a process that never waits for them. One ``SUBSCRIBE`` and, when the
    ``AsyncResult`` is dropped, one ``UNSUBSCRIBE`` fewer per send, each a round trip."""
    before = getattr(_sends, "on", False)
    _sends.on = True
    try:
        yield
    finally:
        _sends.on = before


class _OneRecord:
    """Celery's Redis backend, reading aiecs's terminal record (mixed into Celery's)."""

    #: Celery's Redis backend's client (the class this is mixed into sets it)
    client: Any

    def on_task_call(self, producer: Any, task_id: str) -> Any:
        if getattr(_sends, "on", False):
            return None  # nobody here waits: a later .get() subscribes, then reads
        return super().on_task_call(producer, task_id)  # type: ignore[misc]

    def get(self, key: str | bytes) -> Any:
        return self.mget([key])[0]

    def mget(self, keys: Any) -> list[Any]:
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        if not keys:
            return []
        # one shard off a Redis Cluster (one_result_record is never on a cluster): the
        # index is under BASE_PREFIX
        calls = [(READ_LUA, 2, k, celery_index_key(k[len(META_PREFIX):], BASE_PREFIX))
                 for k in keys]
        out = []
        for key, reply in zip(keys, pipelined(self.client, calls), strict=True):
            if isinstance(reply, list):
                status, result, error, finished = (
                    v.decode() if isinstance(v, bytes) else v for v in reply)
                meta = celery_meta(status, result, error, finished)
                reply = '{"task_id":"' + key[len(META_PREFIX):] + '",' + meta[1:]
            out.append(reply)
        return out

    def store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None, **kwargs: Any) -> Any:
        if getattr(request, RECORDED, False):
            return result  # the terminal record holds it; its script published it
        return super().store_result(task_id, result, state, traceback=traceback,  # type: ignore[misc]
                                    request=request, **kwargs)


class _Consumer(celery_redis.ResultConsumer):
    """Celery's consumer; its reconnect reads the results it waits for with the client's
    own ``MGET`` (Celery's keys only), so the records are read again here."""

    def _reconnect_pubsub(self) -> None:
        super()._reconnect_pubsub()
        with self._locked():
            keys = list(self.subscribed_to)
            for raw in self.backend.mget(keys) if keys else []:
                if raw:
                    self.on_state_change(self._decode_result(raw), None)


class RedisBackend(_OneRecord, celery_redis.RedisBackend):
    """Celery's Redis backend, results read from aiecs's terminal records."""

    ResultConsumer = _Consumer


class SentinelBackend(_OneRecord, celery_redis.SentinelBackend):
    """Celery's Redis Sentinel backend, results read from aiecs's terminal records."""

    ResultConsumer = _Consumer


def backend_url(url: str) -> str:
    """Celery's ``result_backend`` value that selects the class above for ``url`` (a Redis
    or Sentinel URL): Celery's ``<class>+<url>`` form."""
    cls = SentinelBackend if url.startswith("sentinel://") else RedisBackend
    return f"{cls.__module__}:{cls.__name__}+{url}"
