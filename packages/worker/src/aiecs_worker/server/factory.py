"""The application factories: :func:`create_http_app` (Starlette: routes, middleware, the
error handlers) and :func:`create_app` (Socket.IO in front of it, with the lifespan).

(Not named ``app.py``: a submodule of that name would shadow the package's ``app``
attribute, the ASGI application ``aiecs_worker.server:app``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import socketio
from aiecs_core import load_plugins, register_secret
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..history.database import HistoryDatabase
from ..history.templates import publish_plugin_templates
from ..ops import metrics, tracing
from ..ops.logs import install as install_json_logs
from ..ops.redaction import install as install_redaction
from ..routing import FAST_QUEUE, HEAVY_QUEUE
from ..settings import get_settings
from .errors import EXCEPTION_HANDLERS
from .middleware import OriginGuard, SecurityHeaders
from .realtime import ProgressSocket
from .revocation import RevocationGate
from .routes import (
    budgets,
    dev,
    groups,
    health,
    history,
    pages,
    schedules,
    services,
    tasks,
    templates,
)
from .settings import ServerSettings, get_server_settings

__all__ = ["create_app", "create_http_app"]

log = logging.getLogger("aiecs.server")


def create_http_app(*, allowed_origins: list[str], dev_mode: bool, lifespan=None) -> Starlette:
    """The HTTP API and the page (``dev_mode`` adds ``POST /dev/token``)."""
    routes = [
        *health.ROUTES,  # /healthz, /metrics
        *services.ROUTES,
        *tasks.ROUTES,
        *schedules.ROUTES,
        *groups.ROUTES,  # /batches, /workflows
        *budgets.ROUTES,  # /budget, /budgets/{user}
        *history.ROUTES,  # /executions, /usage, /users/{user}/history
        *templates.ROUTES,  # /templates
        *pages.ROUTES,  # /, /config, /static
        *(dev.ROUTES if dev_mode else []),
    ]
    middleware = [
        Middleware(tracing.TracingMiddleware),  # AIECS_TRACING: a span per request
        Middleware(OriginGuard, allowed=allowed_origins),
        Middleware(
            CORSMiddleware,
            allow_origins=allowed_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        ),
        Middleware(SecurityHeaders),
        Middleware(RevocationGate),  # revoked tokens: 401 before any route
    ]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)


def create_app(settings: ServerSettings | None = None, *, worker_settings: Any = None,
               port: int | None = None):
    """The ASGI application: Socket.IO in front, the Starlette app for everything else.

    ``port`` is the port the server will listen on, to allow the page's own origin
    (default AIECS_PORT).
    """
    settings = settings or get_server_settings()
    worker_settings = worker_settings or get_settings()
    # now, not on the event loop at the first count
    metrics.load("server", queues=(FAST_QUEUE, HEAVY_QUEUE))
    secret = settings.secret()
    origins = settings.allowed_origins(port)
    socket = ProgressSocket(
        secret=secret,
        redis_url=worker_settings.redis_target(worker_settings.state_redis_url),
        channel=worker_settings.aiecs_socketio_channel,
        allowed_origins=origins,
        max_message_bytes=settings.aiecs_max_message_bytes,
        health_interval=settings.aiecs_health_interval,
        limits=settings.replay_limits(),
        socket_limits=settings.socket_limits(),
        max_token_lifetime=settings.aiecs_token_max_lifetime,
        revocation_poll=settings.aiecs_revocation_poll,
    )
    database = HistoryDatabase(worker_settings.database_url,
                               timeout=worker_settings.aiecs_database_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        register_secret(secret)  # also a dev mode's generated one
        install_redaction()  # now that uvicorn has set up its loggers
        install_json_logs()  # AIECS_LOG_FORMAT=json
        tracing.setup("aiecs-server")  # AIECS_TRACING: the exporter, before the first request
        await socket.start()
        # the migrations, in the background: a database that is down delays no start
        # (the history routes answer 503 and the first query tries again)
        migrating = asyncio.get_running_loop().create_task(database.start())
        registry = await run_in_threadpool(load_plugins)
        for failure in registry.failures:
            log.warning("plugin %s not loaded: %s", failure.name, failure.reason)
        try:  # the plugins' templates, published by content hash (idempotent)
            for line in await run_in_threadpool(publish_plugin_templates, registry):
                log.info("%s", line)
        except Exception as exc:  # noqa: BLE001 - the server serves without them
            log.warning("plugin templates not published (history database: %s: %s)",
                        type(exc).__name__, exc)
        log.info("aiecs progress server ready (origins allowed: %s%s)", ", ".join(origins),
                 "; DEV MODE" if settings.aiecs_dev else "")
        try:
            yield
        finally:
            await socket.stop()
            migrating.cancel()
            database.close()
            tracing.shutdown()

    http = create_http_app(allowed_origins=origins, dev_mode=settings.aiecs_dev,
                           lifespan=lifespan)
    http.state.secret = secret
    http.state.socket = socket
    http.state.history = database
    http.state.dev = settings.aiecs_dev
    http.state.token_ttl = settings.aiecs_token_ttl
    http.state.token_max_lifetime = settings.aiecs_token_max_lifetime
    http.state.max_payload_bytes = worker_settings.aiecs_max_payload_bytes
    http.state.max_group_body_bytes = settings.aiecs_max_group_body_bytes
    asgi = socketio.ASGIApp(socket.sio, other_asgi_app=http)
    asgi.progress_socket = socket  # for tests and embedding
    return asgi
