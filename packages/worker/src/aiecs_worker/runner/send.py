"""Direct send: a ``.delay()``'s Celery message pushed by the script that records it PENDING.

A submission (:meth:`aiecs_worker.runner.tasks.AiecsTask.apply_async`) records its
execution PENDING and admits it (:func:`aiecs_worker.store.records.record_pending`, one
pipeline of Lua calls), then Celery publishes its message: kombu's Redis transport
``LPUSH``-es it onto the queue's list, a second round trip, and most of the producer's CPU
(header building, ``saferepr`` of the arguments, kombu's publish machinery).

When the broker is the state Redis itself, this module builds that message here, exactly
as Celery (protocol 2) and kombu's Redis transport would put it in the list (same
headers, properties and JSON shape, the body base64 as kombu encodes it), and the
admission script pushes it (:data:`aiecs_worker.store.hold.ADMIT_PUSH_LUA`) only when its
decision is to send it: one round trip per submission. A held execution is not pushed
(its releaser sends it later, as before); a refused budget pushes nothing.

The message differs from Celery's in one deliberate way: ``kwargsrepr`` (what ``celery
worker``'s log and Flower show of the arguments) is Python's ``repr`` of the keyword
arguments, cut at Celery's ``kwargsrepr_maxsize`` (1,024 characters) with ``...``,
instead of Celery's ``saferepr``, a pure-Python walk that cost ~70 µs per submission (a
tenth of the producer's CPU); the two read the same up to three levels of nesting, where
``saferepr`` shows ``{...}`` and ``repr`` the value. Arguments whose JSON is larger than
16 × that size get Celery's ``saferepr`` (whose work is bounded by the size).

``AIECS_DIRECT_SEND=0`` turns it off (Celery's publish for every call). Everything else
falls back to Celery's own publish (:meth:`Direct.plan` is None, or a
call :func:`eligible` refuses), so nothing changes where the direct message could not be
exactly what Celery sends:

- per process: the broker is not kombu's plain Redis transport (RabbitMQ, Sentinel), or
  is not the very Redis of the state client (another host, port, database, user,
  password, socket or TLS); the state client is a Redis Cluster's (AIECS_REDIS_CLUSTER:
  the queue's list is in another slot than the user's keys); kombu's
  ``global_keyprefix``; a queue with ``x-expires``; another protocol, serializer,
  compression, result backend than Celery's Redis one (its ``on_task_call`` needs a
  producer); ``task_routes`` other than aiecs's; a task with exec options aiecs does not
  set (``expires``, ``routing_key``, ...);
- per call: any ``apply_async`` option (``eta``/``countdown``, ``expires``, ``queue``,
  ``priority``, ``link``, ``producer``, headers, ...), positional arguments,
  ``task_always_eager``, ``task_send_sent_event`` (AIECS_TASK_EVENTS), a call from inside
  a running task (Celery sets ``parent_id``/``root_id`` and the parent's trail), and any
  receiver of ``before_task_publish``, ``after_task_publish`` or ``task_sent`` (aiecs's
  own tracing connects one with AIECS_TRACING: such a process keeps Celery's publish,
  so the receivers see exactly what they always saw).

After the push, the result subscription Celery's Redis backend makes at send
(``backend.on_task_call``) is made, so a later ``AsyncResult.get()`` wakes as before
(a ``.get()`` also reads the stored result once subscribed: a result published before
the subscription is not missed).
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from typing import Any, NamedTuple

import redis
from celery import Task, signals
from celery.app.task import Task as CeleryTask
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.entity import maybe_delivery_mode
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as kombu_dumps

from ..app import app
from ..routing import task_routes
from ..settings import get_settings
from ..store import results

__all__ = ["Plan", "eligible", "message", "plan", "reset"]


class Plan(NamedTuple):
    """What every direct message of one Celery task in this process shares."""

    task: str
    queue: str  #: the routing key (the queue's name; the exchange is the default '')
    list_key: str  #: kombu's list of that queue at the route's priority
    priority: int
    delivery_mode: int
    timelimit: tuple[Any, Any]
    ignore_result: bool


#: this process's plans, by task name, for the state client they were made for
_plans: dict[str, Plan | None] = {}
_client: Any = None
_lock = threading.Lock()
_origin: tuple[int, str] = (0, "")
#: after a plan could not be made (the broker unreachable), when to try again
_retry_at = 0.0
_RETRY_S = 10.0
#: the exec options a task may have for a direct send (others: Celery's publish)
_ALLOWED_EXEC = frozenset({"serializer", "time_limit", "soft_time_limit"})


def reset() -> None:
    """Forget the plans (a process whose settings or clients changed: tests)."""
    global _client, _retry_at
    with _lock:
        _plans.clear()
        _client = None
        _retry_at = 0.0


def eligible(options: dict[str, Any], args: Any) -> bool:
    """Whether this call may be sent directly, as far as the call itself goes (the
    process-wide conditions are :func:`plan`'s)."""
    if options or args:
        return False
    conf = app.conf
    if conf.task_always_eager or conf.task_send_sent_event:
        return False
    if (signals.before_task_publish.receivers or signals.after_task_publish.receivers
            or signals.task_sent.receivers):
        return False
    return app.current_worker_task is None


def plan(task: Task, client: Any) -> Plan | None:
    """The plan of ``task``'s direct messages in this process, pushed through ``client``
    (the state Redis's), or None when they cannot be exactly Celery's (see the module)."""
    global _client, _retry_at
    if _client is not client:
        with _lock:
            if _client is not client:
                _plans.clear()
                _client = client
    try:
        return _plans[task.name]
    except KeyError:
        pass
    if time.monotonic() < _retry_at:
        return None
    with _lock:
        if task.name not in _plans:
            try:
                _plans[task.name] = _make_plan(task, client)
            except Exception:  # noqa: BLE001 - e.g. the broker unreachable: Celery's
                # publish for a while (it waits for the broker itself: not twice per call)
                _retry_at = time.monotonic() + _RETRY_S
                return None
        return _plans[task.name]


def _same_redis(channel: Any, client: Any) -> bool:
    """Whether kombu's channel talks to the very Redis (and database) of ``client``."""
    if type(client) is not redis.Redis or type(client.connection_pool) is not redis.ConnectionPool:
        return False  # a cluster's or a Sentinel's client
    mine = client.connection_pool.connection_kwargs
    theirs = channel._connparams()
    for name in ("host", "port", "db", "username", "password", "path"):
        if (mine.get(name) or None) != (theirs.get(name) or None):
            return False
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    return tls == issubclass(theirs.get("connection_class", redis.Connection),
                             redis.SSLConnection)


def _make_plan(task: Task, client: Any) -> Plan | None:
    if not get_settings().aiecs_direct_send:
        return None  # switched off (AIECS_DIRECT_SEND=0): Celery's publish
    task = getattr(task, "_get_current_object", lambda: task)()  # a module's task: a proxy
    conf = app.conf
    if (conf.task_protocol != 2 or conf.task_serializer != "json" or conf.task_compression
            or conf.task_routes != task_routes()
            or (conf.broker_transport_options or {}).get("global_keyprefix")):
        return None
    if type(task).shadow_name is not CeleryTask.shadow_name or task.typing \
            or task._dump_pydantic_arguments is not None:
        return None
    if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
        return None  # Celery's apply_async raises: let it
    # Celery's Redis backend (aiecs's one-record backend: the same, or nothing inside
    # store.results.unwatched) ignores the producer it is given; others (rpc) need it
    backend_call = type(app.backend).on_task_call
    if backend_call not in (CeleryRedisBackend.on_task_call, BaseBackend.on_task_call,
                            results._OneRecord.on_task_call):
        return None
    exec_options = task._get_exec_options()
    for name, value in exec_options.items():
        if value is not None and name not in _ALLOWED_EXEC:
            return None
    if exec_options.get("serializer") not in (None, "json"):
        return None
    route = app.amqp.router.route({}, task.name, None, None, task)
    queue = route.get("queue")
    if set(route) != {"queue", "priority"} or queue is None or queue.exchange.type != "direct":
        return None
    with app.producer_or_acquire() as producer:
        if type(producer.connection.transport) is not kombu_redis.Transport:
            return None  # RabbitMQ, Sentinel, another transport
        # an unreachable broker: raised at once (not after Celery's connection retries)
        producer.connection.ensure_connection(max_retries=1, interval_start=0,
                                              interval_step=0)
        channel = producer.channel
        if channel.global_keyprefix or channel.body_encoding != "base64" \
                or producer.serializer or producer.compression:
            return None
        if not _same_redis(channel, client):
            return None
        producer.maybe_declare(queue)  # as Celery's first publish does (once per process)
        if queue.name in channel._expires:
            return None
        priority = route["priority"]
        list_key = channel._q_for_pri(queue.name, channel._get_message_priority(
            {"properties": {"priority": priority}}, reverse=False))
        # Celery's choice (the queue's exchange's, else task_default_delivery_mode), then
        # kombu's (its default exchange's; 'persistent' -> 2)
        delivery_mode = maybe_delivery_mode(
            (queue.exchange.delivery_mode or conf.task_default_delivery_mode)
            or producer.exchange.delivery_mode)
    return Plan(task.name, queue.name, list_key, priority, delivery_mode,
                (exec_options.get("time_limit"), exec_options.get("soft_time_limit")),
                bool(task.ignore_result))


def _anon_origin() -> str:
    global _origin
    pid = os.getpid()
    if _origin[0] != pid:
        _origin = (pid, anon_nodename())
    return _origin[1]


def kwargs_repr(kwargs: dict[str, Any], body_size: int) -> str:
    """``kwargsrepr`` of a direct message (see the module: ``repr``, cut at Celery's size)."""
    maxsize = app.amqp.kwargsrepr_maxsize
    if body_size > 16 * maxsize:
        return saferepr(kwargs, maxsize, maxlevels=app.conf.task_repr_maxlevels)
    text = repr(kwargs)
    return text if len(text) <= maxsize else text[:maxsize] + "..."


def message(p: Plan, task_id: str, kwargs: dict[str, Any]) -> str:
    """The Redis list entry of ``task_id``'s message: what kombu's Redis transport would
    ``LPUSH`` for ``apply_async(kwargs=kwargs, task_id=task_id)`` of ``p.task``."""
    body = kombu_dumps(([], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                     "chord": None}))
    headers: dict[str, Any] = {
        "lang": "py", "task": p.task, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": list(p.timelimit), "root_id": task_id, "parent_id": None,
        "argsrepr": "()", "kwargsrepr": kwargs_repr(kwargs, len(body)),
        "origin": _anon_origin(), "ignore_result": p.ignore_result,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    return kombu_dumps({
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": app.thread_oid,
            "delivery_mode": p.delivery_mode,
            "delivery_info": {"exchange": "", "routing_key": p.queue},
            "priority": p.priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    })


def subscribe(p: Plan, task_id: str) -> None:
    """What Celery's ``send_task`` does after its publish: the result subscription (none
    inside :func:`aiecs_worker.store.results.unwatched`, as for Celery's publish)."""
    if not p.ignore_result:
        app.backend.on_task_call(None, task_id)

