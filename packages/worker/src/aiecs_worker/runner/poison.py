"""A malformed broker message never crashes a worker: it is dead-lettered.

Left alone, a message kombu or Celery cannot take apart raises out of the worker's event
loop ("Unrecoverable error") and stops the worker; restored to the queue at shutdown, it
stops the next worker too. Two guards check every message a worker takes from a Redis
queue, each where the failure would otherwise happen (from RabbitMQ, whose client
library parses the frames itself, the second):

1. **transport** (:class:`Channel`): the raw list item popped by ``BRPOP``/``RPOP`` must
   be an envelope kombu can build a message from and acknowledge: a JSON object whose
   ``properties`` hold a ``delivery_tag`` and a ``delivery_info`` with ``exchange`` and
   ``routing_key``, whose ``headers`` are an object, whose ``body`` decodes with its
   ``body_encoding``. kombu would otherwise fail in ``_brpop_read`` (``loads``), in
   ``Message.__init__`` or in ``QoS.append``, before Celery sees anything.
2. **consumer** (:class:`Consumer`, Celery's ``worker_consumer``): a task message must be
   Celery's message protocol 2 with the header types Celery relies on (``id``,
   ``timelimit``, ``eta``, ``stamped_headers``, ...) and, for a task this worker runs, a
   JSON body ``[args, kwargs, embed]``. Anything that still raises while Celery takes the
   message (strategy, ``Request``, the pool's apply) is caught there as well.

A rejected message is pushed, with its reason, onto the Redis list :data:`DEADLETTER_KEY`
of the broker (of the state Redis, ``REDIS_URL``, when the broker is RabbitMQ; capped at
``AIECS_DEADLETTER_MAXLEN`` entries), logged in one WARNING line, and acknowledged: it is
never redelivered, and the worker serves the next message. When it names one of the aiecs
tasks and its arguments identify an execution that has not started, that execution ends
FAILED (``InvalidTaskError``) so its user learns why.

A message for a task this worker does not know is left to Celery (it logs and rejects it).
Broadcasts (``celery.pidbox``) pass the transport's envelope check too.

:func:`install` puts both guards in place for an app (``app.py`` calls it): the app's
AMQP class makes connections whose Redis transport is :class:`Transport` (nothing is
patched in kombu itself), and ``worker_consumer`` names :class:`Consumer`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from typing import Any

from aiecs_core import InvalidTaskError, TaskStatus
from aiecs_core.jsonlimits import value_depth
from celery.app.amqp import AMQP as CeleryAMQP
from celery.utils.time import maybe_iso8601, maybe_make_aware
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection as KombuConnection
from kombu.exceptions import ContentDisallowed
from kombu.utils.json import loads as kombu_loads

from ..routing import AIECS_TASKS
from ..settings import get_settings
from ..store.keys import DEADLETTER_KEY, TaskKeys
from ..store.records import end_execution, state_redis
from ..store.requests import routable_call

__all__ = [
    "DEADLETTER_KEY",
    "RAW_LIMIT",
    "Consumer",
    "envelope_problem",
    "install",
    "task_problem",
]

log = logging.getLogger("aiecs.worker.poison")

#: Redis list (on the broker) of rejected messages, newest first.
#: Characters of a rejected message kept in its dead-letter entry.
RAW_LIMIT = 65_536
#: Deepest nesting accepted in an envelope (its body counted apart) and in a task body.
MAX_DEPTH = 64
#: Longest task id accepted.
MAX_ID = 255

_EMBED = {"callbacks": list, "errbacks": list, "chain": list, "chord": dict}
_OPTIONAL_STR = ("lang", "shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr",
                 "origin")
_OPTIONAL_INT = ("retries", "group_index", "replaced_task_nesting")

_hostname = f"{socket.gethostname()}:{os.getpid()}"  # the worker's name once it has one


# --- checks -----------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _depth(value: Any, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` (aiecs_core's iterative walk)."""
    return value_depth(value, limit) <= limit


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value >= 0


