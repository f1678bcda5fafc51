"""The web page: ``/`` (index.html), ``/static/...``, and ``/config``, the settings the
page reads (development mode, token lifetime, whether this server keeps a history: the
page asks the history routes for a card's details only then)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["ROUTES", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent.parent / "static"


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def config(request: Request) -> Response:
    s = request.app.state
    return JSONResponse({"dev": s.dev, "token_ttl": s.token_ttl,
                         "history": getattr(s, "history", None) is not None})


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/config", config, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
