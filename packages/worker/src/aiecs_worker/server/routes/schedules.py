"""The schedule routes of the task API: ``POST/GET /schedules``, ``GET/DELETE
/schedules/{task_id}``. The owner is the token's user; a user sees only their own
schedules (another user's is indistinguishable from a missing one: 404).

A schedule is refused at creation with a 422 naming what is wrong: a bad cron expression,
both or neither of ``every`` / ``cron``, a period under AIECS_SCHEDULE_MIN_PERIOD, an
unknown service or operation, input its operation's model refuses; 409 when the task
already has a schedule; 429 with ``Retry-After`` when the user has AIECS_MAX_SCHEDULES
schedules already or submits too fast (:mod:`aiecs_worker.store.quotas`).
"""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...history.templates import expand, is_templated
from ...producer import schedules
from ..bodies import ScheduleBody
from ..errors import InvalidRequest, NotFound, run_checked
from ..params import ENVELOPE_BYTES, authenticate, owned_body, task_id_param, validation_message

__all__ = ["ROUTES"]


async def create_schedule(request: Request) -> Response:
    user_id = authenticate(request)
    body = await owned_body(request, request.app.state.max_payload_bytes + ENVELOPE_BYTES)
    if is_templated(body):  # the version resolved now: every run runs it
        body = await run_checked(lambda: expand(body))
    try:
        data = ScheduleBody.model_validate(body)
        schedule = schedules.Schedule(
            user_id=user_id, task_id=data.task_id or uuid.uuid4().hex,
            **data.model_dump(exclude={"task_id", "heavy"}),
        )
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None
    out = await run_checked(lambda: schedules.create(schedule, heavy=data.heavy))
    return JSONResponse(out, status_code=201)


async def list_schedules(request: Request) -> Response:
    user_id = authenticate(request)
    out = await run_checked(lambda: schedules.list_schedules(user_id))
    return JSONResponse({"schedules": out})


async def get_schedule(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    out = await run_checked(lambda: schedules.get(user_id, task_id))
    if out is None:
        raise NotFound(f"no schedule on task {task_id!r}")
    return JSONResponse(out)


async def delete_schedule(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    if not await run_checked(lambda: schedules.delete(user_id, task_id)):
        raise NotFound(f"no schedule on task {task_id!r}")
    return JSONResponse({"task_id": task_id, "deleted": True})


ROUTES = [
    Route("/schedules", create_schedule, methods=["POST"]),
    Route("/schedules", list_schedules, methods=["GET"]),
    Route("/schedules/{task_id}", get_schedule, methods=["GET"]),
    Route("/schedules/{task_id}", delete_schedule, methods=["DELETE"]),
]
