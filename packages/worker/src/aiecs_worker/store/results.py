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
from queue import Empty
from typing import Any

from aiecs_core import AiecsError, TaskStatus
from celery import states
from celery.backends import redis as celery_redis
from celery.backends.asynchronous import _waiting_on
from kombu.utils.json import loads as json_loads

from .keys import BASE_PREFIX, celery_index_key
from .scripts import TERMINAL_LUA, pipelined

__all__ = ["META_PREFIX", "PUBLISH_LUA", "READ_LUA", "RECORDED", "RedisBackend",
           "SentinelBackend", "backend_url", "celery_meta", "unwatched"]

#: the most messages one ``.get()`` reads off its subscription's socket once its own is
#: there (the rest stay for the next; their channels are unsubscribed in one command)
TAKE_MAX = 256
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


def _outcome(status: str, result: str, error: str) -> tuple[str, Any]:
    """Celery's state and its ``result`` (a JSON text for SUCCESS, else the exception's
    dict) of a terminal record's fields."""
    if status == TaskStatus.COMPLETED.value:
        return "SUCCESS", result or "{}"
    info = json.loads(error) if error else {}
    message = info.get("message", "")
    if status == TaskStatus.CANCELLED.value:
        return "REVOKED", {"exc_type": "TaskRevokedError", "exc_message": [message or "cancelled"],
                           "exc_module": "celery.exceptions"}
    name = info.get("type") or "TaskCancelledError"
    return "FAILURE", {"exc_type": name, "exc_message": [message, info.get("details") or {}],
                       "exc_module": _module_of(name) or "aiecs_core.errors"}


def _date_done(finished: Any) -> str:
    return datetime.fromtimestamp(float(finished or 0), UTC).isoformat()


def celery_meta(status: str, result: str, error: str, finished: Any) -> str:
    """The Celery result meta (JSON, without ``task_id``) of a terminal record's fields:
    ``status``, ``result`` and ``error`` JSON (already redacted), ``finished`` (a timestamp).
    """
    state, value = _outcome(status, result, error)
    if not isinstance(value, str):
        value = json.dumps(value, separators=(",", ":"))
    return ('{"status":"' + state + '","result":' + value
            + ',"traceback":null,"children":[],"date_done":"' + _date_done(finished) + '"}')


