"""What a submission and a revocation record: the producer side of an execution's state.

Imported by the tasks (``apply_async`` records PENDING, a revocation records CANCELLED)
and by :mod:`aiecs_worker.producer.control`; it imports neither, so the two do not import each
other. These functions use a synchronous Redis client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiecs_core import AiecsError, ErrorInfo, TaskCancelledError, TaskEvent, TaskRequest, TaskStatus

from ..ops import metrics
from ..settings import get_settings
from . import budgets
from .connection import sync_client
from .events import FINISH_PUBLISH_LUA, PENDING_PUBLISH_LUA, TaskKeys, finish_args, script_args
from .hold import ADMIT_LUA, ADMIT_PUSH_LUA, admit_args, held_ttl
from .keys import celery_index_key, pending_key, steps_key, user_prefix
from .requests import routable_call
from .scripts import load_together, pipelined

__all__ = ["end_cancelled", "end_execution", "pubsub_redis", "record_pending", "state_redis",
           "terminal_fields"]

log = logging.getLogger("aiecs.budgets")


@functools.lru_cache(maxsize=1)
def state_redis():
    """This process's synchronous client of the state Redis."""
    return sync_client(get_settings().state_redis_url, socket_timeout=5)


@functools.lru_cache(maxsize=1)
def pubsub_redis():
    """This process's synchronous client of the cancel broadcasts' Redis
    (AIECS_PUBSUB_URL, else the state Redis)."""
    return sync_client(get_settings().pubsub_redis_url, socket_timeout=5)


def record_pending(request: TaskRequest, celery_id: str, *, queue: str = "",
                   task: str = "", eta: float | None = None,
                   hold: budgets.Hold | None = None,
                   push: tuple[str, str] | None = None) -> str:
    """Record a queued execution as PENDING (and publish it) unless it already has a
    state, and admit it (see :mod:`aiecs_worker.store.hold`): ``"send"`` (send its message
    now), ``"held"`` (do not: a releaser sends it when it may run), or ``""`` when nothing
    was recorded (it already had a state, or Redis is unreachable: send it as before).

    Called for every submission (``.delay()``, ``apply_async``, :func:`submit`). Best
    effort: when Redis is unreachable the task is still queued. The record keeps the
    task's arguments, ``queue`` and Celery ``task`` name until it starts, so the sweeper
    can queue it again if the broker loses its message (see aiecs_worker.store.lease).

    ``eta`` (a timestamp) marks an execution that must not run before then (``eta`` /
    ``countdown``): its state keeps it, its PENDING event says it, the sweeper counts
    its wait from then, not from the submission, and its state and log are kept until
    then plus AIECS_EVENTS_TTL.

    ``hold``: the execution's budget reservation, made by the same script before its
    record (:data:`aiecs_worker.store.budgets.RESERVE_PENDING_PUBLISH_LUA`): refused, it
    raises BudgetExceededError and nothing is recorded; made, ``hold.reserved`` says what
    to warn about. An execution that already has a state reserves nothing.

    ``push``: ``(broker list, message)``, the execution's Celery message as kombu's Redis
    transport would push it (:mod:`aiecs_worker.runner.send`; the broker is this Redis):
    the admission pushes it when it decides ``"send"`` and returns ``"pushed"`` instead
    (also for an execution that already had a state, which is sent again as before), in
    the same round trip; a held execution, a refused budget push nothing. Not with
    ``eta``.
    """
    s = get_settings()
    keys = TaskKeys(request.user_id, request.task_id)
    state_key = keys.state(request.step)
    ttl = held_ttl(s, eta)
    event = TaskEvent(type="status", task_id=request.task_id, step=request.step,
                      user_id=request.user_id, task_name=request.task_name,
                      status=TaskStatus.PENDING, template=request.template,
                      message="queued" if eta is None else f"scheduled for {_iso(eta)}")
    ev_keys, ev_args = script_args(event, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                                   ttl)
    client = state_redis()
    a_keys, a_args = admit_args(s, state_key, request.user_id, queue, eta)
    shard = user_prefix(request.user_id)
    pending_keys = [state_key, steps_key(request.user_id, request.task_id),
                    celery_index_key(celery_id, shard), pending_key(shard), *ev_keys]
    pending_args = [celery_id, ttl, time.time(), request.user_id, request.task_name,
                    request.step, request.model_dump_json(), queue, task, *ev_args]
    reservation = hold.script() if hold is not None else None
    if reservation is None:
        calls = [(PENDING_PUBLISH_LUA, len(pending_keys), *pending_keys, *pending_args)]
    else:
        calls = [(budgets.RESERVE_PENDING_PUBLISH_LUA, len(pending_keys) + len(reservation[0]),
                  *pending_keys, *reservation[0], *pending_args, *reservation[1])]
    if eta is not None:
        calls.append((_ETA_LUA, 2, state_key, pending_key(shard), eta, int(eta * 1000)))
    if push is None or eta is not None:
        calls.append((ADMIT_LUA, len(a_keys), *a_keys, *a_args))
    else:
        calls.append((ADMIT_PUSH_LUA, len(a_keys) + 1, *a_keys, push[0], *a_args, push[1]))
    try:
        # the reservation, the PENDING record, its event, its admission (and, with ``push``,
        # its broker message): one round trip (a refused reservation records nothing: the
        # later scripts find no pending state)
        out = pipelined(client, calls)
    except Exception as exc:  # noqa: BLE001
        if reservation is not None:
            log.warning("budget of %s not checked (Redis unreachable): %s", request.user_id,
                        exc)
        return ""
    seq, decision = out[0], out[-1]
    if reservation is not None and isinstance(seq, list):
        assert hold is not None
        reply: list[Any] = seq
        seq, outcome = int(reply[0]), reply[1:]
        hold.settle(client, outcome)  # raises BudgetExceededError when refused (seq -1)
    if not seq:
        return "pushed" if decision in (b"pushed", "pushed") else ""
    # not counted here: a worker counts it when it begins it, or whoever ends it first
    # (see aiecs_worker.ops.metrics), so what a script submits is counted too
    return decision.decode() if isinstance(decision, bytes) else str(decision)


