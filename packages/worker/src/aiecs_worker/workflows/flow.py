"""Workflows: a directed acyclic graph of steps of one task_id.

Submission validates the whole graph (steps, dependencies, cycles, references, services,
operations, inputs) and then, in one Lua script, writes the workflow hash
``aiecs:flow:{user}:{task_id}`` and a PENDING record for every step, each marked with
its group (the workflow). A step waits (PENDING, no message) until it is *released*.

Each step's terminal transition bumps the workflow's ``ver`` and stamps it in
``aiecs:flows:due`` in the same script (:mod:`aiecs_worker.workflows.hook`). The process
that ran the step then calls :func:`advance`, which looks at every waiting step:

- a dependency FAILED, TIMED_OUT or CANCELLED: the step ends CANCELLED, naming it (and so,
  in the same pass, its own dependents);
- every dependency COMPLETED: its ``$ref`` inputs are resolved from their results, its
  input is size-checked again (``AIECS_MAX_PAYLOAD_BYTES``: references multiply sizes, so
  at most ``AIECS_MAX_REFS_PER_STEP`` of them per step, checked at submission) and it is
  released (one Lua script writes its arguments into its PENDING record, so the sweeper
  can queue it again should its message be lost) and its message is sent. A step that
  cannot be released ends FAILED with the reason: at once when the reason is its input
  (too large once resolved, a reference not in the result, ...), after
  :data:`MAX_RELEASE_FAILURES` failed releases otherwise (a Redis outage, during which
  nothing can be counted, is waited out);
- a cancel request on a waiting step ends it CANCELLED.

:func:`advance` is idempotent (the release and the terminal transitions are guarded
scripts), so two processes may run it at once. A process that dies after a step's
terminal record and before advancing leaves the workflow in ``aiecs:flows:due``: every
worker's sweeper advances workflows left there for more than 5 s
(:func:`sweep_due`); a new workflow starts there too, until its submitter's first advance
settles it. A process killed after a release and before its send leaves a
PENDING record with its arguments, which the sweeper queues again (see lease.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from aiecs_core import (
    ID_PATTERN,
    AiecsError,
    InvalidTaskError,
    PayloadTooLargeError,
    TaskCancelledError,
    TaskEvent,
    TaskRequest,
    TaskStatus,
)
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from .. import background
from ..events import TaskKeys, celery_task_id, encode_event, packet_parts
from ..records import end_execution, state_redis
from ..settings import get_settings
from ..state import NOW_MS_LUA, PENDING_KEY, celery_index_key, decode_state, steps_key
from ..store import admission
from ..store.keys import FLOW_PREFIX, FLOWS_DUE_KEY, flow_key
from ..store.requests import check_payload_size
from .common import GroupError, NotFoundError, admitted, send_execution, task_for
from .refs import RefError, find_refs, parse_ref, resolve, resolved_size

__all__ = ["FlowStep", "advance", "cancel_workflow", "flow_key", "get_workflow",
           "submit_workflow", "sweep_due"]

log = logging.getLogger("aiecs.workflows")

#: Most steps one workflow may have.
MAX_FLOW_STEPS = 200
#: Seconds a workflow stays in aiecs:flows:due before a sweeper advances it.
DUE_AFTER = 5.0
#: Failed releases of one step (Redis answered, the release did not go through) before
#: it ends FAILED.
MAX_RELEASE_FAILURES = 5
_TERMINAL = {"completed", "failed", "timed_out", "cancelled"}

# KEYS: workflow, steps, seq, log, due.  ARGV: spec json, ttl, now, user, task, channel,
# maxlen, packet head, packet tail, n steps, then per step: state key, celery id, task
# name, step, celery index key, PENDING event json (no seq).  Creates the workflow and
# every step's PENDING record with its event, unless the task exists (returns 0). The
# workflow starts in the due set: should the submitter fail before its first advance
# settles it, a sweeper releases its first steps.
CREATE_FLOW_LUA = NOW_MS_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'kind', 'flow', 'user', ARGV[4], 'task', ARGV[5], 'spec',
           ARGV[1], 'ver', 0, 'created', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 0, tonumber(ARGV[10]) - 1 do
  local b = 11 + i * 6
  local sk = ARGV[b]
  redis.call('HSET', sk, 'status', 'pending', 'celery_id', ARGV[b + 1], 'user_id', ARGV[4],
             'task_name', ARGV[b + 2], 'step', ARGV[b + 3], 'submitted', ARGV[3],
             'updated', ARGV[3], 'group', KEYS[1])
  redis.call('EXPIRE', sk, ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[b + 3])
  redis.call('SET', ARGV[b + 4], sk, 'EX', ARGV[2])
  local seq = redis.call('INCR', KEYS[3])
  local ev = '{"seq":' .. seq .. ',' .. string.sub(ARGV[b + 5], 2)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'e', ev)
  redis.call('PUBLISH', ARGV[6], ARGV[8] .. ev .. ARGV[9])
end
for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
redis.call('ZADD', KEYS[5], now_ms, KEYS[1])
return 1
"""

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


