"""The HTTP side of the progress server: task API, service listing, health, the page.

Every error is JSON, ``{"error": {"type": ..., "message": ...}}``, with the status code
that says what went wrong (never a traceback):

======  ==========================================================================
400     the body is not JSON, is nested deeper than 64 levels (``MAX_JSON_DEPTH``),
        or a parameter is malformed
401     missing, malformed, wrongly signed or expired token (``WWW-Authenticate``)
403     a browser request from an origin not in CORS_ALLOWED_ORIGINS
404     unknown route, or no such task *for this user* (other users' tasks are
        indistinguishable from missing ones)
409     the execution already exists (submit) or already finished (cancel), or the
        task already has a schedule
413     the body is larger than AIECS_MAX_PAYLOAD_BYTES allows
422     the body does not validate: request model, unknown service or operation, or
        input rejected by the operation's input model; or a per-user limit the request
        can never meet (``QuotaExceededError``, e.g. AIECS_MAX_STEPS_PER_TASK)
429     a per-user quota (``QuotaExceededError``: submissions per second, executions or
        batches in flight, schedules), with ``Retry-After`` in seconds; the message
        names the limit and its setting (docs/security.md, "Quotas per user")
503     Redis or the broker is unreachable
======  ==========================================================================

A body's size is checked before it is read in full and its nesting before it is parsed
(:mod:`aiecs_core.jsonlimits`), so no input reaches a recursive parser unbounded. Each
400/413/422 is logged as one line (``aiecs.server``, INFO), never with a traceback.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiecs_core import (
    ID_PATTERN,
    TERMINAL_STATUSES,
    AiecsError,
    PayloadTooLargeError,
    QuotaExceededError,
    TaskRequest,
    jsonlimits,
    load_plugins,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..events import TaskKeys
from ..metrics_http import metrics_endpoint
from ..quotas import retry_after_header
from ..runtime import check_payload_size
from ..workflows.batch import BatchItem
from .revocation import RevocationGate
from .tokens import TokenError, issue_token, verify_token

__all__ = ["ApiError", "create_http_app"]

log = logging.getLogger("aiecs.server")
STATIC_DIR = Path(__file__).parent / "static"
_TERMINAL = {s.value for s in TERMINAL_STATUSES}
_ENVELOPE_BYTES = 64 * 1024  # room for the body's own fields around input_data + context
MAX_DELAY = 30 * 86400  # seconds: the furthest ahead a submission's countdown / eta may be
#: Steps ``GET /tasks/{id}`` lists by default (the newest; ``?steps=`` up to
#: :data:`MAX_VIEW_STEPS`, ``?step=`` for one older step).
VIEW_STEPS = 100
MAX_VIEW_STEPS = 1000

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message"}}`` with ``status``."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers
        self.extra = extra


def error_response(status: int, type_: str, message: str, headers: dict | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- request bodies -------------------------------------------------------------------------
class OperationBody(BatchItem):
    """What to run: a TaskRequest without ``user_id`` (the token says who) and ``step``,
    plus ``heavy`` to override the operation's queue (a batch item), and the task id."""

    task_id: str | None = None


class SubmitBody(OperationBody):
    """``POST /tasks``: what to run, which step, and not before when."""

    step: int | None = None
    countdown: float | None = Field(default=None, ge=0, le=MAX_DELAY)
    """Run no earlier than this many seconds from now (PENDING until then)."""
    eta: AwareDatetime | None = None
    """Run no earlier than this time (ISO 8601 with a timezone)."""


class DevTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=ID_PATTERN)
    ttl: int | None = Field(default=None, gt=0, le=7 * 86400)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than ``limit`` bytes before reading them."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if len(length) > 18 or int(length) > limit:
            raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    if not body:
        raise ApiError(400, "bad_request", "empty body: send a JSON object")
    try:
        return jsonlimits.loads(body, what="body")
    except jsonlimits.JsonDepthError as exc:
        raise ApiError(400, "bad_request", str(exc), limit=exc.limit) from None
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"body is not valid JSON: {exc}") from None


