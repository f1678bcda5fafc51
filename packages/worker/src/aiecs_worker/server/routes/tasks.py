"""``POST /tasks``, ``GET /tasks/{task_id}``, ``DELETE /tasks/{task_id}``: one user's
executions (the owner is the token's user; another user's task is indistinguishable from
a missing one: 404)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiecs_core import TERMINAL_STATUSES, TaskRequest, load_plugins
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...history.templates import expand, is_templated
from ...producer import control
from ...routing import queue_name
from ...store.events import TaskKeys
from ...store.keys import steps_key
from ...store.records import state_redis
from ..bodies import MAX_DELAY, SubmitBody
from ..errors import (
    ApiError,
    Conflict,
    InvalidRequest,
    NotFound,
    Unauthorized,
    mapped_errors,
    run_checked,
)
from ..params import (
    ENVELOPE_BYTES,
    authenticate,
    identity,
    int_param,
    owned_body,
    task_id_param,
    validate,
)
from ..revocation import DEFERRED, REVOKED_HEADERS, queue_reads, reason_of

__all__ = ["MAX_VIEW_STEPS", "ROUTES", "VIEW_STEPS"]

_TERMINAL = {s.value for s in TERMINAL_STATUSES}
#: Steps ``GET /tasks/{id}`` lists by default (the newest; ``?steps=`` up to
#: :data:`MAX_VIEW_STEPS`, ``?step=`` for one older step).
VIEW_STEPS = 100
MAX_VIEW_STEPS = 1000


async def submit_task(request: Request) -> Response:
    """One thread hop, and in it: the token's revocation read with the task's steps (one
    round trip), the one submission check, the PENDING record, the send (which subscribes
    to no result: this process never waits for it)."""
    who = identity(request)
    s = request.app.state
    checked = not request.scope.get(DEFERRED)  # the gate checked the token already
    body: Any = None
    refused: ApiError | None = None  # answered once the token is known not revoked
    try:
        body = await owned_body(request, s.max_payload_bytes + ENVELOPE_BYTES)
    except ApiError as exc:
        if checked:
            raise
        refused = exc

    def work() -> dict[str, Any]:
        pipe = state_redis().pipeline(transaction=False)
        n_rev = 0 if checked else queue_reads(pipe, who)
        problem = refused
        parsed: tuple[SubmitBody, TaskRequest] | None = None
        if problem is None and not is_templated(body):
            try:
                parsed = _parsed(body, who.user_id)
            except ApiError as exc:
                problem = exc
        if parsed is not None and parsed[0].task_id:
            pipe.smembers(steps_key(who.user_id, parsed[1].task_id))
        replies = pipe.execute()
        reason = None if checked else reason_of(who, replies[:n_rev])
        if reason is not None:
            raise Unauthorized(reason, headers=dict(REVOKED_HEADERS))
        if problem is not None:
            raise problem
        existing: list[int] = []
        if parsed is None:  # template + variables: the version resolved now, once
            parsed = _parsed(expand(body), who.user_id)
            if parsed[0].task_id:
                existing = control.task_steps(who.user_id, parsed[0].task_id)
        elif parsed[0].task_id:
            existing = sorted(int(x) for x in replies[n_rev])
        data, request_model = parsed
        task_id = request_model.task_id
        step = data.step
        if step is None:
            step = max(existing, default=0) + 1
        elif step in existing:
            prior = control.get_state(who.user_id, task_id, step)["steps"].get(step) or {}
            raise Conflict(f"task {task_id!r} step {step} was already submitted "
                           f"(status {prior.get('status')})")
        req = request_model.model_copy(update={"step": step})
        # the queue to answer with; control.submit runs the one submission check
        # (store.admission: payload size, operation, input, model policy, quotas)
        spec = load_plugins().operation(req.mode, req.service, req.task_name)
        heavy = spec.heavy if data.heavy is None else data.heavy
        eta = data.eta
        if data.countdown is not None:
            eta = datetime.now(UTC) + timedelta(seconds=data.countdown)
        # nobody here waits for the result: the send subscribes to nothing
        control.submit(req, heavy=heavy, eta=eta, steps=existing, watch=False)
        out = {"task_id": task_id, "step": step, "status": "pending",
               "queue": queue_name(heavy)}
        if eta is not None:
            out["eta"] = eta.timestamp()
        if req.template is not None:  # the version a label meant, resolved just now
            out["template"] = req.template.model_dump()
        return out

    return JSONResponse(await run_checked(work), status_code=202)


def _parsed(body: Any, user_id: str) -> tuple[SubmitBody, TaskRequest]:
    """The body of ``POST /tasks`` as its model, and the TaskRequest it asks for (step 0
    until it is numbered), or 422 naming what is wrong."""
    data = validate(SubmitBody, body)
    if data.eta is not None and (data.countdown is not None
                                 or data.eta.timestamp() > time.time() + MAX_DELAY):
        raise InvalidRequest("give eta or countdown, not both, at most "
                             f"{MAX_DELAY // 86400} days ahead")
    request_model = validate(TaskRequest, dict(
        task_name=data.task_name, user_id=user_id, task_id=data.task_id or uuid.uuid4().hex,
        step=data.step if data.step is not None else 0,
        mode=data.mode, service=data.service,
        input_data=data.input_data, context=data.context, template=data.template,
    ))
    return data, request_model


async def _task_view(request: Request, user_id: str, task_id: str, step: int | None,
                     n_events: int, n_steps: int = VIEW_STEPS) -> dict[str, Any]:
    state = await run_in_threadpool(
        lambda: control.get_state(user_id, task_id, step, newest=n_steps))
    raw = await request.app.state.socket.redis.xrevrange(
        TaskKeys(user_id, task_id).log, count=n_events
    ) if n_events else []
    events = [json.loads(fields[b"e"]) for _, fields in reversed(raw)]
    steps = [_step_view(int(k), v)
             for k, v in sorted(state["steps"].items(), key=lambda kv: int(kv[0]))]
    if not steps and not events:
        raise NotFound(f"no task {task_id!r}")
    latest = steps[-1] if steps else {"step": events[-1]["step"], "status": events[-1]["status"]}
    return {
        "task_id": task_id,
        "step": latest["step"],
        "status": latest.get("status"),
        "result": latest.get("result"),
        "error": latest.get("error"),
        "usage": latest.get("usage") or [],
        "steps": steps,
        "steps_total": state["steps_total"],
        "events": events,
        "last_seq": events[-1]["seq"] if events else 0,
    }


def _step_view(step: int, state: dict[str, Any]) -> dict[str, Any]:
    """One execution's state for users: the operation's output as ``result`` (the state
    hash stores the whole TaskResult), no internal bookkeeping fields."""
    result, attempts = state.get("result"), None
    if isinstance(result, dict) and {"task_id", "step", "result"} <= result.keys():
        result, attempts = result.get("result"), result.get("attempts")
    return {
        "step": step,
        "status": state.get("status"),
        "result": result,
        "error": state.get("error"),
        "usage": state.get("usage") or [],
        "attempts": attempts,
        **{k: state.get(k) for k in ("submitted", "started", "finished", "updated")},
        **({"eta": state["eta"]} if state.get("eta") else {}),
    }


async def get_task(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    step = int_param(request, "step", None, 0, 2**31)
    n_events = int_param(request, "events", 20, 0, 1000)
    n_steps = int_param(request, "steps", VIEW_STEPS, 1, MAX_VIEW_STEPS)
    with mapped_errors():
        view = await _task_view(request, user_id, task_id, step, n_events, n_steps)
    return JSONResponse(view)


async def cancel_task(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    step = int_param(request, "step", None, 0, 2**31)

    def work() -> dict[str, Any]:
        steps = control.get_state(user_id, task_id, step)["steps"]
        if not steps:
            raise NotFound(f"no task {task_id!r}" + (f" step {step}" if step is not None else ""))
        live = [int(k) for k, v in steps.items() if v.get("status") not in _TERMINAL]
        if not live:
            statuses = ", ".join(f"step {k}: {v.get('status')}" for k, v in steps.items())
            raise Conflict(f"nothing to cancel ({statuses})", type_="already_finished")
        cancelled = [st for st in sorted(live) if control.cancel(user_id, task_id, st)]
        if not cancelled:
            raise Conflict("the task finished meanwhile", type_="already_finished")
        return {"task_id": task_id, "cancelling": cancelled}

    return JSONResponse(await run_checked(work), status_code=202)


ROUTES = [
    Route("/tasks", submit_task, methods=["POST"]),
    Route("/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/tasks/{task_id}", cancel_task, methods=["DELETE"]),
]
