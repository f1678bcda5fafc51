"""``GET /services``: the registry listing (plugins, services, operations)."""

from __future__ import annotations

from aiecs_core import load_plugins
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ROUTES"]


async def services(request: Request) -> Response:
    listing = await run_in_threadpool(lambda: load_plugins().listing())
    return JSONResponse(listing)


ROUTES = [Route("/services", services, methods=["GET"])]