class FlowStep(BaseModel):
    """One step of a workflow: an execution's arguments, and the steps it waits for."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    step: int = Field(ge=1, le=2**31)
    mode: str
    service: str
    task_name: str = Field(validation_alias=AliasChoices("task_name", "operation"))
    input_data: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[int] = Field(default_factory=list)
    heavy: bool | None = None


# -- validation --------------------------------------------------------------------------------
def _order(steps: dict[int, FlowStep]) -> list[int]:
    """A topological order, or GroupError naming the steps of a cycle."""
    left = {n: len(set(s.depends_on)) for n, s in steps.items()}
    children: dict[int, list[int]] = {n: [] for n in steps}
    for n, s in steps.items():
        for d in set(s.depends_on):
            children[d].append(n)
    ready = sorted(n for n, k in left.items() if k == 0)
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for c in sorted(children[n]):
            left[c] -= 1
            if left[c] == 0:
                ready.append(c)
    if len(order) < len(steps):
        stuck = sorted(set(steps) - set(order))
        raise GroupError(f"steps {', '.join(map(str, stuck))} form a dependency cycle "
                         "(a workflow must be acyclic)", steps=stuck)
    return order


def _ancestors(steps: dict[int, FlowStep], order: list[int]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for n in order:
        acc: set[int] = set()
        for d in steps[n].depends_on:
            acc |= {d} | out[d]
        out[n] = acc
    return out


def _check_step(user_id: str, task_id: str, s: FlowStep, ancestors: set[int]) -> TaskRequest:
    """The step's request (references unresolved), or GroupError naming the step."""
    where = f"step {s.step}"
    ref_locs = []
    refs = [(field, loc, ref) for field in ("input_data", "context")
            for loc, ref in find_refs(getattr(s, field))]
    max_refs = get_settings().aiecs_max_refs_per_step
    if len(refs) > max_refs:  # each is replaced by a whole result: they multiply sizes
        raise GroupError(f"{where}: input_data + context hold more than {max_refs} $ref "
                         "references (AIECS_MAX_REFS_PER_STEP)", step=s.step)
    for field, loc, ref in refs:
        try:
            ref_step, _ = parse_ref(ref)
        except RefError as exc:
            raise GroupError(f"{where}: {field}.{'.'.join(map(str, loc))}: {exc}",
                             step=s.step) from None
        if ref_step not in ancestors:
            raise GroupError(
                f"{where}: {field}.{'.'.join(map(str, loc))}: {ref} refers to step "
                f"{ref_step}, which is not among the steps it depends on", step=s.step)
        if field == "input_data":
            ref_locs.append(loc)
    try:
        request = TaskRequest(task_name=s.task_name, user_id=user_id, task_id=task_id,
                              step=s.step, mode=s.mode, service=s.service,
                              input_data=s.input_data, context=s.context)
        spec = admission.check(s, validate=False)  # the input: below, references aside
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        raise GroupError(f"{where}: {problems}", step=s.step) from None
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise GroupError(f"{where}: {type(exc).__name__}: {message}", step=s.step) from None
    try:
        data = spec.input_model.model_validate(s.input_data)
    except ValidationError as exc:
        # a reference's value is known only when its step completed: checked then
        problems = [e for e in exc.errors(include_url=False, include_input=False)
                    if not any(tuple(e["loc"][:len(loc)]) == loc for loc in ref_locs)]
        if problems:
            text = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}"
                             for e in problems)
            raise GroupError(f"{where}: input_data does not match {spec.name}'s input "
                             f"({spec.input_model.__name__}): {text}", step=s.step) from None
    else:  # the service's own checks and the operator's model policy (with references:
        # at release, where the worker validates the resolved input before any call)
        if spec.service is not None:
            try:
                spec.service.check_input(spec.name, data)
            except AiecsError as exc:
                raise GroupError(f"{where}: {type(exc).__name__}: {exc.message}",
                                 step=s.step) from None
    return request


