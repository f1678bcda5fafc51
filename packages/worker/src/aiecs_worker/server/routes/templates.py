"""The templates API (docs/templates.md). Any token reads; writes need the operator scope.

- ``GET /templates``: every template (newest version, labels);
- ``POST /templates`` (operator): ``{"name", "mode", "service", "operation", "input",
  "variables_schema", "defaults", "description"}`` publishes a new version (201), or
  answers the existing one when the content is identical (200);
- ``GET /templates/{name}``: its versions and labels;
- ``GET /templates/{name}/versions/{n}``: one version's content;
- ``PUT /templates/{name}/labels/{label}`` (operator): ``{"version": n,
  "expected_version": m | null}`` moves the label by compare-and-swap (409 when it points
  elsewhere now, with ``current_version``);
- ``GET /templates/{name}/labels/{label}/history``: the label's moves, newest first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiecs_history import templates as store
from aiecs_history.rendering import LABEL_PATTERN, NAME_PATTERN
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import BadRequest, InvalidRequest, mapped_errors
from ..params import ENVELOPE_BYTES, authenticate, int_param, operator, read_json, validate

__all__ = ["ROUTES"]


class LabelBody(BaseModel):
    """``PUT /templates/{name}/labels/{label}``."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)
    expected_version: int | None = Field(ge=1, le=2**31 - 1)
    """The version the label points at now, as the mover read it; null: a new label."""


T = TypeVar("T")


async def _run(request: Request, work: Callable[[Any], T]) -> T:
    """``work(engine)`` on the server's history database: in its own threads, bounded by
    AIECS_DATABASE_TIMEOUT (a hung database answers 503, never holds the request), its
    errors mapped (templates' 404 / 409 / 422, the database's 503)."""
    with mapped_errors():
        return await request.app.state.history.run(work)


def _param(request: Request, name: str, pattern: str) -> str:
    raw = request.path_params[name]
    if not re.fullmatch(pattern, raw):
        raise BadRequest(f"invalid {name} (must match {pattern})")
    return raw


async def list_templates(request: Request) -> Response:
    authenticate(request)
    out = await _run(request, lambda e: store.list_templates(e))
    return JSONResponse({"templates": out})


async def publish_template(request: Request) -> Response:
    who = operator(request)
    body = await read_json(request, request.app.state.max_payload_bytes + ENVELOPE_BYTES)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise InvalidRequest("send a JSON object with the template's name and content")
    content = {k: v for k, v in body.items() if k != "name"}

    def work(e: Any) -> tuple[Any, bool]:
        return store.publish(e, body["name"], content, created_by=who.user_id,
                             source="api")

    version, created = await _run(request, work)
    return JSONResponse({"template": version.to_json(), "created": created},
                        status_code=201 if created else 200)


async def get_template(request: Request) -> Response:
    authenticate(request)
    name = _param(request, "name", NAME_PATTERN)
    return JSONResponse(await _run(request, lambda e: store.describe(e, name)))


async def get_version(request: Request) -> Response:
    authenticate(request)
    name = _param(request, "name", NAME_PATTERN)
    n = int_param_path(request, "version")
    version = await _run(request, lambda e: store.get_version(e, name, n))
    return JSONResponse(version.to_json())


def int_param_path(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10):
        raise BadRequest(f"{name} must be a positive integer")
    return int(raw)


async def move_label(request: Request) -> Response:
    who = operator(request)
    name = _param(request, "name", NAME_PATTERN)
    label = _param(request, "label", LABEL_PATTERN)
    data = validate(LabelBody, await read_json(request, 4096))
    out = await _run(request, lambda e: store.move_label(
        e, name, label, data.version, expected_version=data.expected_version,
        moved_by=who.user_id))
    return JSONResponse(out)


async def label_history(request: Request) -> Response:
    authenticate(request)
    name = _param(request, "name", NAME_PATTERN)
    label = _param(request, "label", LABEL_PATTERN)
    limit = int_param(request, "limit", 100, 1, 1000) or 100
    moves = await _run(request, lambda e: store.label_history(e, name, label, limit=limit))
    return JSONResponse({"name": name, "label": label, "moves": moves})


ROUTES = [
    Route("/templates", list_templates, methods=["GET"]),
    Route("/templates", publish_template, methods=["POST"]),
    Route("/templates/{name}", get_template, methods=["GET"]),
    Route("/templates/{name}/versions/{version}", get_version, methods=["GET"]),
    Route("/templates/{name}/labels/{label}", move_label, methods=["PUT"]),
    Route("/templates/{name}/labels/{label}/history", label_history, methods=["GET"]),
]
