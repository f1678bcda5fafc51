"""The progress server: Socket.IO (live events, replay), the task API and the web page.

One ASGI application, served by ``aiecs serve`` or ``uvicorn aiecs_worker.server:app``::

    /socket.io/        Socket.IO (python-socketio, AsyncRedisManager on the worker's Redis)
    /                  the web page (static files under /static)
    /tasks, /tasks/ID  the task API          /services  the registry listing
    /healthz           Redis and pub/sub listener health      /config  page settings
    /metrics           Prometheus metrics (aiecs_worker.ops.metrics)
    /templates         the templates API (docs/templates.md)
    /dev/token         dev mode only: a token for any user id

``app`` is built on first access from the environment (see :mod:`.settings`), so importing
this package for :func:`issue_token` needs no configuration.

Modules: :mod:`.factory` builds the application; :mod:`.errors` holds the errors and the
one error -> HTTP status map; :mod:`.params` and :mod:`.bodies` read requests;
:mod:`.middleware` and :mod:`.revocation` guard them; :mod:`.routes` has one module per
resource; :mod:`.realtime` (with :mod:`.replay`, :mod:`.sio_guard`, :mod:`.pubsub`,
:mod:`.admission`) is the Socket.IO side; :mod:`.tokens` and :mod:`.settings` are shared
with the CLI.
"""

from __future__ import annotations

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

_app = None


def __getattr__(name: str) -> Any:
    # the factory is imported on first use: it brings Starlette, Socket.IO and the task
    # API, which ``issue_token`` (the CLI's ``aiecs token``) does not need
    global _app
    if name == "create_app":
        from .factory import create_app

        return create_app
    if name == "app":
        from .factory import create_app

        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
