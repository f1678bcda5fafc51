"""Errors of the HTTP API and the one map from an error to its HTTP status.

Every error is answered as JSON, ``{"error": {"type": ..., "message": ...}}``, with the
status code that says what went wrong (never a traceback):

======  ==========================================================================
400     the body is not JSON, is nested deeper than 64 levels (``MAX_JSON_DEPTH``),
        or a parameter is malformed
401     missing, malformed, wrongly signed or expired token (``WWW-Authenticate``)
402     a budget of the user refuses the submission (``BudgetExceededError``: the body
        names the period, kind, hard limit, what is committed and requested, and when
        the period resets; docs/budgets.md)
403     a browser request from an origin not in CORS_ALLOWED_ORIGINS, or an operator
        route without an operator token
404     unknown route, or no such task, batch, workflow or schedule *for this user*
        (other users' are indistinguishable from missing ones); no such template,
        version or label
409     the execution, batch or schedule already exists, or the task already finished
        (cancel); a template label moved since it was read (``expected_version``)
413     the body is larger than AIECS_MAX_PAYLOAD_BYTES (AIECS_MAX_GROUP_BODY_BYTES)
        allows
422     the body does not validate: request model, unknown service or operation, or
        input rejected by the operation's input model; or a per-user limit the request
        can never meet (``QuotaExceededError``, e.g. AIECS_MAX_STEPS_PER_TASK); or a
        query parameter of the history routes out of range or malformed (cursor, limit,
        time, status, an unknown parameter)
429     a per-user quota (``QuotaExceededError``: submissions per second, executions or
        batches in flight, schedules), with ``Retry-After`` in seconds; the message
        names the limit and its setting (docs/security.md, "Quotas per user")
503     Redis or the broker is unreachable, or the history database (history routes,
        ``DatabaseUnavailable``: down, or no answer within AIECS_DATABASE_TIMEOUT;
        templates: the driver's OperationalError)
======  ==========================================================================

Routes raise an :class:`ApiError` (or a subclass) for what they check themselves, and run
the work below them through :func:`run_checked` / :func:`mapped_errors`, where
:func:`as_api_error` (the one map) turns the producer's errors into an :class:`ApiError`.
Each 400/402/413/422/429 is logged as one line (``aiecs.server``, INFO), never with a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis
import sqlalchemy.exc
from aiecs_core import AiecsError, BudgetExceededError, PayloadTooLargeError, QuotaExceededError
from aiecs_history.errors import LabelConflictError, TemplateNotFoundError
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..history import HistoryDatabaseUnreachableError
from ..history.database import DatabaseUnavailable
from ..producer.groups import GroupError, NotFoundError
from ..producer.schedules import ScheduleExistsError
from ..store.quotas import retry_after_header

__all__ = [
    "EXCEPTION_HANDLERS", "ApiError", "BadRequest", "Conflict", "Forbidden", "InvalidRequest",
    "NotFound",
    "PayloadTooLarge", "Unauthorized", "as_api_error", "error_response", "mapped_errors",
    "quota_error", "run_checked",
]

log = logging.getLogger("aiecs.server")


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message", **extra}}`` with ``status``."""

    status = 500
    type = "internal_error"

    def __init__(self, status: int | None = None, type_: str | None = None, message: str = "",
                 headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status = status if status is not None else type(self).status
        self.type = type_ if type_ is not None else type(self).type
        self.message = message
        self.headers = headers
        self.extra = extra


class _Fixed(ApiError):
    """An ApiError whose status (and, unless ``type_`` is given, type) are the class's:
    ``NotFound("no task 'x'")``."""

    def __init__(self, message: str, headers: dict | None = None, *, type_: str | None = None,
                 **extra: Any):
        super().__init__(None, type_, message, headers, **extra)


class BadRequest(_Fixed):
    status, type = 400, "bad_request"


class Unauthorized(_Fixed):
    status, type = 401, "unauthorized"


class Forbidden(_Fixed):
    status, type = 403, "forbidden"


class NotFound(_Fixed):
    status, type = 404, "not_found"


class Conflict(_Fixed):
    status, type = 409, "conflict"


class PayloadTooLarge(_Fixed):
    status, type = 413, "payload_too_large"


class InvalidRequest(_Fixed):
    status, type = 422, "invalid_request"


class Unavailable(_Fixed):
    status, type = 503, "unavailable"


def error_response(status: int, type_: str, message: str, headers: dict | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


def quota_error(exc: QuotaExceededError) -> ApiError:
    """429 with ``Retry-After`` for a quota that frees up, else 422; the body names the
    limit and its setting."""
    extra = {"limit": exc.limit, "setting": exc.setting}
    if exc.retry_after is None:
        return ApiError(422, "QuotaExceededError", exc.message, **extra)
    header = retry_after_header(exc.retry_after)
    return ApiError(429, "QuotaExceededError", exc.message, {"Retry-After": header},
                    retry_after=int(header), **extra)


_OUTAGE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError,
           ConnectionError, TimeoutError)


def is_backend_error(exc: BaseException | None) -> bool:
    """A Redis/broker outage, directly or as the cause of what Celery raised (its result
    consumer wraps a failed reconnect in a bare ``RuntimeError``)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _OUTAGE):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


_GROUP_STATUSES: dict[Any, type[_Fixed]] = {409: Conflict, 413: PayloadTooLarge}


def as_api_error(exc: BaseException) -> ApiError | None:
    """The one error -> HTTP status map: the ApiError ``exc`` is answered with, or None for
    an error that is a bug (answered 500 and logged with its traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFoundError):
        return NotFound(f"no such batch or workflow: {exc.args[0]!r}")
    if isinstance(exc, ScheduleExistsError):
        return Conflict(str(exc))
    if isinstance(exc, TemplateNotFoundError):
        return NotFound(exc.message, type_="TemplateNotFoundError")
    if isinstance(exc, LabelConflictError):
        return Conflict(exc.message, type_="LabelConflictError",
                        current_version=exc.current_version)
    if isinstance(exc, GroupError):  # a refused batch or workflow: 422, or 409/413
        return _GROUP_STATUSES.get(exc.details.get("status"), InvalidRequest)(exc.message)
    if isinstance(exc, PayloadTooLargeError):
        return PayloadTooLarge(exc.message)
    if isinstance(exc, QuotaExceededError):
        return quota_error(exc)
    if isinstance(exc, BudgetExceededError):
        return ApiError(402, "BudgetExceededError", exc.message, **exc.details)
    if isinstance(exc, DatabaseUnavailable):
        log.warning("history database unavailable: %s", exc.reason)
        return Unavailable(f"the history database is unavailable: {exc.reason}",
                           type_="database_unavailable")
    if isinstance(exc, HistoryDatabaseUnreachableError):  # a template not resolved
        log.warning("history database unavailable: %s", exc.message)
        return Unavailable(exc.message, type_="HistoryDatabaseUnreachableError")
    if isinstance(exc, AiecsError):  # ServiceNotFoundError, InputValidationError, ...
        return ApiError(422, type(exc).__name__, exc.message)
    if is_backend_error(exc):
        log.warning("backend unavailable: %s: %s", type(exc).__name__, exc)
        return Unavailable("Redis or the task broker is unreachable; retry shortly")
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        log.warning("history database unavailable: %s", str(exc).splitlines()[0][:300])
        return Unavailable("the history database (templates) is unreachable; retry shortly")
    return None


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Raise what the block raises as the ApiError :func:`as_api_error` maps it to."""
    try:
        yield
    except Exception as exc:
        mapped = as_api_error(exc)
        if mapped is None or mapped is exc:
            raise
        raise mapped from None


#: The threads of :func:`run_checked`: as many as anyio's default (40) for
#: ``run_in_threadpool``, which costs three times the CPU per hop (its capacity limiter,
#: cancel scope and backend look-ups: 42 µs against 14 µs measured on the bench machine).
_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=40,
                                                 thread_name_prefix="aiecs-api")


async def run_checked(work: Callable[[], Any]) -> Any:
    """``work()`` in a thread (it calls Redis and the broker) with the caller's context
    variables (a tracing span, ...), its errors mapped. A caller cancelled meanwhile does
    not stop ``work()``: it ends in its thread, as under ``run_in_threadpool``."""
    context = contextvars.copy_context()
    with mapped_errors():
        return await asyncio.get_running_loop().run_in_executor(
            _THREADS, context.run, work)


# -- Starlette's exception handlers -----------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status in (400, 402, 413, 422, 429):
        message = exc.message if len(exc.message) <= 300 else exc.message[:300] + "..."
        log.info("refused %s %s: %d %s: %s", request.method, request.url.path[:200], exc.status,
                 exc.type, message)
    return error_response(exc.status, exc.type, exc.message, exc.headers, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    names = {404: "not_found", 405: "method_not_allowed"}
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    return error_response(exc.status_code, names.get(exc.status_code, "http_error"), message,
                          getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error (see the server log)")


#: Starlette's ``exception_handlers`` of the API.
EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