# KEYS: state, pending.  ARGV: eta (s), eta (ms).  Stamps a just-recorded execution's eta.
_ETA_LUA = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' or redis.call('HEXISTS', KEYS[1], 'eta') == 1
then return 0 end
redis.call('HSET', KEYS[1], 'eta', ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], KEYS[1])
return 1
"""

# a submission's pipeline must never find one of its scripts known to Redis and another not
# (re-sending only the refused one would reorder them: see scripts.load_together)
load_together(PENDING_PUBLISH_LUA, budgets.RESERVE_PENDING_PUBLISH_LUA, _ETA_LUA, ADMIT_LUA,
              ADMIT_PUSH_LUA)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def terminal_fields(status: TaskStatus, ttl: int, *, result: dict[str, Any] | None = None,
                    error: ErrorInfo | None = None, usage: list[Any] | None = None,
                    meta: dict[str, Any] | None = None, worker: bool = False) -> list[Any]:
    """The terminal record of an execution: the ARGV of the terminal transition
    (:func:`aiecs_worker.store.state.finish_lua`: status, result, error, usage, now, ttl,
    meta, outbox, and whether the script publishes Celery's result from the record:
    :func:`aiecs_worker.store.events.finish_args` makes it the Celery result meta).

    ``worker``: ``ttl`` is a worker's own AIECS_EVENTS_TTL, the workers' retention as
    is (the script does not read it from Redis; see aiecs_worker.store.state).
    ``meta``: what the history row needs that the state does not hold (the worker's
    ``first_output_at``, ``worker``, ``plugin``, ``plugin_version``, ``price_version``);
    the execution's shard's outbox gets it unless AIECS_HISTORY is off.

    Every terminal record is built here: the worker's outcome, a revocation, a malformed
    message, a workflow step that cannot run."""
    s = get_settings()
    return [status.value,
            json.dumps(result) if result is not None else "",
            error.model_dump_json() if error is not None else "",
            json.dumps(usage if usage is not None else []),
            time.time(), f"={ttl}" if worker else ttl,
            json.dumps(meta, separators=(",", ":")) if meta else "",
            "1" if s.aiecs_history else "",
            "1" if s.one_result_record else ""]


def end_execution(client: Any, request: TaskRequest | tuple[str, str, int, str],
                  status: TaskStatus, error: AiecsError, *, message: str | None = None,
                  state_key: str | None = None) -> int:
    """End an execution that did not run (``status`` with ``error``) and publish its
    terminal event, atomically; the event's seq, or 0 when it was already terminal.

    ``request``: the execution's request, or its ``(user_id, task_id, step, task_name)``.
    """
    user_id, task_id, step, task_name = (
        (request.user_id, request.task_id, request.step, request.task_name)
        if isinstance(request, TaskRequest) else request)
    s = get_settings()
    info = error.to_info()
    event = TaskEvent(type="status", task_id=task_id, step=step, user_id=user_id,
                      task_name=task_name, status=status,
                      message=info.message if message is None else message, error=info,
                      template=request.template if isinstance(request, TaskRequest) else None)
    state_key = state_key or TaskKeys(user_id, task_id).state(step)
    keys, args = finish_args(*script_args(event, s.aiecs_socketio_channel,
                                          s.aiecs_events_maxlen, s.aiecs_events_ttl),
                             state_key, terminal_fields(status, s.aiecs_events_ttl, error=info))
    # what the record was, read in the same transaction as the transition (for the metrics)
    prior, seq = pipelined(client, [
        (None, "HMGET", state_key, "status", "deliveries", "queue", "request"),
        (FINISH_PUBLISH_LUA, len(keys), *keys, *args)], transaction=True)
    seq = int(seq)
    if seq:
        _count_end(prior, request, status)
    return seq


def _count_end(prior: list[Any], request: TaskRequest | tuple, status: TaskStatus) -> None:
    """An execution ended here: its terminal status counted, and its PENDING record when
    no worker had begun it (a worker counts it when it does)."""
    if not metrics.loaded():
        return
    prior_status, deliveries, queue, raw = (
        v.decode() if isinstance(v, bytes) else v for v in prior)
    mode = service = ""
    if isinstance(request, TaskRequest):
        mode, service, operation = request.mode, request.service, request.task_name
    else:
        operation = request[3]
        if raw:
            with contextlib.suppress(ValueError, AttributeError):
                stored = json.loads(raw)
                mode, service = stored.get("mode", ""), stored.get("service", "")
    labels = (queue or "", mode, service, operation)
    if prior_status == TaskStatus.PENDING.value and not int(deliveries or 0):
        metrics.pending(*labels)
    metrics.finished(*labels, status.value, None)


def end_cancelled(args: tuple, kwargs: dict[str, Any], reason: str) -> str:
    """Mark a revoked-before-running execution CANCELLED and publish its terminal event;
    its state key, or "" when it had ended already (or its arguments name no execution).
    :func:`aiecs_worker.producer.release.record_cancelled` also frees its fair-share slot."""
    request = routable_call(args, kwargs)
    if request is None:
        return ""
    state_key = TaskKeys(request.user_id, request.task_id).state(request.step)
    seq = end_execution(state_redis(), request, TaskStatus.CANCELLED,
                        TaskCancelledError(reason), message=reason, state_key=state_key)
    return state_key if seq > 0 else ""
