"""Reading a request: its JSON body (bounded), its bearer token, its path and query
parameters. Each refusal is an :class:`~.errors.ApiError` (400, 401, 413, 422).

A body's size is checked before it is read in full and its nesting before it is parsed
(:mod:`aiecs_core.jsonlimits`), so no input reaches a recursive parser unbounded.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from aiecs_core import ID_PATTERN, jsonlimits
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import BadRequest, Forbidden, InvalidRequest, PayloadTooLarge, Unauthorized
from .tokens import Identity, TokenError, is_operator, verify_token

__all__ = ["ENVELOPE_BYTES", "authenticate", "identity", "int_param", "operator",
           "owned_body", "read_json", "task_id_param", "validate", "validation_message"]

#: Room for a body's own fields around ``input_data`` + ``context``.
ENVELOPE_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def validate(model: type[M], data: Any) -> M:
    """``model`` validated from ``data``, or 422 naming what is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than ``limit`` bytes before reading them."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("invalid Content-Length")
        if len(length) > 18 or int(length) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    if not body:
        raise BadRequest("empty body: send a JSON object")
    try:
        return jsonlimits.loads(body, what="body")
    except jsonlimits.JsonDepthError as exc:
        raise BadRequest(str(exc), limit=exc.limit) from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


async def owned_body(request: Request, limit: int) -> Any:
    """The JSON body of a request made for the token's user: a ``user_id`` in it is
    refused (422), never trusted."""
    body = await read_json(request, limit)
    if isinstance(body, dict) and "user_id" in body:
        raise InvalidRequest("user_id is taken from the token; remove it from the body")
    return body


def authenticate(request: Request) -> str:
    """The user id of the request's bearer token, or 401."""
    return identity(request).user_id


def operator(request: Request) -> Identity:
    """The identity of the request's bearer token if it has the operator scope; else 401
    (no valid token) or 403."""
    who = identity(request)
    if not is_operator(who):
        raise Forbidden("this route needs an operator token (scope \"operator\": "
                        "`aiecs token USER --operator`)")
    return who


def identity(request: Request) -> Identity:
    """The verified identity of the request's bearer token, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing token: send Authorization: Bearer TOKEN",
                           headers={"WWW-Authenticate": 'Bearer realm="aiecs"'})
    try:
        return verify_token(token.strip(), request.app.state.secret,
                            max_lifetime=request.app.state.token_max_lifetime)
    except TokenError as exc:
        raise Unauthorized(
            str(exc), headers={"WWW-Authenticate": 'Bearer realm="aiecs", error="invalid_token"'}
        ) from None


def task_id_param(request: Request, name: str = "task_id") -> str:
    """The path parameter ``name``, an id (of a task, a batch), or 400 (the message says
    ``task_id`` for both, as clients have always read it)."""
    raw = request.path_params[name]
    if not re.fullmatch(ID_PATTERN, raw):
        raise BadRequest(f"invalid task_id (must match {ID_PATTERN})")
    return raw


def int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """The query parameter ``name`` as an integer in ``[lo, hi]``, or 400."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value
