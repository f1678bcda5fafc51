"""The history API: the executions of the token's user (an operator's: anyone's), read
from the history database and, for one execution still in Redis, from Redis.

- ``GET /executions?status=&service=&operation=&model=&template=&template_version=&batch_id=
  &workflow_id=&since=&until=&limit=50&cursor=&user=`` -> ``{"items": [row, ...],
  "next_cursor": str | null}``, newest first (``finished_at``, then ``id``, descending);
  ``format=ndjson`` streams every match instead, one row per line (an export; a line
  ``{"error": {...}}`` ends one the database cut short).
- ``GET /executions/{task_id}/{step}`` -> ``{"execution": row, "events": [...],
  "source": "redis" | "database"}``: from Redis while the execution's state exists (its
  events from the task's log; its row from the state, or the database's once recorded),
  else the database's row and its compacted event log; 404 when neither has it.
- ``GET /usage?group_by=day|provider|model|template&since=&until=&...`` -> ``{"group_by",
  "groups": [{"key", "executions", "input_tokens", "output_tokens", "cost",
  "unpriced"}], "total": {...}}``.
- ``DELETE /users/{user}/history`` (operator token) -> what was deleted: the user's rows,
  payloads and event logs, and Redis's states and logs of their ended executions.

A row is a JSON object whose keys are the ``executions`` table's columns, times ISO-8601
UTC. Without an operator token, ``?user=`` naming another user is 403; an operator's
list and usage without ``?user=`` cover every user. Bad parameters: 422; the database
down or slow: 503 (see :mod:`..errors`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from aiecs_core import TERMINAL_STATUSES
from aiecs_history import queries
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...history.database import DatabaseUnavailable, HistoryDatabase
from ...history.forget import forget
from ...history.live import row_from_state
from ...producer import control
from ...store.events import TaskKeys
from ...store.records import state_redis
from ..errors import InvalidRequest, NotFound, as_api_error, mapped_errors, run_checked
from ..history_params import (
    FILTERS,
    cursor_param,
    filters,
    known_only,
    limit_param,
    reader,
)
from ..params import operator, task_id_param

__all__ = ["EXPORT_CHUNK", "ROUTES"]

#: Rows read per database call of an export.
EXPORT_CHUNK = 500
_TERMINAL = {s.value for s in TERMINAL_STATUSES}
#: Events read from Redis per call when showing one execution.
_LOG_CHUNK = 1000


def _db(request: Request) -> HistoryDatabase:
    return request.app.state.history


async def list_executions(request: Request) -> Response:
    known_only(request, (*FILTERS, "limit", "cursor", "format"))
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "ndjson"):
        raise InvalidRequest("format must be json or ndjson")
    selected = filters(request, reader(request, everyone=True))
    if fmt == "ndjson":
        return await _export(request, selected)
    limit, cursor = limit_param(request), cursor_param(request)
    with mapped_errors():
        page = await _db(request).run(
            lambda engine: queries.list_executions(engine, selected, limit=limit,
                                                   cursor=cursor))
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


async def _export(request: Request, selected: queries.Filters) -> Response:
    db = _db(request)
    rows: dict[str, Any] = {}

    def first(engine: Any) -> list[dict[str, Any]]:
        rows["it"] = queries.iter_executions(engine, selected, batch=EXPORT_CHUNK)
        return list(itertools.islice(rows["it"], EXPORT_CHUNK))

    def more(engine: Any) -> list[dict[str, Any]]:
        return list(itertools.islice(rows["it"], EXPORT_CHUNK))

    with mapped_errors():  # an outage before the first line is a 503, not a cut stream
        chunk = await db.run(first)

    async def lines() -> AsyncIterator[bytes]:
        nonlocal chunk
        while chunk:
            yield "".join(json.dumps(row) + "\n" for row in chunk).encode()
            if len(chunk) < EXPORT_CHUNK:
                return
            try:
                chunk = await db.run(more)
            except DatabaseUnavailable as exc:
                mapped = as_api_error(exc)
                assert mapped is not None
                yield (json.dumps({"error": {"type": mapped.type, "message": mapped.message}})
                       + "\n").encode()
                return

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def get_execution(request: Request) -> Response:
    known_only(request, ("user",))
    user_id = reader(request, everyone=False)
    assert user_id is not None
    task_id = task_id_param(request)
    raw_step = request.path_params["step"]
    if not (raw_step.isdigit() and len(raw_step) <= 10 and int(raw_step) < 2**31):
        raise InvalidRequest("step must be an integer between 0 and 2147483647")
    step = int(raw_step)

    def live() -> dict[str, Any] | None:
        state = control.get_state(user_id, task_id, step)["steps"].get(step)
        if state is None:
            return None
        request_json = None
        if state.get("status") not in _TERMINAL:  # kept only until it ends
            request_json = state_redis().hget(TaskKeys(user_id, task_id).state(step),
                                              "request")
        return row_from_state(user_id, task_id, step, state, request_json)

    row = await run_checked(live)
    if row is not None:
        events = await _logged_events(request, user_id, task_id, step)
        if row["status"] in _TERMINAL:  # recorded already? its row says more (mode, worker...)
            try:
                found = await _db(request).run(
                    lambda engine: queries.get_execution(engine, user_id, task_id, step))
            except DatabaseUnavailable:
                found = None  # the state's row will do
            if found is not None:
                row = found[0]
        return JSONResponse({"execution": row, "events": events, "source": "redis"})
    with mapped_errors():
        found = await _db(request).run(
            lambda engine: queries.get_execution(engine, user_id, task_id, step))
    if found is None:
        raise NotFound(f"no execution {task_id!r} step {step}")
    execution, stored = found
    return JSONResponse({"execution": execution, "events": stored or [],
                         "source": "database"})


async def _logged_events(request: Request, user_id: str, task_id: str,
                         step: int) -> list[dict[str, Any]]:
    """The events of one step in its task's Redis log, oldest first."""
    redis = request.app.state.socket.redis
    log = TaskKeys(user_id, task_id).log
    out: list[dict[str, Any]] = []
    after = "-"
    with mapped_errors():
        while True:
            entries = await redis.xrange(log, min=after, max="+", count=_LOG_CHUNK)
            for _, fields in entries:
                event = json.loads(fields[b"e"])
                if event.get("step") == step:
                    out.append(event)
            if len(entries) < _LOG_CHUNK:
                return out
            last = entries[-1][0].decode()
            after = "(" + last


async def get_usage(request: Request) -> Response:
    known_only(request, (*FILTERS, "group_by"))
    group_by = request.query_params.get("group_by", "day")
    if group_by not in queries.GROUPS:
        raise InvalidRequest(f"group_by must be one of {', '.join(queries.GROUPS)}")
    selected = filters(request, reader(request, everyone=True))
    with mapped_errors():
        out = await _db(request).run(lambda engine: queries.usage(engine, selected, group_by))
    return JSONResponse(out)


async def forget_user(request: Request) -> Response:
    operator(request)
    known_only(request, ())
    user_id = task_id_param(request, "user")

    with mapped_errors():
        out = await _db(request).run(lambda engine: forget(engine, state_redis(), user_id))
    return JSONResponse(out)


ROUTES = [
    Route("/executions", list_executions, methods=["GET"]),
    Route("/executions/{task_id}/{step}", get_execution, methods=["GET"]),
    Route("/usage", get_usage, methods=["GET"]),
    Route("/users/{user}/history", forget_user, methods=["DELETE"]),
]