def envelope_problem(payload: Any) -> str | None:
    """Why kombu's Redis transport cannot take this decoded envelope, or None."""
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {_kind(payload)}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return ("the envelope has no 'properties'" if props is None
                else f"'properties' is a JSON {_kind(props)}, not an object")
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return ("'properties' has no 'delivery_tag'" if tag is None
                else f"'delivery_tag' must be a non-empty string, not {_short(tag)}")
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        return ("'properties' has no 'delivery_info'" if info is None
                else f"'delivery_info' is a JSON {_kind(info)}, not an object")
    for name in ("exchange", "routing_key"):
        if not isinstance(info.get(name), str):
            return f"'delivery_info.{name}' must be a string, not {_short(info.get(name))}"
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return f"'headers' is a JSON {_kind(headers)}, not an object"
    for name in ("content-type", "content-encoding"):
        if payload.get(name) is not None and not isinstance(payload.get(name), str):
            return f"'{name}' must be a string, not {_short(payload.get(name))}"
    if not _depth({k: v for k, v in payload.items() if k != "body"}, MAX_DEPTH):
        return f"the envelope nests deeper than {MAX_DEPTH} levels"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body is not None and not isinstance(body, str):
        return f"'body' must be a string, not a JSON {_kind(body)}"
    if encoding is not None and not isinstance(encoding, str):
        return f"'body_encoding' must be a string, not {_short(encoding)}"
    if body and encoding and encoding.lower() != "utf-8":
        if encoding != "base64":
            return f"unknown body_encoding {_short(encoding)}"
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the body is not valid base64 (body_encoding: base64)"
    return None


def _header_problem(headers: dict[str, Any]) -> str | None:
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID:
        return (f"header 'id' must be a non-empty string of at most {MAX_ID} characters, "
                f"not {_short(task_id)}")
    for name in _OPTIONAL_STR:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"header '{name}' must be a string or null, not {_short(headers[name])}"
    for name in _OPTIONAL_INT:
        value = headers.get(name)
        if value is not None and not (_is_int(value) and value >= 0):
            return f"header '{name}' must be a non-negative integer, not {_short(value)}"
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"],
                                                                    bool):
        return f"header 'ignore_result' must be a boolean, not {_short(headers['ignore_result'])}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, (list, tuple)) and len(limits) == 2
        and all(v is None or _is_number(v) for v in limits)
    ):
        return ("header 'timelimit' must be [hard, soft] (seconds or null), "
                f"not {_short(limits)}")
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"header '{name}' must be an ISO 8601 date string, not {_short(value)}"
        try:
            maybe_make_aware(maybe_iso8601(value)).timestamp()
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            return f"header '{name}' {_short(value)} is not a usable ISO 8601 date: {exc}"
    stamped = headers.get("stamped_headers")
    if stamped is not None and not (
        isinstance(stamped, list) and all(isinstance(s, str) for s in stamped)
    ):
        return f"header 'stamped_headers' must be a list of strings, not {_short(stamped)}"
    if headers.get("stamps") is not None and not isinstance(headers["stamps"], dict):
        return f"header 'stamps' must be an object, not {_short(headers['stamps'])}"
    return None


def _body_problem(message: Any) -> str | None:
    content_type = message.content_type
    if not isinstance(content_type, str) or not content_type:
        return "no content-type (this worker accepts application/json)"
    try:
        body = message.decode()
    except ContentDisallowed:
        return f"content-type {_short(content_type)} is refused (this worker accepts JSON only)"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the message's fault
        return f"the body does not decode as {content_type}: {type(exc).__name__}: {exc}"
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        shape = f"an array of {len(body)}" if isinstance(body, (list, tuple)) else (
            f"a JSON {_kind(body)}")
        return f"the body must be [args, kwargs, embed] (protocol 2), not {shape}"
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        return f"the body's args must be an array, not a JSON {_kind(args)}"
    if not isinstance(kwargs, dict):
        return f"the body's kwargs must be an object, not a JSON {_kind(kwargs)}"
    if embed is not None and not isinstance(embed, dict):
        return f"the body's embed must be an object or null, not a JSON {_kind(embed)}"
    for key, value in (embed or {}).items():
        if key not in _EMBED:
            return f"the body's embed has an unknown key {_short(key)}"
        if value is not None and not isinstance(value, _EMBED[key]):
            return f"the body's embed '{key}' must be a JSON {_kind(_EMBED[key]())} or null"
    if not _depth(body, MAX_DEPTH):
        return f"the body nests deeper than {MAX_DEPTH} levels"
    return None


