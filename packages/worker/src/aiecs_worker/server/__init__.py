"""The progress server: Socket.IO (live events, replay), the task API and the web page.

One ASGI application, served by ``aiecs serve`` or ``uvicorn aiecs_worker.server:app``::

    /socket.io/        Socket.IO (python-socketio, AsyncRedisManager on the worker's Redis)
    /                  the web page (static files under /static)
    /tasks, /tasks/ID  the task API          /services  the registry listing
    /healthz           Redis and pub/sub listener health      /config  page settings
    /metrics           Prometheus metrics (aiecs_worker.metrics)
    /dev/token         dev mode only: a token for any user id

``app`` is built on first access from the environment (see :mod:`.settings`), so importing
this package for :func:`issue_token` needs no configuration.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from .settings import ServerSettings, get_server_settings, load_server_settings
from .tokens import Identity, TokenError, issue_token, verify_token

__all__ = [
    "Identity",
    "ServerSettings",
    "TokenError",
    "create_app",
    "get_server_settings",
    "issue_token",
    "load_server_settings",
    "verify_token",
]

log = logging.getLogger("aiecs.server")


def create_app(settings: ServerSettings | None = None, *, worker_settings: Any = None,
               port: int | None = None):
    """The ASGI application: Socket.IO in front, the Starlette app for everything else.

    ``port`` is the port the server will listen on, to allow the page's own origin
    (default AIECS_PORT).
    """
    import socketio
    from aiecs_core import load_plugins, register_secret

    from .. import metrics
    from ..settings import get_settings
    from .api import create_http_app
    from .realtime import ProgressSocket

    settings = settings or get_server_settings()
    worker_settings = worker_settings or get_settings()
    metrics.load()  # now, not on the event loop at the first count
    secret = settings.secret()
    origins = settings.allowed_origins(port)
    socket = ProgressSocket(
        secret=secret,
        redis_url=worker_settings.state_redis_url,
        channel=worker_settings.aiecs_socketio_channel,
        allowed_origins=origins,
        max_message_bytes=settings.aiecs_max_message_bytes,
        health_interval=settings.aiecs_health_interval,
        limits=settings.replay_limits(),
        socket_limits=settings.socket_limits(),
        max_token_lifetime=settings.aiecs_token_max_lifetime,
        revocation_poll=settings.aiecs_revocation_poll,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        from starlette.concurrency import run_in_threadpool

        from ..logs import install as install_json_logs
        from ..redaction import install as install_redaction

        register_secret(secret)  # also a dev mode's generated one
        install_redaction()  # now that uvicorn has set up its loggers
        install_json_logs()  # AIECS_LOG_FORMAT=json
        await socket.start()
        registry = await run_in_threadpool(load_plugins)
        for failure in registry.failures:
            log.warning("plugin %s not loaded: %s", failure.name, failure.reason)
        log.info("aiecs progress server ready (origins allowed: %s%s)", ", ".join(origins),
                 "; DEV MODE" if settings.aiecs_dev else "")
        try:
            yield
        finally:
            await socket.stop()

    http = create_http_app(allowed_origins=origins, dev=settings.aiecs_dev, lifespan=lifespan)
    http.state.secret = secret
    http.state.socket = socket
    http.state.dev = settings.aiecs_dev
    http.state.token_ttl = settings.aiecs_token_ttl
    http.state.token_max_lifetime = settings.aiecs_token_max_lifetime
    http.state.max_payload_bytes = worker_settings.aiecs_max_payload_bytes
    http.state.max_group_body_bytes = settings.aiecs_max_group_body_bytes
    asgi = socketio.ASGIApp(socket.sio, other_asgi_app=http)
    asgi.progress_socket = socket  # for tests and embedding
    return asgi


_app = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