def record_meta(task_id: str, status: str, result: str, error: str,
                finished: Any) -> dict[str, Any]:
    """:func:`celery_meta` as the dict Celery's decoding makes of it (``task_id`` in), built
    directly: the result's JSON decoded once, nothing encoded."""
    state, value = _outcome(status, result, error)
    return {"task_id": task_id, "status": state,
            "result": json_loads(value) if isinstance(value, str) else value,
            "traceback": None, "children": [], "date_done": _date_done(finished)}


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

    def _read(self, keys: list[str]) -> list[Any]:
        """:data:`READ_LUA` of Celery's result keys, one pipeline: per key the terminal
        record's fields (a list of str), else Celery's stored value (or None)."""
        # one shard off a Redis Cluster (one_result_record is never on a cluster): the
        # index is under BASE_PREFIX
        calls = [(READ_LUA, 2, k, celery_index_key(k[len(META_PREFIX):], BASE_PREFIX))
                 for k in keys]
        return [[v.decode() if isinstance(v, bytes) else v for v in reply]
                if isinstance(reply, list) else reply
                for reply in pipelined(self.client, calls)]

    def mget(self, keys: Any) -> list[Any]:
        keys = [k.decode() if isinstance(k, bytes) else k for k in keys]
        if not keys:
            return []
        out = []
        for key, reply in zip(keys, self._read(keys), strict=True):
            if isinstance(reply, list):
                meta = celery_meta(*reply)
                reply = '{"task_id":"' + key[len(META_PREFIX):] + '",' + meta[1:]
            out.append(reply)
        return out

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        """Celery's read of one result (``get_task_meta``): a record's meta built as the
        dict (:func:`record_meta`), not as JSON that Celery decodes again."""
        reply = self._read([META_PREFIX + task_id])[0]
        if isinstance(reply, list):
            return self.meta_from_decoded(record_meta(task_id, *reply))  # type: ignore[attr-defined]
        if not reply:
            return {"status": states.PENDING, "result": None}
        return self.decode_result(reply)  # type: ignore[attr-defined]

    def add_pending_result(self, result: Any, weak: bool = False,
                           start_drainer: bool = True) -> Any:
        """``AsyncResult.get()``'s first step. Celery subscribes to the result's channel
        (unless a send did), then reads the result, then unsubscribes: three round trips
        for a result already there. Here, without a subscription, the record is read
        first and a finished result is taken at once (one round trip; Celery's
        subscribe-then-read follows only for one not finished). With one, what the
        subscription has already received is read off its socket first (no round trip:
        the result published by the terminal script is usually there). A result set's
        members (``start_drainer=False``) are left to Celery."""
        if not start_drainer:
            return super().add_pending_result(result, weak, start_drainer)  # type: ignore[misc]
        consumer = self.result_consumer  # type: ignore[attr-defined]
        consumer.drainer.start()
        if self._resolved(result):
            return result
        subscribed = self.get_key_for_task(result.id) in consumer.subscribed_to  # type: ignore[attr-defined]
        if subscribed:
            if consumer.take_arrived(result.id) and self._resolved(result):
                return result
        else:
            meta = self.get_task_meta(result.id)  # type: ignore[attr-defined]
            if meta["status"] in states.READY_STATES:
                result._maybe_set_cache(meta)
                return result
        self._add_pending_result(result.id, result, weak=weak)  # type: ignore[attr-defined]
        return result

    def _resolved(self, result: Any) -> bool:
        """Whether ``result`` is ready from a message already received (Celery's buffer)."""
        try:
            self._maybe_resolve_from_buffer(result)  # type: ignore[attr-defined]
        except Empty:
            return False
        return result._cache is not None

    def wait_for_pending(self, result: Any, callback: Any = None, propagate: bool = True,
                         **kwargs: Any) -> Any:
        """Celery's wait; for a result :meth:`add_pending_result` has already made ready,
        nothing more (Celery would read it again from its cache and pass it through its
        consumer once more)."""
        cache = result._cache
        if cache is not None and cache.get("status") in states.READY_STATES:
            self._ensure_not_eager()  # type: ignore[attr-defined]
            return result.maybe_throw(callback=callback, propagate=propagate)
        return super().wait_for_pending(result, callback=callback,  # type: ignore[misc]
                                        propagate=propagate, **kwargs)

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

    def take_arrived(self, task_id: str) -> bool:
        """Read, without waiting, the messages the subscription has already received:
        up to ``task_id``'s, and up to :data:`TAKE_MAX` in all (each handled as Celery's
        drain does: buffered for its ``AsyncResult``, its channel given up, the channels
        unsubscribed together on the way out). False when another thread is waiting on
        the socket (its reads are its own) or nothing had arrived."""
        read = 0
        with self._locked():
            pubsub = self._pubsub
            if pubsub is None or self._socket_waiter:
                return False
            buffered = self.backend._pending_messages
            while self._take_one(pubsub):
                read += 1
                if read >= TAKE_MAX and buffered.get(task_id):
                    break
        return read > 0

    def _take_one(self, pubsub: Any) -> bool:
        """Celery's ``_drain_one`` that does not wait, the message handled without Celery's
        ``sleep(0)`` after it (a yield for green threads: ≈ 60 µs of wall time here,
        per result, in a loop that never blocks)."""
        with self.reconnect_on_error():
            connection = pubsub.connection
            if not (pubsub.subscribed and connection is not None
                    and connection.can_read(timeout=0)):
                return False
            message = pubsub.get_message(timeout=0)
            if message and message["type"] == "message":
                self._arrived(self._decode_result(message["data"]))
            return True
        return False  # the connection was lost: reconnected, nothing read

    def _arrived(self, meta: dict[str, Any]) -> None:
        """Celery's ``on_state_change`` (the Redis consumer's) without its ``sleep(0)``."""
        if self.on_message:
            self.on_message(meta)
        if meta["status"] in states.READY_STATES:
            task_id = meta["task_id"]
            results = _waiting_on(self._pending_results, task_id)
            if not results:  # for the AsyncResult that will ask (Celery's buffer)
                self._pending_messages.put(task_id, meta)
            for result in results:
                result._maybe_set_cache(meta)
                bucket = self.buckets.pop(result, None)
                if bucket is not None:
                    bucket.append(result)
            self.cancel_for(task_id)

    def _flush_pending_unsubscribe(self) -> None:
        """Celery's, with the channels given up meanwhile unsubscribed in one
        ``UNSUBSCRIBE`` (Celery sends one per channel: after a drain, one per result)."""
        if self._lock_depth.value:
            return  # the outermost _locked() flushes on exit (see Celery's)
        while self._pending_unsubscribe and self._pubsub_lock.acquire(blocking=False):
            self._lock_depth.value += 1
            try:
                keys = []
                while self._pending_unsubscribe:  # popped: others add without the lock
                    key = self._pending_unsubscribe.pop()
                    if key in self.subscribed_to:
                        self.subscribed_to.discard(key)
                        keys.append(key)
                if keys and self._pubsub:
                    with self.reconnect_on_error():
                        self._pubsub.unsubscribe(*keys)
            finally:
                self._lock_depth.value -= 1
                self._pubsub_lock.release()


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
