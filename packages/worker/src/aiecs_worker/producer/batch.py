"""Batches: many ordinary executions submitted in one call, counted as one group.

Each item is an execution of its own (task_id ``{batch_id}.{index}``, step 1) with its
events and result. The batch hash ``aiecs:batch:{user}:{batch_id}`` holds the counters,
bumped by each item's terminal transition in the same Lua script (see
:mod:`aiecs_worker.store.hook`), which also publishes the batch's progress events on
the batch's own log (task id ``batch_id``, step 0): replayable like a task's, in the
owner's room. The item list is ``aiecs:batch:{user}:{batch_id}:items``.

Submission is pipelined: the batch hash, then every item's PENDING record and admission
(two Lua calls each, sent 500 per round trip), then the Celery messages of the items
admitted now through one producer; the others are held behind the user's fair-share
window (see :mod:`aiecs_worker.store.hold`). A process
killed half-way leaves PENDING records whose message was never sent: the sweeper queues
them from the record (as for any submission whose message was lost, see lease.py).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from aiecs_core import (
    AiecsError,
    TaskCancelledError,
    TaskEvent,
    TaskRequest,
    TaskStatus,
    TemplateRef,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..app import app
from ..history.templates import Resolver
from ..ops import metrics
from ..settings import get_settings
from ..store import admission
from ..store.events import TaskKeys, _publish_lua, celery_task_id, script_args
from ..store.hold import ADMIT_LUA, admit_args
from ..store.hook import publish_group_event_lua
from ..store.keys import (
    CANCEL_CHANNEL,
    batch_key,
    celery_index_key,
    pending_key,
    steps_key,
    user_prefix,
)
from ..store.records import pubsub_redis, state_redis
from ..store.scripts import pipelined
from ..store.state import CANCEL_LUA, decode_state, pending_lua
from .groups import (
    GroupError,
    NotFoundError,
    check_item,
    group_fields,
    pipelined_sends,
    send_execution,
    task_for,
)
from .release import record_cancelled

__all__ = ["BatchItem", "batch_key", "cancel_batch", "get_batch", "submit_batch"]

_CHUNK = 500
_BATCH_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"

# KEYS: state, steps, celery index, pending, seq, log.  ARGV: PENDING's nine, the batch
# key, then PUBLISH_LUA's six.  An item's PENDING record (with its group) and event.
ITEM_PENDING_LUA = pending_lua(
    "redis.call('HSET', KEYS[1], 'group', ARGV[10])\n"
    + _publish_lua("KEYS[5]", "KEYS[6]", 11) + "return seq\n")

# KEYS: batch, items, the batch log's seq and log (the hash's ``seq`` and ``log``).  ARGV:
# the event body, ttl, then the batch hash's fields.  Creates the batch unless it exists
# (returns 0) and publishes its first event.
CREATE_BATCH_LUA = f"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local g = KEYS[1]
local body = ARGV[1]
{publish_group_event_lua("KEYS[3]", "KEYS[4]")}
return 1
"""


