"""Advancing workflows: after a step ended, release the steps whose dependencies
completed and end those whose dependency did not (see :mod:`aiecs_worker.producer.flow`
for the whole story).

:func:`advance` is idempotent (the release and the terminal transitions are guarded
scripts), so two processes may run it at once: the process that ran the step
(:func:`after_step`), a cancel (:func:`after_cancel`), and every worker's sweeper for
workflows left in ``aiecs:flows:due`` by a process that died (:func:`sweep_due`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiecs_core import (
    AiecsError,
    BudgetExceededError,
    InvalidTaskError,
    PayloadTooLargeError,
    TaskCancelledError,
    TaskRequest,
    TaskStatus,
)
from pydantic import ValidationError

from ..app import app
from ..ops import background
from ..settings import get_settings
from ..store import admission
from ..store.events import TaskKeys, celery_task_id
from ..store.keys import (
    SHARD_PREFIXES,
    flow_key,
    flows_due_key,
    is_flow_key,
    pending_key,
    prefix_of,
)
from ..store.records import end_execution, state_redis
from ..store.requests import check_payload_size
from ..store.state import NOW_MS_LUA
from .groups import admitted, send_execution
from .refs import RefError, find_refs, parse_ref, resolve, resolved_size

__all__ = ["DUE_AFTER", "MAX_RELEASE_FAILURES", "advance", "after_cancel", "after_step",
           "sweep_due"]

log = logging.getLogger("aiecs.workflows")

#: Most steps one workflow may have (and so most passes of one advance).
MAX_FLOW_STEPS = 200
#: Seconds a workflow stays in aiecs:flows:due before a sweeper advances it.
DUE_AFTER = 5.0
#: Failed releases of one step (Redis answered, the release did not go through) before
#: it ends FAILED.
MAX_RELEASE_FAILURES = 5
_TERMINAL = {"completed", "failed", "timed_out", "cancelled"}

# KEYS: state, pending.  ARGV: request json, queue, celery task name.  Releases a waiting
# step (its arguments, so the sweeper can re-send it) unless it was released, started,
# ended or asked to cancel meanwhile.  Returns 1 when released.
RELEASE_LUA = f"""
local f = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'released')
if f[1] ~= 'pending' or f[2] or f[3] then return 0 end
{NOW_MS_LUA}
redis.call('HSET', KEYS[1], 'request', ARGV[1], 'queue', ARGV[2], 'task', ARGV[3],
           'released', now_ms)
redis.call('ZADD', KEYS[2], now_ms, KEYS[1])
return 1
"""

# KEYS: due, workflow.  ARGV: ver.  The workflow leaves the due set unless a step ended
# since ``ver`` was read.
SETTLED_LUA = """
if redis.call('HGET', KEYS[2], 'ver') == ARGV[1] then
  return redis.call('ZREM', KEYS[1], KEYS[2])