def task_problem(message: Any, registered: Container[str]) -> str | None:
    """Why Celery cannot take this task message, or None.

    ``registered``: the task names this worker runs; the body of a message for any other
    task is not examined (Celery reports unknown tasks itself).
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return f"'headers' is a JSON {_kind(headers)}, not an object"
    if "task" not in headers:
        return "no 'task' header: only Celery's message protocol 2 is accepted"
    name = headers["task"]
    if not isinstance(name, str) or not name:
        return f"header 'task' must be a non-empty string, not {_short(name)}"
    if not _depth(headers, MAX_DEPTH):
        return f"the headers nest deeper than {MAX_DEPTH} levels"
    problem = _header_problem(headers)
    if problem is None:
        props = message.properties or {}
        for prop in ("correlation_id", "reply_to"):
            if props.get(prop) is not None and not isinstance(props[prop], str):
                return f"property '{prop}' must be a string, not {_short(props[prop])}"
        if props.get("priority") is not None and not _is_int(props["priority"]):
            return f"property 'priority' must be an integer, not {_short(props['priority'])}"
    if problem is None and name in registered:
        problem = _body_problem(message)
    return problem


# --- rejecting ----------------------------------------------------------------------------


def _maxlen() -> int:
    try:
        return get_settings().aiecs_deadletter_maxlen
    except Exception:  # noqa: BLE001 - settings are checked at start; never fail here
        return 1000


def _call_of(payload: Any) -> tuple[list, dict] | None:
    """The args and kwargs of an aiecs task in an envelope, if they can be read at all."""
    try:
        if payload["headers"]["task"] not in AIECS_TASKS:
            return None
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        args, kwargs, *_ = json.loads(body)
    except Exception:  # noqa: BLE001 - nothing routable in it
        return None
    if isinstance(args, list) and isinstance(kwargs, dict):
        return args, kwargs
    return None


def _fail_execution(payload: Any, reason: str) -> str:
    """End the message's execution FAILED if it has not started; a note for the log.

    Not when its state says another message (another Celery id) queued it: a malformed
    copy must not end an execution whose own message is fine.
    """
    call = _call_of(payload)
    if call is None:
        return ""
    try:
        args, kwargs = call
        request = routable_call(args, kwargs)
        if request is None:
            return ""
        client = state_redis()
        state_key = TaskKeys(request.user_id, request.task_id).state(request.step)
        status, owner = client.hmget(state_key, "status", "celery_id")
        if status not in (None, b"pending"):
            return f"; execution {request.key} is {status.decode()}, left as it is"
        celery_id = payload["headers"].get("id")
        if owner and isinstance(celery_id, str) and owner.decode() != celery_id:
            return f"; execution {request.key} was queued by another message, left as it is"
        seq = end_execution(client, request, TaskStatus.FAILED,
                            InvalidTaskError(f"malformed broker message: {reason}"),
                            state_key=state_key)
    except Exception as exc:  # noqa: BLE001 - reporting never breaks the consumer
        return f"; could not mark its execution FAILED ({type(exc).__name__}: {exc})"
    return f"; execution {request.key} marked FAILED" if seq else ""


def reject(raw: bytes | str, reason: str, *, queue: str, layer: str,
           redis: Callable[[], AbstractContextManager[Any]] | None,
           payload: Any = None) -> str:
    """Dead-letter one message, fail its execution if routable, log it once; its id.

    ``raw``: the message as it was in the queue; ``redis``: a context manager giving a
    client of the broker's Redis; ``payload``: the decoded envelope, when it decodes.
    """
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    digest = hashlib.sha256(data).hexdigest()[:16]
    text = data.decode("utf-8", "replace")
    entry = {
        "id": digest,
        "reason": reason,
        "time": time.time(),
        "hostname": _hostname,
        "queue": queue,
        "layer": layer,
        "size": len(data),
        "truncated": len(text) > RAW_LIMIT,
        "raw": text[:RAW_LIMIT],
    }
    if redis is None:
        where = "not dead-lettered: no Redis"
    else:
        try:
            with redis() as client:
                client.pipeline().lpush(DEADLETTER_KEY, json.dumps(entry)).ltrim(
                    DEADLETTER_KEY, 0, _maxlen() - 1).execute()
            where = f"dead-lettered to {DEADLETTER_KEY}"
        except Exception as exc:  # noqa: BLE001 - the log line is then the only record
            where = f"NOT dead-lettered ({type(exc).__name__}: {exc})"
    note = _fail_execution(payload, reason) if payload is not None else ""
    log.warning("rejected malformed message %s from queue %r (%s, %s): %s%s",
                digest, queue, layer, where, reason, note)
    return digest


# --- transport ------------------------------------------------------------------------


@functools.cache
def _transport_classes(sentinel: bool = False) -> tuple[type, type]:
    """(Channel, Transport): built on first use, as kombu's Redis transport imports
    redis-py, which a process that never connects to the broker need not load.
    ``sentinel``: the same over kombu's Sentinel transport (``sentinel://`` URLs)."""
    from kombu.transport import redis as kombu_redis  # on first use: see the docstring

    class Channel(kombu_redis.Channel):
        """kombu's Redis channel, which never hands kombu a malformed message.

        Replies of ``BRPOP`` (the worker's event loop) and ``RPOP`` (``basic_get``) are
        screened before kombu decodes them: a malformed item is dead-lettered and the reply
        becomes "nothing there". Fanout messages (``celery.pidbox``) are screened once kombu
        has decoded them (kombu itself drops those that are not JSON).
        """

        _getting: str = "?"  # the queue of the RPOP in progress (``_get``)

        def _create_client(self, asynchronous: bool = False):
            client = super()._create_client(asynchronous=asynchronous)
            parse = client.parse_response

            def parse_response(connection, command_name, **options):
                reply = parse(connection, command_name, **options)
                if reply and command_name == "BRPOP":
                    key, item = reply
                    queue = (key.decode() if isinstance(key, bytes) else str(key))
                    return reply if self._admit(queue.rsplit(self.sep, 1)[0], item) else None
                if reply and command_name == "RPOP" and isinstance(reply, (bytes, str)):
                    return reply if self._admit(self._getting, reply) else None
                return reply

            client.parse_response = parse_response
            return client

        def _get(self, queue):
            self._getting = queue
            try:
                return super()._get(queue)
            finally:
                self._getting = "?"

        def _deliver_fanout_message(self, message, exchange):
            problem = envelope_problem(message)
            if problem is None:
                return super()._deliver_fanout_message(message, exchange)
            try:
                reject(json.dumps(message), problem, queue=exchange, layer="transport",
                       redis=self.conn_or_acquire)
            except Exception:  # noqa: BLE001 - the guard itself must never stop the worker
                log.exception("could not dead-letter a fanout message; dropped it")
            return False

        def _admit(self, queue: str, item: bytes | str) -> bool:
            try:
                payload = None
                try:
                    payload = kombu_loads(item.decode() if isinstance(item, bytes) else item)
                except Exception as exc:  # noqa: BLE001 - not JSON (or too deep to decode)
                    reason = f"the envelope is not JSON: {type(exc).__name__}: {exc}"
                else:
                    reason = envelope_problem(payload)
                if reason is None:
                    return True
                reject(item, reason, queue=queue, layer="transport", redis=self.conn_or_acquire,
                       payload=payload)
            except Exception:  # noqa: BLE001 - the guard itself must never stop the worker
                log.exception("could not screen a message; dropped it")
            return False

    class Transport(kombu_redis.Transport):
        """kombu's Redis transport with the screening :class:`Channel`."""

    class SentinelChannel(Channel, kombu_redis.SentinelChannel):
        """The screening :class:`Channel` over kombu's Sentinel channel (its ``super()``
        calls reach kombu's Sentinel connection handling first)."""

    class SentinelTransport(kombu_redis.SentinelTransport):
        """kombu's Sentinel transport with the screening :class:`SentinelChannel`."""

    Transport.Channel = Channel
    SentinelTransport.Channel = SentinelChannel
    for cls in (Channel, Transport, SentinelChannel, SentinelTransport):
        cls.__qualname__ = cls.__name__
    return (SentinelChannel, SentinelTransport) if sentinel else (Channel, Transport)