class BatchItem(BaseModel):
    """One item: an execution's arguments without user, task id and step."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    service: str
    task_name: str
    input_data: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    heavy: bool | None = None
    template: TemplateRef | None = None
    """The template version ``input_data`` was rendered from: set by the resolution of
    ``template`` + ``variables`` (:mod:`aiecs_worker.history.templates`), never given."""


def item_task_id(batch_id: str, index: int) -> str:
    return f"{batch_id}.{index}"


def _validate(user_id: str, batch_id: str, items: list[Any]) -> list[tuple[TaskRequest, Any]]:
    if not re.fullmatch(_BATCH_ID, batch_id):
        raise GroupError(f"invalid batch_id (must match {_BATCH_ID})")
    if not items:
        raise GroupError("a batch needs at least one item")
    limit = get_settings().aiecs_max_batch_items
    if len(items) > limit:
        metrics.quota_refused("AIECS_MAX_BATCH_ITEMS")
        raise GroupError(f"{len(items)} items: a batch holds at most {limit} (limit set by "
                         "AIECS_MAX_BATCH_ITEMS)", status=413, limit=limit)
    out = []
    resolver = Resolver()  # every item naming a template by label runs the same version
    for i, raw in enumerate(items):
        where = f"item {i}"
        try:
            if isinstance(raw, dict):
                raw = resolver.expand(raw)
        except AiecsError as exc:
            raise GroupError(f"{where}: {type(exc).__name__}: {exc.message}",
                             where=where) from None
        try:
            item = raw if isinstance(raw, BatchItem) else BatchItem.model_validate(raw)
            request = TaskRequest(task_name=item.task_name, user_id=user_id,
                                  task_id=item_task_id(batch_id, i), step=1, mode=item.mode,
                                  service=item.service, input_data=item.input_data,
                                  context=item.context, template=item.template)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False))
            raise GroupError(f"{where}: {problems}", where=where) from None
        check_item(request, where)
        out.append((request, item))
    return out


def _event_body(head: str, status: str, message: str, counts: dict[str, int]) -> str:
    return (head + f',"type":"status","status":"{status}","progress":0.0,"message":'
            + json.dumps(message) + ',"result":' + json.dumps(counts, separators=(",", ":"))
            + f',"timestamp":{time.time()}}}')


def submit_batch(user_id: str, items: list[Any], *, batch_id: str | None = None,
                 heavy: bool | None = None) -> dict[str, Any]:
    """Queue every item as its own execution, as one batch; returns ``{"batch_id",
    "total", "items": [{"task_id", "step"}, ...]}``.

    Every item is validated first (operation known, input valid): one bad item refuses
    the whole batch with a :class:`GroupError` naming it, before anything is queued; so
    does a quota of the user (:class:`~aiecs_core.QuotaExceededError`, :mod:`..quotas`) and
    a budget (:class:`~aiecs_core.BudgetExceededError`: every item's reservation must fit).
    """
    batch_id = batch_id or f"batch-{uuid.uuid4().hex[:16]}"
    checked = _validate(user_id, batch_id, items)
    client = state_redis()
    key = batch_key(user_id, batch_id)
    total = len(checked)
    # the items' state keys, TaskKeys(user_id, item_task_id(batch_id, i)).state(1)
    first = TaskKeys(user_id, item_task_id(batch_id, 0)).state(1)
    prefix, suffix = first.split(f"{batch_id}.0:", 1)
    held = admission.reserve(user_id, [
        (TaskKeys(user_id, r.task_id).state(1), admission.operation(r), r.input_data)
        for r, _ in checked], client=client)
    try:
        admission.admit(user_id, batch=key,
                        numbered=(f"{prefix}{batch_id}.", total, f":{suffix}"), client=client)
        created = _create(client, key, user_id, batch_id, total)
    except BaseException:
        admission.unreserve(client, held)
        raise
    if not created:
        admission.unreserve(client, held)
        raise GroupError(f"batch {batch_id!r} already exists", status=409)
    with app.producer_or_acquire() as producer:
        for start in range(0, total, _CHUNK):
            chunk = checked[start:start + _CHUNK]
            sends = _record_chunk(client, key, batch_id, chunk, heavy)
            # this chunk's messages now (one round trip): workers start while the next
            # records are written
            with pipelined_sends(producer):
                for args in sends:
                    send_execution(producer, *args)
    admission.warn(client, held, user_id, batch_id, 0, "batch")
    return {"batch_id": batch_id, "total": total,
            "items": [{"task_id": r.task_id, "step": 1} for r, _ in checked]}


def _create(client: Any, key: str, user_id: str, batch_id: str, total: int) -> bool:
    """Create the batch hash and publish its first event; False when it exists."""
    s = get_settings()
    fields = group_fields("batch", user_id, batch_id)
    head = fields[fields.index("head") + 1]
    counts = {"total": total, "completed": 0, "failed": 0, "timed_out": 0, "cancelled": 0,
              "done": 0}
    body = _event_body(head, "pending", f"batch of {total} items queued", counts)
    fields += [k for kv in counts.items() for k in kv] + ["created", time.time(),
                                                          "status", "running"]
    return bool(client.eval(CREATE_BATCH_LUA, 4, key, f"{key}:items",
                            fields[fields.index("seq") + 1], fields[fields.index("log") + 1],
                            body, s.aiecs_events_ttl, *fields))


def _record_chunk(client: Any, key: str, batch_id: str,
                  chunk: list[tuple[TaskRequest, BatchItem]], heavy: bool | None) -> list:
    """The PENDING records of ``chunk`` in one round trip; the messages to send."""
    s = get_settings()
    calls: list[tuple] = [(None, "RPUSH", f"{key}:items", *[r.task_id for r, _ in chunk]),
                          (None, "EXPIRE", f"{key}:items", s.aiecs_events_ttl)]
    sends = []
    for request, item in chunk:
        user_id = request.user_id
        celery_id = celery_task_id(user_id, request.task_id, 1)
        task, queue, priority = task_for(request, item.heavy if item.heavy is not None
                                         else heavy)
        event = TaskEvent(type="status", task_id=request.task_id, step=1,
                          user_id=user_id, task_name=request.task_name,
                          status=TaskStatus.PENDING, message=f"queued (batch {batch_id})",
                          template=request.template)
        ev_keys, ev_args = script_args(event, s.aiecs_socketio_channel,
                                       s.aiecs_events_maxlen, s.aiecs_events_ttl)
        kwargs = request.model_dump(mode="json")
        calls.append((ITEM_PENDING_LUA, 6, TaskKeys(user_id, request.task_id).state(1),
                      steps_key(user_id, request.task_id),
                      celery_index_key(celery_id, user_prefix(user_id)),
                      pending_key(user_prefix(user_id)), *ev_keys, celery_id,
                      s.aiecs_events_ttl, time.time(),
                      user_id, request.task_name, 1, json.dumps(kwargs), queue, task, key,
                      *ev_args))
        # sent now, or held behind the user's fair-share window (see aiecs_worker.store.hold)
        a_keys, a_args = admit_args(s, TaskKeys(user_id, request.task_id).state(1), user_id,
                                    queue, None)
        calls.append((ADMIT_LUA, len(a_keys), *a_keys, *a_args))
        sends.append((task, queue, priority, kwargs, celery_id))
    decisions = pipelined(client, calls)[3::2]
    return [args for args, d in zip(sends, decisions, strict=True) if d != b"held"]


def _item_ids(client: Any, key: str) -> list[str]:
    return [x.decode() for x in client.lrange(f"{key}:items", 0, -1)]


def cancel_batch(user_id: str, batch_id: str) -> dict[str, Any]:
    """Cancel a batch: queued items never run, running ones are cancelled, finished ones
    keep their results. Returns ``{"batch_id", "cancelling": n}`` (items not yet ended);
    raises NotFoundError for an unknown batch."""
    s = get_settings()
    client = state_redis()
    key = batch_key(user_id, batch_id)
    if not client.exists(key):
        raise NotFoundError(batch_id)
    client.hset(key, "cancel_requested", time.time())
    ids = _item_ids(client, key)
    marked: list[str] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = pipelined(client, [(CANCEL_LUA, 1, TaskKeys(user_id, task_id).state(1),
                                    time.time(), s.aiecs_events_ttl) for task_id in chunk])
        now_marked = [celery_task_id(user_id, task_id, 1)
                      for task_id, ok in zip(chunk, marks, strict=True) if ok]
        pipe = pubsub_redis().pipeline(transaction=False)
        for celery_id in now_marked:  # running items stop now
            pipe.execute_command("PUBLISH", CANCEL_CHANNEL, celery_id)
        pipe.execute()
        marked += now_marked
        _end_held(client, user_id, [t for t, ok in zip(chunk, marks, strict=True) if ok])
    if marked:
        app.control.revoke(marked)
    return {"batch_id": batch_id, "cancelling": len(marked),
            "reason": TaskCancelledError("batch was cancelled").message}


def _end_held(client: Any, user_id: str, task_ids: list[str]) -> None:
    """Items held in Redis (behind the user's fair-share window, see aiecs_worker.store.hold)
    end CANCELLED now: no message of theirs exists to carry the cancel request."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hmget(TaskKeys(user_id, task_id).state(1), "status", "held", "request")
    for status, held, request in pipe.execute():
        if status == b"pending" and held and request:
            record_cancelled((), json.loads(request), "batch was cancelled")


def get_batch(user_id: str, batch_id: str, *, offset: int = 0, limit: int = 1000
              ) -> dict[str, Any] | None:
    """The batch's counts and status, every item that did not complete (with its error),
    and the states and results of items ``offset .. offset + limit``; None when unknown.

    ``status`` is ``running`` until every item ended, then ``completed`` only when all
    completed; otherwise ``failed`` (or ``cancelled`` when the batch was cancelled and
    nothing failed), with ``partial_failure`` true and the items listed in ``problems``.
    """
    client = state_redis()
    key = batch_key(user_id, batch_id)
    raw = client.hgetall(key)
    if not raw or b"kind" not in raw:
        return None
    h = {k.decode(): v.decode() for k, v in raw.items()}
    counts = {k: int(h.get(k, 0)) for k in ("total", "completed", "failed", "timed_out",
                                           "cancelled", "done")}
    ids = _item_ids(client, key)
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(TaskKeys(user_id, task_id).state(1), "status", "error")
    statuses = pipe.execute()
    problems = []
    for task_id, (st, err) in zip(ids, statuses, strict=True):
        st = st.decode() if st else None
        if st in ("failed", "timed_out", "cancelled"):
            error = json.loads(err) if err else None
            problems.append({"task_id": task_id, "step": 1, "status": st, "error": error})
    pipe = client.pipeline(transaction=False)
    page = ids[offset:offset + limit]
    for task_id in page:
        pipe.hgetall(TaskKeys(user_id, task_id).state(1))
    items = []
    for task_id, state in zip(page, pipe.execute(), strict=True):
        state = decode_state(state) if state else {}
        result = state.get("result")
        if isinstance(result, dict) and "result" in result and "task_id" in result:
            result = result["result"]
        items.append({"task_id": task_id, "step": 1, "status": state.get("status"),
                      "result": result, "error": state.get("error")})
    finished = counts["done"] >= counts["total"]
    status = h.get("status", "running") if finished else "running"
    return {
        "batch_id": batch_id, "status": status, "finished": finished,
        "partial_failure": finished and counts["completed"] < counts["total"],
        "cancel_requested": "cancel_requested" in h, "counts": counts,
        "problems": problems, "offset": offset, "items": items,
    }
