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
(:mod:`aiecs_worker.quotas`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .api import (
    ApiError,
    _int_param,
    _is_backend_error,
    _task_id,
    _unavailable,
    _validation_message,
    authenticate,
    quota_error,
    read_json,
)

__all__ = ["routes"]


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]]
    batch_id: str | None = None
    heavy: bool | None = None


class WorkflowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[dict[str, Any]]
    task_id: str | None = None


async def _call(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a thread: GroupError -> 422/409/413, a quota -> 429 (422),
    KeyError -> 404, outage -> 503."""
    from aiecs_core import QuotaExceededError

    from ..workflows.common import GroupError

    names = {409: "conflict", 413: "payload_too_large"}
    try:
        return await run_in_threadpool(work)
    except ApiError:
        raise
    except QuotaExceededError as exc:
        raise quota_error(exc) from None
    except GroupError as exc:
        status = exc.details.get("status")
        status = status if status in names else 422
        raise ApiError(status, names.get(status, "invalid_request"), exc.message) from None
    except KeyError as exc:
        raise ApiError(404, "not_found", f"no such batch or workflow: {exc.args[0]!r}") from None
    except Exception as exc:
        if _is_backend_error(exc):
            raise _unavailable(exc) from None
        raise


async def _body(request: Request, model: type[BaseModel], limit: int) -> Any:
    body = await read_json(request, limit)
    if isinstance(body, dict) and "user_id" in body:
        raise ApiError(422, "invalid_request",
                       "user_id is taken from the token; remove it from the body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from None


async def submit_batch(request: Request) -> Response:
    from ..workflows.batch import submit_batch as submit

    user_id = authenticate(request)
    data = await _body(request, BatchBody, request.app.state.max_group_body_bytes)
    out = await _call(lambda: submit(user_id, data.items, batch_id=data.batch_id,
                                     heavy=data.heavy))
    return JSONResponse(out, status_code=202)


async def get_batch(request: Request) -> Response:
    from ..workflows.batch import get_batch as get

    user_id = authenticate(request)
    batch_id = _task_id(request.path_params["batch_id"])
    offset = _int_param(request, "offset", 0, 0, 2**31)
    limit = _int_param(request, "limit", 1000, 0, 10_000)
    view = await _call(lambda: get(user_id, batch_id, offset=offset, limit=limit))
    if view is None:
        raise ApiError(404, "not_found", f"no batch {batch_id!r}")
    return JSONResponse(view)


async def cancel_batch(request: Request) -> Response:
    from ..workflows.batch import cancel_batch as cancel

    user_id = authenticate(request)
    batch_id = _task_id(request.path_params["batch_id"])
    return JSONResponse(await _call(lambda: cancel(user_id, batch_id)), status_code=202)


async def submit_workflow(request: Request) -> Response:
    from ..workflows.flow import submit_workflow as submit

    user_id = authenticate(request)
    data = await _body(request, WorkflowBody, request.app.state.max_group_body_bytes)
    out = await _call(lambda: submit(user_id, data.steps, task_id=data.task_id))
    return JSONResponse(out, status_code=202)


async def get_workflow(request: Request) -> Response:
    from ..workflows.flow import get_workflow as get

    user_id = authenticate(request)
    task_id = _task_id(request.path_params["task_id"])
    view = await _call(lambda: get(user_id, task_id))
    if view is None:
        raise ApiError(404, "not_found", f"no workflow {task_id!r}")
    return JSONResponse(view)


async def cancel_workflow(request: Request) -> Response:
    from ..workflows.flow import cancel_workflow as cancel

    user_id = authenticate(request)
    task_id = _task_id(request.path_params["task_id"])
    steps = await _call(lambda: cancel(user_id, task_id))
    return JSONResponse({"task_id": task_id, "cancelling": steps}, status_code=202)


routes = [
    Route("/batches", submit_batch, methods=["POST"]),
    Route("/batches/{batch_id}", get_batch, methods=["GET"]),
    Route("/batches/{batch_id}", cancel_batch, methods=["DELETE"]),
    Route("/workflows", submit_workflow, methods=["POST"]),
    Route("/workflows/{task_id}", get_workflow, methods=["GET"]),
    Route("/workflows/{task_id}", cancel_workflow, methods=["DELETE"]),
]
