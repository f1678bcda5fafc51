"""Workflows: a directed acyclic graph of steps of one task_id.

Submission validates the whole graph (steps, dependencies, cycles, references, services,
operations, inputs) and then, in one Lua script, writes the workflow hash
``aiecs:flow:{user}:{task_id}`` and a PENDING record for every step, each marked with
its group (the workflow). A step waits (PENDING, no message) until it is *released*.

Each step's terminal transition bumps the workflow's ``ver`` and stamps it in
``aiecs:flows:due`` in the same script (:mod:`aiecs_worker.store.hook`). The process
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
import re
import time
import uuid
from typing import Any

from aiecs_core import (
    ID_PATTERN,
    AiecsError,
    TaskEvent,
    TaskRequest,
    TaskStatus,
    TemplateRef,
)
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from ..history.templates import Resolver
from ..settings import get_settings
from ..store import admission
from ..store.events import TaskKeys, celery_task_id, encode_event, packet_parts
from ..store.keys import celery_index_key, flow_key, flows_due_key, steps_key, user_prefix
from ..store.records import state_redis
from ..store.state import NOW_MS_LUA, decode_state
from . import control
from .advance import MAX_FLOW_STEPS, advance, sweep_due
from .groups import GroupError, NotFoundError, task_for
from .refs import RefError, find_refs, parse_ref

__all__ = ["FlowStep", "advance", "cancel_workflow", "flow_key", "get_workflow",
           "submit_workflow", "sweep_due"]

log = logging.getLogger("aiecs.workflows")

_TERMINAL = {"completed", "failed", "timed_out", "cancelled"}

# KEYS: workflow, steps, seq, log, due, then per step: state key, celery index key. ARGV: spec json,
# ttl, now, user, task, channel, maxlen, packet head, packet tail, n steps, then per step: celery
# id, task name, step, PENDING event json (no seq). Creates the workflow and every step's PENDING
# record with its event, unless the task exists (returns 0). The workflow's ``left`` counts its
# steps not ended (store/hook.py: the last one to end gives the workflow hash the workers' TTL;
# until then it has this process's). The workflow starts in the due set: should the submitter fail
# before its first advance settles it, a sweeper releases its first steps.
CREATE_FLOW_LUA = NOW_MS_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'kind', 'flow', 'user', ARGV[4], 'task', ARGV[5], 'spec',
           ARGV[1], 'ver', 0, 'created', ARGV[3], 'left', ARGV[10])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 0, tonumber(ARGV[10]) - 1 do
  local b = 11 + i * 4
  local sk = KEYS[6 + i * 2]
  redis.call('HSET', sk, 'status', 'pending', 'celery_id', ARGV[b], 'user_id', ARGV[4],
             'task_name', ARGV[b + 1], 'step', ARGV[b + 2], 'submitted', ARGV[3],
             'updated', ARGV[3], 'group', KEYS[1])
  redis.call('EXPIRE', sk, ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[b + 2])
  redis.call('SET', KEYS[7 + i * 2], sk, 'EX', ARGV[2])
  local seq = redis.call('INCR', KEYS[3])
  local ev = '{"seq":' .. seq .. ',' .. string.sub(ARGV[b + 3], 2)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'e', ev)
  redis.call('PUBLISH', ARGV[6], ARGV[8] .. ev .. ARGV[9])
end
for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
redis.call('ZADD', KEYS[5], now_ms, KEYS[1])
return 1
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
    template: TemplateRef | None = None
    """Set by the resolution of ``template`` + ``variables`` at submission (a variable
    may be a ``$ref`` filling a whole string), never given."""


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
                              input_data=s.input_data, context=s.context,
                              template=s.template)
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
    if not re.fullmatch(ID_PATTERN, task_id):
        raise GroupError(f"invalid task_id (must match {ID_PATTERN})")
    if not raw_steps:
        raise GroupError("a workflow needs at least one step")
    if len(raw_steps) > MAX_FLOW_STEPS:
        raise GroupError(f"{len(raw_steps)} steps: a workflow has at most {MAX_FLOW_STEPS}")
    steps: dict[int, FlowStep] = {}
    resolver = Resolver()  # each template looked up once: every step runs one version
    for i, raw in enumerate(raw_steps):
        if isinstance(raw, dict):
            try:
                raw = resolver.expand(raw, refs=True)
            except AiecsError as exc:
                name = raw.get("step", f"#{i}")
                raise GroupError(f"step {name}: {type(exc).__name__}: {exc.message}",
                                 step=name) from None
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
    refuses it (:mod:`..quotas`); :class:`~aiecs_core.BudgetExceededError` when its first
    steps (those without dependencies) do not fit the user's budget. A later step is
    reserved when it is released, and ends FAILED with BudgetExceededError if it does not
    fit then (its dependents are cancelled).
    """

    task_id = task_id or uuid.uuid4().hex
    parsed, order, requests = validate_workflow(user_id, task_id, steps)
    s = get_settings()
    spec: dict[str, Any] = {"order": order, "steps": {}}
    per_step: list[Any] = []
    step_keys: list[str] = []
    for n in order:
        st, req = parsed[n], requests[n]
        task, queue, priority = task_for(req, st.heavy, flow=True)
        spec["steps"][str(n)] = {
            "deps": sorted(set(st.depends_on)), "mode": st.mode, "service": st.service,
            "task_name": st.task_name, "input_data": st.input_data, "context": st.context,
            "task": task, "queue": queue, "priority": priority,
            "template": st.template.model_dump() if st.template else None}
        deps = sorted(set(st.depends_on))
        message = (f"waiting for step{'s' if len(deps) > 1 else ''} "
                   f"{', '.join(map(str, deps))}" if deps else "queued")
        event = TaskEvent(type="status", task_id=task_id, step=n, user_id=user_id,
                          task_name=st.task_name, status=TaskStatus.PENDING, message=message,
                          template=st.template)
        celery_id = celery_task_id(user_id, task_id, n)
        step_keys += [TaskKeys(user_id, task_id).state(n),
                      celery_index_key(celery_id, user_prefix(user_id))]
        per_step += [celery_id, st.task_name, n, encode_event(event)]
    keys = TaskKeys(user_id, task_id)
    head, tail = packet_parts(user_id)
    client = state_redis()
    key = flow_key(user_id, task_id)
    # the first steps' budget now (their input is known); the others' when released
    first = [n for n in order if not parsed[n].depends_on]
    held = admission.reserve(user_id, [
        (keys.state(n), admission.operation(requests[n]), requests[n].input_data)
        for n in first], client=client)
    try:
        admission.admit(user_id, [keys.state(n) for n in order], client=client)
        created = client.eval(
            CREATE_FLOW_LUA, 5 + len(step_keys), key, steps_key(user_id, task_id), keys.seq,
            keys.log, flows_due_key(user_prefix(user_id)), *step_keys,
            json.dumps(spec), s.aiecs_events_ttl, time.time(), user_id, task_id,
            s.aiecs_socketio_channel, s.aiecs_events_maxlen, head, tail, len(order),
            *per_step)
    except BaseException:
        admission.unreserve(client, held)
        raise
    if not created:
        admission.unreserve(client, held)
        raise GroupError(f"task {task_id!r} already exists: a workflow needs a new task_id",
                         status=409)
    admission.warn(client, held, user_id, task_id, first[0], requests[first[0]].task_name)
    advance(client, key)
    return {"task_id": task_id, "steps": order}


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
                      "error": state.get("error"),
                      **({"template": step["template"]} if step.get("template") else {})})
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
    view = get_workflow(user_id, task_id)
    if view is None:
        raise NotFoundError(task_id)
    return [s["step"] for s in view["steps"] if s["status"] not in _TERMINAL
            and control.cancel(user_id, task_id, s["step"])]
