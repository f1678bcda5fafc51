"""``aiecs serve``: the progress server (Socket.IO, task API, web page) under uvicorn."""

from __future__ import annotations

import logging
from typing import Any

import click
from aiecs_core import ConfigurationError

from ..ops.logs import json_formatter, json_mode
from ..server.settings import load_server_settings
from .common import fail

__all__ = ["serve"]


@click.command()
@click.option("--host", default=None, help="Interface to bind (default AIECS_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default AIECS_PORT, 8000).")
@click.option("--dev", is_flag=True, help="Development mode (throwaway secret, /dev/token).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str | None, port: int | None, dev: bool, log_level: str) -> None:
    """Run the progress server: Socket.IO, task API and web page."""
    # the server stack is imported when it is run, not by every `aiecs` command
    import uvicorn

    from ..server.factory import create_app

    overrides: dict[str, Any] = {}
    if dev:
        overrides["aiecs_dev"] = True
    try:
        settings = load_server_settings(**overrides)
        host = host or settings.aiecs_host
        port = port or settings.aiecs_port
        app = create_app(settings, port=port)
    except ConfigurationError as exc:
        fail(str(exc), 2)
    _configure_logging(log_level)
    if settings.aiecs_dev:
        click.echo("aiecs: DEVELOPMENT MODE: anyone who can reach this server can get a token",
                   err=True)
    # JSON logs: uvicorn's loggers write through the root logger's JSON handler
    extra: dict[str, Any] = {"log_config": None} if json_mode() else {}
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False,
                ws_max_size=max(settings.aiecs_max_message_bytes, 64 * 1024), **extra)


class _Formatter:
    """Adds the ``redis_exception`` detail python-socketio passes in ``extra`` (the default
    format would drop the reason a Redis operation failed)."""

    def __init__(self):
        self.base = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def format(self, record) -> str:
        text = self.base.format(record)
        detail = getattr(record, "redis_exception", None)
        return f"{text} ({detail})" if detail else text


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if json_mode() else _Formatter())  # type: ignore[arg-type]
    logging.basicConfig(level=level.upper(), handlers=[handler])