def __getattr__(name: str) -> Any:
    if name in ("Channel", "Transport"):
        return _transport_classes()[name == "Transport"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Connection(KombuConnection):
    """A kombu connection that uses :class:`Transport` where kombu would use Redis's."""

    def get_transport_cls(self):
        cls = super().get_transport_cls()
        redis_transport = sys.modules.get("kombu.transport.redis")
        if redis_transport is not None and cls is redis_transport.Transport:
            return _transport_classes()[1]
        if redis_transport is not None and cls is redis_transport.SentinelTransport:
            return _transport_classes(sentinel=True)[1]
        return cls


class AMQP(CeleryAMQP):
    """Celery's messaging glue, with connections of :class:`Connection`."""

    Connection = Connection


# --- consumer -------------------------------------------------------------------------


def _envelope_of(message: Any) -> Any:
    """The message as kombu's Redis transport stores it: the popped envelope itself, or,
    for a message of another transport (RabbitMQ), the same shape built from its parts
    (body in base64, values JSON cannot hold as text)."""
    raw = getattr(message, "_raw", None)
    if raw is not None:
        return raw
    body = message.body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    props = {k: v for k, v in (message.properties or {}).items()
             if k != "application_headers"}
    info = {k: message.delivery_info.get(k) for k in ("exchange", "routing_key")} \
        if isinstance(message.delivery_info, dict) else {}
    envelope = {
        "body": base64.b64encode(body or b"").decode(),
        "content-type": message.content_type,
        "content-encoding": message.content_encoding,
        "headers": message.headers,
        "properties": {**props, "body_encoding": "base64", "delivery_info": info},
    }
    return json.loads(json.dumps(envelope, default=str))


def _raw_of(message: Any) -> bytes:
    try:
        return json.dumps(_envelope_of(message)).encode()
    except (TypeError, ValueError):
        body = message.body
        return body if isinstance(body, bytes) else repr(body).encode()


@contextlib.contextmanager
def _state_redis():
    """A client of the state Redis: the dead-letter list's home when the broker is not
    Redis (RabbitMQ)."""
    yield state_redis()


class Consumer(CeleryConsumer):
    """Celery's worker consumer; malformed task messages are dead-lettered, not fatal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        global _hostname
        super().__init__(*args, **kwargs)
        _hostname = self.hostname or _hostname

    def create_task_handler(self, *args: Any, **kwargs: Any):
        handle = super().create_task_handler(*args, **kwargs)
        tasks = self.app.tasks
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message):
            try:
                problem = task_problem(message, tasks)
            except Exception as exc:  # noqa: BLE001 - a check that fails is a reason too
                problem = f"the message could not be checked: {type(exc).__name__}: {exc}"
            if problem is not None:
                return self.reject_message(message, problem)
            try:
                return handle(message)
            except connection_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - the last line: never crash the loop
                if message.acknowledged:
                    log.exception("task message %s failed after it was acknowledged",
                                  message.headers.get("id"))
                    return None
                return self.reject_message(
                    message, f"Celery could not take it: {type(exc).__name__}: {exc}")

        return on_task_received

    def on_decode_error(self, message, exc):
        """A body kombu cannot decode (or decompress): dead-letter it (Celery: CRITICAL)."""
        self.reject_message(message, f"the body does not decode: {type(exc).__name__}: {exc}")

    def reject_message(self, message: Any, reason: str) -> None:
        """Dead-letter ``message`` with ``reason``, log it once, acknowledge it."""
        channel = message.channel
        redis = getattr(channel, "conn_or_acquire", None) or _state_redis
        info = message.delivery_info or {}
        try:
            payload = _envelope_of(message)
        except Exception:  # noqa: BLE001 - then nothing routable is in it
            payload = None
        reject(_raw_of(message), reason, queue=str(info.get("routing_key")), layer="consumer",
               redis=redis, payload=payload)
        if not message.acknowledged:
            message.ack()


def install(app: Any) -> None:
    """Put both guards in place for ``app`` (before its first connection)."""
    app.amqp_cls = f"{__name__}:AMQP"
    app.conf.worker_consumer = f"{__name__}:Consumer"