def validate_workflow(user_id: str, task_id: str, raw_steps: list[Any]
                      ) -> tuple[dict[int, FlowStep], list[int], dict[int, TaskRequest]]:
    import re

    if not re.fullmatch(ID_PATTERN, task_id):
        raise GroupError(f"invalid task_id (must match {ID_PATTERN})")
    if not raw_steps:
        raise GroupError("a workflow needs at least one step")
    if len(raw_steps) > MAX_FLOW_STEPS:
        raise GroupError(f"{len(raw_steps)} steps: a workflow has at most {MAX_FLOW_STEPS}")
    steps: dict[int, FlowStep] = {}
    for i, raw in enumerate(raw_steps):
        try:
            s = raw if isinstance(raw, FlowStep) else FlowStep.model_validate(raw)
        except ValidationError as exc:
            name = raw.get("step", f"#{i}") if isinstance(raw, dict) else f"#{i}"
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False))
            raise GroupError(f"step {name}: {problems}", step=name) from None
        if s.step in steps:
            raise GroupError(f"step {s.step}: appears twice", step=s.step)
        steps[s.step] = s
    for s in steps.values():
        for d in s.depends_on:
            if d == s.step:
                raise GroupError(f"step {s.step}: depends on itself", step=s.step)
            if d not in steps:
                raise GroupError(f"step {s.step}: depends on step {d}, which is not in the "
                                 "workflow", step=s.step)
    order = _order(steps)
    ancestors = _ancestors(steps, order)
    requests = {n: _check_step(user_id, task_id, steps[n], ancestors[n]) for n in order}
    return steps, order, requests


