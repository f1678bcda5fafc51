"""HTTP API of batches and workflows (the owner is the token's user).

- ``POST /batches`` ``{"items": [{mode, service, task_name, input_data?, context?,
  heavy?}, ...], "batch_id"?, "heavy"?}`` -> 202 ``{"batch_id", "total", "items"}``
- ``GET /batches/{batch_id}?offset=&limit=`` -> counts, status, problems, items
- ``DELETE /batches/{batch_id}`` -> 202 ``{"batch_id", "cancelling"}``
- ``POST /workflows`` ``{"steps": [{step, mode, service, task_name, input_data?,
  context?, depends_on?, heavy?}, ...], "task_id"?}`` -> 202 ``{"task_id", "steps"}``
- ``GET /workflows/{task_id}`` -> the steps with their states and results
- ``DELETE /workflows/{task_id}`` -> 202 ``{"task_id", "cancelling": [steps]}``

A batch or workflow that is refused (a bad item or step, a cycle, an unknown reference,
service or operation) is answered 422 naming the item or step, before anything runs;
an id already in use is 409; a body over AIECS_MAX_GROUP_BODY_BYTES or a batch over
AIECS_MAX_BATCH_ITEMS is 413; a per-user quota is 429 with ``Retry-After``
(:mod:`aiecs_worker.store.quotas`). The statuses come from :func:`..errors.as_api_error`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...producer import batch, flow
from ..bodies import BatchBody, WorkflowBody
from ..errors import NotFound, run_checked
from ..params import authenticate, int_param, owned_body, task_id_param, validate

__all__ = ["ROUTES"]


async def submit_batch(request: Request) -> Response:
    user_id = authenticate(request)
    data = validate(BatchBody,
                    await owned_body(request, request.app.state.max_group_body_bytes))
    out = await run_checked(lambda: batch.submit_batch(user_id, data.items,
                                                       batch_id=data.batch_id, heavy=data.heavy))
    return JSONResponse(out, status_code=202)


async def get_batch(request: Request) -> Response:
    user_id = authenticate(request)
    batch_id = task_id_param(request, "batch_id")
    offset = int_param(request, "offset", 0, 0, 2**31)
    limit = int_param(request, "limit", 1000, 0, 10_000)
    view = await run_checked(lambda: batch.get_batch(user_id, batch_id, offset=offset,
                                                     limit=limit))
    if view is None:
        raise NotFound(f"no batch {batch_id!r}")
    return JSONResponse(view)


async def cancel_batch(request: Request) -> Response:
    user_id = authenticate(request)
    batch_id = task_id_param(request, "batch_id")
    out = await run_checked(lambda: batch.cancel_batch(user_id, batch_id))
    return JSONResponse(out, status_code=202)


async def submit_workflow(request: Request) -> Response:
    user_id = authenticate(request)
    data = validate(WorkflowBody,
                    await owned_body(request, request.app.state.max_group_body_bytes))
    out = await run_checked(lambda: flow.submit_workflow(user_id, data.steps,
                                                         task_id=data.task_id))
    return JSONResponse(out, status_code=202)


async def get_workflow(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    view = await run_checked(lambda: flow.get_workflow(user_id, task_id))
    if view is None:
        raise NotFound(f"no workflow {task_id!r}")
    return JSONResponse(view)


async def cancel_workflow(request: Request) -> Response:
    user_id = authenticate(request)
    task_id = task_id_param(request)
    steps = await run_checked(lambda: flow.cancel_workflow(user_id, task_id))
    return JSONResponse({"task_id": task_id, "cancelling": steps}, status_code=202)


ROUTES = [
    Route("/batches", submit_batch, methods=["POST"]),
    Route("/batches/{batch_id}", get_batch, methods=["GET"]),
    Route("/batches/{batch_id}", cancel_batch, methods=["DELETE"]),
    Route("/workflows", submit_workflow, methods=["POST"]),
    Route("/workflows/{task_id}", get_workflow, methods=["GET"]),
    Route("/workflows/{task_id}", cancel_workflow, methods=["DELETE"]),
]
