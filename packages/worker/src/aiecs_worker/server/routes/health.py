"""``/healthz`` (Redis and the pub/sub listener) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...ops.metrics_http import metrics_endpoint

__all__ = ["ROUTES"]


async def healthz(request: Request) -> Response:
    health = request.app.state.socket.health()
    ok = health["redis"] and health["pubsub_listener"]
    return JSONResponse({"status": "ok" if ok else "degraded", **health},
                        status_code=200 if ok else 503)


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