def authenticate(request: Request) -> str:
    """The user id of the request's bearer token, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing token: send Authorization: Bearer TOKEN",
                       headers={"WWW-Authenticate": 'Bearer realm="aiecs"'})
    try:
        return verify_token(token.strip(), request.app.state.secret,
                            max_lifetime=request.app.state.token_max_lifetime).user_id
    except TokenError as exc:
        raise ApiError(401, "unauthorized", str(exc),
                       headers={"WWW-Authenticate": 'Bearer realm="aiecs", error="invalid_token"'}
                       ) from None


def _task_id(raw: str) -> str:
    import re

    if not re.fullmatch(ID_PATTERN, raw):
        raise ApiError(400, "bad_request", f"invalid task_id (must match {ID_PATTERN})")
    return raw


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_request", f"{name} must be between {lo} and {hi}")
    return value


def _unavailable(exc: Exception) -> ApiError:
    log.warning("backend unavailable: %s: %s", type(exc).__name__, exc)
    return ApiError(503, "unavailable", "Redis or the task broker is unreachable; retry shortly")


def _is_backend_error(exc: BaseException | None) -> bool:
    """A Redis/broker outage, directly or as the cause of what Celery raised (its result
    consumer wraps a failed reconnect in a bare ``RuntimeError``)."""
    import redis
    from kombu.exceptions import OperationalError

    outage = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              OperationalError, ConnectionError, TimeoutError)
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, outage):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# -- handlers ---------------------------------------------------------------------------------
async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def config(request: Request) -> Response:
    s = request.app.state
    return JSONResponse({"dev": s.dev, "token_ttl": s.token_ttl})


async def healthz(request: Request) -> Response:
    health = request.app.state.socket.health()
    ok = health["redis"] and health["pubsub_listener"]
    return JSONResponse({"status": "ok" if ok else "degraded", **health},
                        status_code=200 if ok else 503)


async def services(request: Request) -> Response:
    listing = await run_in_threadpool(lambda: load_plugins().listing())
    return JSONResponse(listing)


async def dev_token(request: Request) -> Response:
    body = await read_json(request, 4096)
    try:
        data = DevTokenBody.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from None
    s = request.app.state
    ttl = data.ttl or s.token_ttl
    if ttl > s.token_max_lifetime:
        raise ApiError(422, "invalid_request",
                       f"ttl: longer than AIECS_TOKEN_MAX_LIFETIME ({s.token_max_lifetime} s)")
    token = issue_token(data.user_id, s.secret, ttl)
    return JSONResponse({"user_id": data.user_id, "token": token, "ttl": ttl})


async def submit_task(request: Request) -> Response:
    from .. import control

    user_id = authenticate(request)
    s = request.app.state
    body = await read_json(request, s.max_payload_bytes + _ENVELOPE_BYTES)
    if isinstance(body, dict) and "user_id" in body:
        raise ApiError(422, "invalid_request",
                       "user_id is taken from the token; remove it from the body")
    try:
        data = SubmitBody.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from None
    if data.eta is not None and (data.countdown is not None
                                 or data.eta.timestamp() > time.time() + MAX_DELAY):
        raise ApiError(422, "invalid_request", "give eta or countdown, not both, at most "
                       f"{MAX_DELAY // 86400} days ahead")
    task_id = data.task_id or uuid.uuid4().hex
    try:
        request_model = TaskRequest(
            task_name=data.task_name, user_id=user_id, task_id=task_id,
            step=data.step if data.step is not None else 0,
            mode=data.mode, service=data.service,
            input_data=data.input_data, context=data.context,
        )
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from None

    def work() -> dict[str, Any]:
        step = data.step
        existing = control.task_steps(user_id, task_id) if data.task_id else []
        if step is None:
            step = max(existing, default=0) + 1
        elif step in existing:
            prior = control.get_state(user_id, task_id, step)["steps"].get(step) or {}
            raise ApiError(409, "conflict",
                           f"task {task_id!r} step {step} was already submitted "
                           f"(status {prior.get('status')})")
        req = request_model.model_copy(update={"step": step})
        check_payload_size({"input_data": req.input_data, "context": req.context},
                           s.max_payload_bytes)
        spec = load_plugins().operation(req.mode, req.service, req.task_name)
        heavy = spec.heavy if data.heavy is None else data.heavy
        eta = data.eta
        if data.countdown is not None:
            eta = datetime.now(UTC) + timedelta(seconds=data.countdown)
        control.submit(req, heavy=heavy, eta=eta)
        out = {"task_id": task_id, "step": step, "status": "pending",
               "queue": "heavy_tasks" if heavy else "fast_tasks"}
        if eta is not None:
            out["eta"] = eta.timestamp()
        return out

    return JSONResponse(await run_checked(work), status_code=202)


async def run_checked(work: Any) -> Any:
    """``work()`` in a thread: an aiecs error becomes a 422 (413 for a payload too large:
    unknown service or operation, input refused by its model, ...), a Redis or broker
    outage a 503."""
    try:
        return await run_in_threadpool(work)
    except ApiError:
        raise
    except PayloadTooLargeError as exc:
        raise ApiError(413, "payload_too_large", exc.message) from None
    except QuotaExceededError as exc:
        raise quota_error(exc) from None
    except AiecsError as exc:  # ServiceNotFoundError, InputValidationError, ...
        raise ApiError(422, type(exc).__name__, exc.message) from None
    except Exception as exc:
        if _is_backend_error(exc):
            raise _unavailable(exc) from None
        raise


def quota_error(exc: QuotaExceededError) -> ApiError:
    """429 with ``Retry-After`` for a quota that frees up, else 422; the body names the
    limit and its setting."""
    extra = {"limit": exc.limit, "setting": exc.setting}
    if exc.retry_after is None:
        return ApiError(422, "QuotaExceededError", exc.message, **extra)
    header = retry_after_header(exc.retry_after)
    return ApiError(429, "QuotaExceededError", exc.message, {"Retry-After": header},
                    retry_after=int(header), **extra)


async def _task_view(request: Request, user_id: str, task_id: str, step: int | None,
                     n_events: int, n_steps: int = VIEW_STEPS) -> dict[str, Any]:
    from .. import control

    state = await run_in_threadpool(
        lambda: control.get_state(user_id, task_id, step, newest=n_steps))
    raw = await request.app.state.socket.redis.xrevrange(
        TaskKeys(user_id, task_id).log, count=n_events
    ) if n_events else []
    events = [json.loads(fields[b"e"]) for _, fields in reversed(raw)]
    steps = [_step_view(int(k), v)
             for k, v in sorted(state["steps"].items(), key=lambda kv: int(kv[0]))]
    if not steps and not events:
        raise ApiError(404, "not_found", f"no task {task_id!r}")
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
    task_id = _task_id(request.path_params["task_id"])
    step = _int_param(request, "step", None, 0, 2**31)
    n_events = _int_param(request, "events", 20, 0, 1000)
    n_steps = _int_param(request, "steps", VIEW_STEPS, 1, MAX_VIEW_STEPS)
    try:
        view = await _task_view(request, user_id, task_id, step, n_events, n_steps)
    except ApiError:
        raise
    except Exception as exc:
        if _is_backend_error(exc):
            raise _unavailable(exc) from None
        raise
    return JSONResponse(view)


async def cancel_task(request: Request) -> Response:
    from .. import control

    user_id = authenticate(request)
    task_id = _task_id(request.path_params["task_id"])
    step = _int_param(request, "step", None, 0, 2**31)

    def work() -> dict[str, Any]:
        steps = control.get_state(user_id, task_id, step)["steps"]
        if not steps:
            raise ApiError(404, "not_found",
                           f"no task {task_id!r}" + (f" step {step}" if step is not None else ""))
        live = [int(k) for k, v in steps.items() if v.get("status") not in _TERMINAL]
        if not live:
            statuses = ", ".join(f"step {k}: {v.get('status')}" for k, v in steps.items())
            raise ApiError(409, "already_finished", f"nothing to cancel ({statuses})")
        cancelled = [st for st in sorted(live) if control.cancel(user_id, task_id, st)]
        if not cancelled:
            raise ApiError(409, "already_finished", "the task finished meanwhile")
        return {"task_id": task_id, "cancelling": cancelled}

    try:
        out = await run_in_threadpool(work)
    except ApiError:
        raise
    except Exception as exc:
        if _is_backend_error(exc):
            raise _unavailable(exc) from None
        raise
    return JSONResponse(out, status_code=202)


# -- errors and middleware --------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status in (400, 413, 422, 429):
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


class OriginGuard:
    """Refuse (403) any HTTP request that carries an Origin not explicitly allowed.

    CORS headers only stop a browser from *reading* a response; a cross-site POST or
    DELETE would still run. Requests without Origin (curl, the CLI) are not browsers'
    cross-site requests and pass.
    """

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
            if origin is not None and origin.decode("latin-1") not in self.allowed:
                response = error_response(
                    403, "forbidden_origin",
                    f"origin {origin.decode('latin-1')!r} is not allowed "
                    "(add it to CORS_ALLOWED_ORIGINS)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_http_app(*, allowed_origins: list[str], dev: bool, lifespan=None) -> Starlette:
    from . import groups
    from .schedules_api import ROUTES as schedule_routes

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/config", config, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/services", services, methods=["GET"]),
        Route("/tasks", submit_task, methods=["POST"]),
        Route("/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/tasks/{task_id}", cancel_task, methods=["DELETE"]),
        *schedule_routes,
        *groups.routes,  # /batches, /workflows
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if dev:
        routes.append(Route("/dev/token", dev_token, methods=["POST"]))
    middleware = [
        Middleware(OriginGuard, allowed=allowed_origins),
        Middleware(
            CORSMiddleware,
            allow_origins=allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        ),
        Middleware(SecurityHeaders),
        Middleware(RevocationGate),  # revoked tokens: 401 before any route
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