end
return 0
"""



# -- advancing ---------------------------------------------------------------------------------
def _end_step(client: Any, user_id: str, task_id: str, n: int, task_name: str,
              status: TaskStatus, error: InvalidTaskError | TaskCancelledError) -> None:
    end_execution(client, (user_id, task_id, n, task_name), status, error)


def _request(user_id: str, task_id: str, n: int, step: dict[str, Any],
             results: dict[int, Any]) -> TaskRequest:
    """The step's request, its references resolved; InvalidTaskError (or whatever its
    input raises) when it cannot be released, whatever the number of tries."""
    limit = get_settings().aiecs_max_payload_bytes
    # measured before it is built: a 0.16 MB input may resolve to hundreds of MB
    size = sum(resolved_size(step[f], results) for f in ("input_data", "context"))
    if size > limit:
        raise PayloadTooLargeError(
            f"step {n}: input_data + context is {size} bytes once its references are "
            f"resolved, over the limit of {limit} (AIECS_MAX_PAYLOAD_BYTES)",
            step=n, size=size, limit=limit)
    input_data = resolve(step["input_data"], results)
    context = resolve(step["context"], results)
    check_payload_size({"input_data": input_data, "context": context}, limit)  # depth too
    return TaskRequest(task_name=step["task_name"], user_id=user_id, task_id=task_id,
                       step=n, mode=step["mode"], service=step["service"],
                       input_data=input_data, context=context,
                       template=step.get("template"))


def _cannot_release(exc: Exception, n: int) -> InvalidTaskError:
    if isinstance(exc, RefError):
        return InvalidTaskError(f"step {n}: {exc}", step=n)
    if isinstance(exc, InvalidTaskError):
        return exc if exc.message.startswith(f"step {n}:") else InvalidTaskError(
            f"step {n}: {exc.message}", step=n)
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        return InvalidTaskError(f"step {n}: its resolved input is invalid: {problems}", step=n)
    return InvalidTaskError(f"step {n} cannot be released: {type(exc).__name__}: {exc}",
                            step=n)


def _release(client: Any, user_id: str, task_id: str, n: int, step: dict[str, Any],
             sends: list) -> str:
    """Resolve the step's references and release it; the status it is left in.

    A step whose input cannot be released ends FAILED at once; a release that Redis
    refused is retried (by the next advance or the sweeper) and the step ends FAILED after
    MAX_RELEASE_FAILURES of them. Redis unreachable raises: nothing is counted then."""
    keys = TaskKeys(user_id, task_id)
    wanted = {parse_ref(ref)[0] for field in ("input_data", "context")
              for _, ref in find_refs(step[field])}
    results: dict[int, Any] = {}
    for d in sorted(wanted):
        raw = client.hget(keys.state(d), "result")
        outcome = json.loads(raw) if raw else None
        results[d] = outcome.get("result") if isinstance(outcome, dict) else None
    try:
        request = _request(user_id, task_id, n, step, results)
    except Exception as exc:  # noqa: BLE001 - its input: the same on every try
        log.info("workflow %s of %s: step %d cannot be released: %s", task_id, user_id, n,
                 exc)
        _end_step(client, user_id, task_id, n, step["task_name"], TaskStatus.FAILED,
                  _cannot_release(exc, n))
        return "failed"
    kwargs = request.model_dump(mode="json")
    try:  # the step's budget (the first steps reserved theirs at submission)
        held = admission.reserve(user_id, [(keys.state(n), admission.operation(request),
                                            request.input_data)], client=client)
    except BudgetExceededError as exc:
        log.info("workflow %s of %s: step %d refused by the budget: %s", task_id, user_id,
                 n, exc)
        end_execution(client, request, TaskStatus.FAILED, exc)
        return "failed"
    except AiecsError:
        held = None  # an operation this process lacks: the worker refuses it, at no cost
    try:
        released = client.eval(RELEASE_LUA, 2, keys.state(n), pending_key(prefix_of(keys.state(n))),
                               json.dumps(kwargs), step["queue"], step["task"])
        if held is not None:
            if released:
                admission.warn(client, held, user_id, task_id, n, step["task_name"])
            else:
                admission.unreserve(client, held)
    except Exception as exc:  # noqa: BLE001 - counted where Redis answers, else raised
        background.failed("workflow_release", f"releasing step {n} of {keys.state(n)}", exc)
        failures = client.hincrby(keys.state(n), "release_failures", 1)  # raises if away
        if failures < MAX_RELEASE_FAILURES:
            raise
        _end_step(client, user_id, task_id, n, step["task_name"], TaskStatus.FAILED,
                  InvalidTaskError(f"step {n} could not be released ({failures} tries): "
                                   f"{type(exc).__name__}: {exc}", step=n))
        return "failed"
    if released:
        sends.append((step["task"], step["queue"], step["priority"], kwargs,
                      celery_task_id(user_id, task_id, n)))
    return "pending"


def _advance_once(client: Any, key: str) -> tuple[int, bytes | None, bool]:
    """One pass: (how many steps it released or ended, the ver it read, all ended)."""
    ver, raw, user_id, task_id = client.hmget(key, "ver", "spec", "user", "task")
    if raw is None:
        return 0, None, True
    spec = json.loads(raw)
    user_id, task_id = user_id.decode(), task_id.decode()
    keys = TaskKeys(user_id, task_id)
    order = spec["order"]
    pipe = client.pipeline(transaction=False)
    for n in order:
        pipe.hmget(keys.state(n), "status", "cancel_requested", "released")
    status: dict[int, str | None] = {}
    waiting: dict[int, bool] = {}
    cancel: dict[int, bool] = {}
    for n, (st, c, rel) in zip(order, pipe.execute(), strict=True):
        status[n] = st.decode() if st else None
        waiting[n] = status[n] == "pending" and rel is None
        cancel[n] = c is not None
    acted = 0
    sends: list = []
    for n in order:
        if not waiting[n]:
            continue
        step = spec["steps"][str(n)]
        bad = next((d for d in step["deps"]
                    if status[d] in _TERMINAL and status[d] != "completed"), None)
        if cancel[n] or bad is not None:
            reason = ("cancelled before it started" if bad is None else
                      f"dependency step {bad} ended {status[bad].upper()}")
            _end_step(client, user_id, task_id, n, step["task_name"], TaskStatus.CANCELLED,
                      TaskCancelledError(reason, dependency=bad,
                                         dependency_status=status.get(bad)))
            status[n] = "cancelled"
            acted += 1
        elif all(status[d] == "completed" for d in step["deps"]):
            status[n] = _release(client, user_id, task_id, n, step, sends)
            acted += 1
    sends = admitted(client, sends)  # or held behind the user's fair-share window
    if sends:
        with app.producer_or_acquire() as producer:
            for args in sends:
                send_execution(producer, *args)
    return acted, ver, all(status[n] in _TERMINAL for n in order)


def advance(client: Any, key: str) -> int:
    """Release the steps of workflow ``key`` whose dependencies completed, end those whose
    dependency did not, until nothing changes; how many steps it released or ended."""
    total = 0
    for _ in range(MAX_FLOW_STEPS + 1):
        acted, ver, done = _advance_once(client, key)
        total += acted
        if ver is None:
            client.zrem(flows_due_key(prefix_of(key)), key)
            break
        if done:
            client.hsetnx(key, "finished", time.time())
        if acted:
            continue  # its own transitions bumped ver: look again
        # settled: leave the due set, unless a step ended meanwhile (its process advances)
        client.eval(SETTLED_LUA, 2, flows_due_key(prefix_of(key)), key, ver)
        break
    return total


def after_step(kwargs: dict[str, Any]) -> None:
    """Called by a workflow step's task once it ended (or was revoked): advance."""
    try:
        user_id, task_id = kwargs["user_id"], kwargs["task_id"]
        advance(state_redis(), flow_key(user_id, task_id))
    except Exception as exc:  # noqa: BLE001 - the sweeper advances it (aiecs:flows:due)
        background.failed("workflow_advance", f"advancing the workflow of task "
                          f"{kwargs.get('task_id')} (the sweeper will)", exc)


def after_cancel(client: Any, state_key: str) -> None:
    """A cancel request reached an execution: a waiting workflow step ends now."""
    group = client.hget(state_key, "group")
    if group and is_flow_key(group.decode()):
        advance(client, group.decode())


def sweep_due() -> int:
    """Advance workflows whose steps ended over DUE_AFTER seconds ago without an advance
    (the process that ran the step died first); how many steps that released or ended."""
    client = state_redis()
    secs, micros = client.time()
    now_ms = secs * 1000 + micros // 1000
    keys = []
    for shard in SHARD_PREFIXES:
        keys += client.zrangebyscore(flows_due_key(shard), "-inf", now_ms - DUE_AFTER * 1000,
                                     start=0, num=16)
    acted = 0
    for key in keys:
        key = key.decode()
        try:
            n = advance(client, key)
        except Exception as exc:  # noqa: BLE001 - the others still advance; retried later
            background.failed("workflow_sweep", f"advancing workflow {key}", exc)
            continue
        if n:
            log.warning("workflow %s advanced by the sweeper (%d steps)", key, n)
        acted += n
    return acted
