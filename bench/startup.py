"""Scenario 5: start-up.

``worker start → first ping``: from spawning ``celery worker`` (threads -c8, fresh Redis)
to its first reply to ``celery inspect ping`` (``app.control.ping``, polled every 0.1 s).
``import``: seconds to import a module in a fresh interpreter (``time.perf_counter``
around the import, interpreter start-up excluded), median of ``imports`` runs each.
"""

from __future__ import annotations

import statistics
import subprocess

from .procs import AIECS_APP, ANCHOR_APP, PY, Redis, Worker, base_env, wait_ready

IMPORTS = {"aiecs_core": ("aiecs_core", "pydantic, pluggy"),
           "aiecs_worker": ("aiecs_worker", "celery, kombu.transport.redis, socketio")}


def _first_ping(app: str) -> dict:
    redis = Redis().start()
    worker = Worker(app, redis.url, "threads", 8).start()
    try:
        return {"seconds": wait_ready(redis.url, [worker], timeout=120)}
    finally:
        worker.close()
        redis.close()


def import_seconds(modules: str) -> float:
    code = ("import time; t = time.perf_counter(); import " + modules
            + "; print(time.perf_counter() - t)")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True,
                         env=base_env())
    return float(out.stdout.strip())


def startup(p: dict, alternate) -> dict:
    out = {"worker start → first ping": alternate({
        "aiecs": lambda: _first_ping(AIECS_APP),
        "anchor": lambda: _first_ping(ANCHOR_APP),
    }, repeats=p["startup_repeats"])}
    for name, (mine, anchor) in IMPORTS.items():
        out[f"import {name}"] = alternate({
            "aiecs": lambda m=mine: {"seconds": statistics.median(
                import_seconds(m) for _ in range(p["imports"]))},
            "anchor": lambda m=anchor: {"seconds": statistics.median(
                import_seconds(m) for _ in range(p["imports"]))},
        })
    return out