# -- submission -------------------------------------------------------------------------------
def submit_workflow(user_id: str, steps: list[Any], *, task_id: str | None = None
                    ) -> dict[str, Any]:
    """Validate and start a workflow; returns ``{"task_id", "steps": [step, ...]}``.

    Raises :class:`GroupError` (naming the step) before anything is recorded when the
    graph, a reference, a service, an operation or an input is wrong, or the task_id
    already has steps; :class:`~aiecs_core.QuotaExceededError` when a quota of the user
    refuses it (:mod:`..quotas`).
    """

    task_id = task_id or uuid.uuid4().hex
    parsed, order, requests = validate_workflow(user_id, task_id, steps)
    s = get_settings()
    spec: dict[str, Any] = {"order": order, "steps": {}}
    per_step: list[Any] = []
    for n in order:
        st, req = parsed[n], requests[n]
        task, queue, priority = task_for(req, st.heavy, flow=True)
        spec["steps"][str(n)] = {
            "deps": sorted(set(st.depends_on)), "mode": st.mode, "service": st.service,
            "task_name": st.task_name, "input_data": st.input_data, "context": st.context,
            "task": task, "queue": queue, "priority": priority}
        deps = sorted(set(st.depends_on))
        message = (f"waiting for step{'s' if len(deps) > 1 else ''} "
                   f"{', '.join(map(str, deps))}" if deps else "queued")
        event = TaskEvent(type="status", task_id=task_id, step=n, user_id=user_id,
                          task_name=st.task_name, status=TaskStatus.PENDING, message=message)
        celery_id = celery_task_id(user_id, task_id, n)
        per_step += [TaskKeys(user_id, task_id).state(n), celery_id, st.task_name, n,
                     celery_index_key(celery_id), encode_event(event)]
    keys = TaskKeys(user_id, task_id)
    head, tail = packet_parts(user_id)
    client = state_redis()
    key = flow_key(user_id, task_id)
    admission.admit(user_id, [keys.state(n) for n in order], client=client)
    created = client.eval(
        CREATE_FLOW_LUA, 5, key, steps_key(user_id, task_id), keys.seq, keys.log,
        FLOWS_DUE_KEY,
        json.dumps(spec), s.aiecs_events_ttl, time.time(), user_id, task_id,
        s.aiecs_socketio_channel, s.aiecs_events_maxlen, head, tail, len(order), *per_step)
    if not created:
        raise GroupError(f"task {task_id!r} already exists: a workflow needs a new task_id",
                         status=409)
    advance(client, key)
    return {"task_id": task_id, "steps": order}


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
                       input_data=input_data, context=context)


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
        kwargs = _request(user_id, task_id, n, step, results).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001 - its input: the same on every try
        log.info("workflow %s of %s: step %d cannot be released: %s", task_id, user_id, n,
                 exc)
        _end_step(client, user_id, task_id, n, step["task_name"], TaskStatus.FAILED,
                  _cannot_release(exc, n))
        return "failed"
    try:
        released = client.eval(RELEASE_LUA, 2, keys.state(n), PENDING_KEY,
                               json.dumps(kwargs), step["queue"], step["task"])
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
        from ..app import app

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
            client.zrem(FLOWS_DUE_KEY, key)
            break
        if done:
            client.hsetnx(key, "finished", time.time())
        if acted:
            continue  # its own transitions bumped ver: look again
        # settled: leave the due set, unless a step ended meanwhile (its process advances)
        client.eval(SETTLED_LUA, 2, FLOWS_DUE_KEY, key, ver)
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
    if group and group.startswith(FLOW_PREFIX.encode()):
        advance(client, group.decode())


def sweep_due() -> int:
    """Advance workflows whose steps ended over DUE_AFTER seconds ago without an advance
    (the process that ran the step died first); how many steps that released or ended."""
    client = state_redis()
    secs, micros = client.time()
    now_ms = secs * 1000 + micros // 1000
    keys = client.zrangebyscore(FLOWS_DUE_KEY, "-inf", now_ms - DUE_AFTER * 1000,
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


# -- reading and cancelling ------------------------------------------------------------------
def get_workflow(user_id: str, task_id: str) -> dict[str, Any] | None:
    """The workflow's steps (by number) with their dependencies, states and results; None
    if unknown.

    ``status`` is ``running`` until every step ended, then ``completed`` only when all
    completed, else ``failed`` (the steps that did not complete say why)."""
    client = state_redis()
    raw = client.hget(flow_key(user_id, task_id), "spec")
    if raw is None:
        return None
    spec = json.loads(raw)
    keys = TaskKeys(user_id, task_id)
    numbers = sorted(spec["order"])
    pipe = client.pipeline(transaction=False)
    for n in numbers:
        pipe.hgetall(keys.state(n))
    steps = []
    for n, state in zip(numbers, pipe.execute(), strict=True):
        state = decode_state(state) if state else {}
        step = spec["steps"][str(n)]
        result = state.get("result")
        if isinstance(result, dict) and "result" in result and "task_id" in result:
            result = result["result"]
        steps.append({"step": n, "depends_on": step["deps"], "mode": step["mode"],
                      "service": step["service"], "task_name": step["task_name"],
                      "status": state.get("status"), "result": result,
                      "error": state.get("error")})
    statuses = [s["status"] for s in steps]
    if not all(st in _TERMINAL for st in statuses):
        status = "running"
    elif all(st == "completed" for st in statuses):
        status = "completed"
    else:
        status = "failed"
    return {"task_id": task_id, "status": status, "steps": steps}


def cancel_workflow(user_id: str, task_id: str) -> list[int]:
    """Cancel every step not ended yet; the steps asked to cancel."""
    from .. import control

    view = get_workflow(user_id, task_id)
    if view is None:
        raise NotFoundError(task_id)
    return [s["step"] for s in view["steps"] if s["status"] not in _TERMINAL
            and control.cancel(user_id, task_id, s["step"])]
