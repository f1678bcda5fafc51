"""The query parameters of the history routes (``GET /executions``, ``GET /usage``) and
whose history a request reads. A bad value is refused with 422 naming the parameter."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from aiecs_core import ID_PATTERN, TaskStatus
from aiecs_history.queries import MAX_LIMIT, CursorError, Filters, decode_cursor
from starlette.requests import Request

from .errors import Forbidden, InvalidRequest
from .params import identity
from .tokens import is_operator

__all__ = ["FILTERS", "cursor_param", "filters", "known_only", "limit_param", "reader",
           "time_param"]

_STATUSES = tuple(s.value for s in TaskStatus)
_TEXT_MAX = 256
#: The filters both routes take.
FILTERS = ("user", "status", "service", "operation", "model", "template", "template_version",
           "batch_id", "workflow_id", "since", "until")


def known_only(request: Request, names: tuple[str, ...]) -> None:
    """422 for a query parameter the route does not take (a typo would filter nothing)."""
    unknown = sorted(set(request.query_params) - set(names))
    if unknown:
        raise InvalidRequest(f"unknown parameter {unknown[0]!r} (known: {', '.join(names)})")


def reader(request: Request, *, everyone: bool) -> str | None:
    """Whose history the request reads: the token's user; an operator token may name
    another with ``?user=`` and, when ``everyone``, reads every user's without it (None).
    Any other token naming another user: 403."""
    who = identity(request)
    asked = request.query_params.get("user")
    if asked is not None and not re.fullmatch(ID_PATTERN, asked):
        raise InvalidRequest(f"user must match {ID_PATTERN}")
    if not is_operator(who):
        if asked is not None and asked != who.user_id:
            raise Forbidden("reading another user's history needs an operator token "
                            "(scope \"operator\": `aiecs token USER --operator`)")
        return who.user_id
    if asked is not None:
        return asked
    return None if everyone else who.user_id


def time_param(request: Request, name: str) -> float | None:
    """``name`` as UNIX seconds: given as ISO-8601 (``2026-12-06``,
    ``2026-12-06T10:00:00Z``; without a zone: UTC) or as UNIX seconds."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be an ISO-8601 time (2026-12-06T10:00:00Z) "
                                 f"or UNIX seconds, not {raw[:40]!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise InvalidRequest(f"{name} must be UNIX seconds between 0 and 1e11")
    return value


def limit_param(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("limit must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return value


def cursor_param(request: Request) -> str | None:
    raw = request.query_params.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        decode_cursor(raw)
    except CursorError as exc:
        raise InvalidRequest(str(exc)) from None
    return raw


def _text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > _TEXT_MAX:
        raise InvalidRequest(f"{name} is longer than {_TEXT_MAX} characters")
    return raw


def filters(request: Request, user_id: str | None) -> Filters:
    """The filters of ``GET /executions`` and ``GET /usage``."""
    status = _text(request, "status")
    if status is not None and status not in _STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(_STATUSES)}")
    version_raw = request.query_params.get("template_version")
    version: Any = None
    if version_raw not in (None, ""):
        if not version_raw.isdigit() or len(version_raw) > 9:
            raise InvalidRequest("template_version must be a positive integer")
        version = int(version_raw)
    since, until = time_param(request, "since"), time_param(request, "until")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("since is later than until")
    return Filters(
        user_id=user_id, status=status, service=_text(request, "service"),
        operation=_text(request, "operation"), model=_text(request, "model"),
        template=_text(request, "template"), template_version=version,
        batch_id=_text(request, "batch_id"), workflow_id=_text(request, "workflow_id"),
        since=since, until=until)
