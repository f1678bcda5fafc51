"""Scenario 5: start-up.

``worker start → first ping``: from spawning ``celery worker`` (threads -c8, fresh Redis)
to its first reply to ``celery inspect ping`` (``app.control.ping``, polled every 0.1 s).
Replies come in steps of about 0.5 s (1.03 s and 0.5 s are the usual values of either
worker), so a single run moves the ratio by 2×: read the median of several.
``worker start → first task done``: one no-op task is queued before the worker is
spawned (through the app's own ``delay``); the time from the spawn until its result is in
the result backend: start-up, provider warm-up and one execution, what a deployment
waits for before a new worker does work.
``import``: seconds to import a module in a fresh interpreter (``time.perf_counter``
around the import, interpreter start-up excluded), median of ``imports`` runs each.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

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


_QUEUE_ONE = """
import json, sys
from bench.submit import _task
task, mode, service, name, data = _task(sys.argv[1], "noop")
r = task.delay(task_name=name, user_id="u0", task_id="first1", step=1, mode=mode,
               service=service, input_data=data, context={})
print(json.dumps(r.id))
"""


def _first_task(app: str) -> dict:
    redis = Redis().start()
    try:
        which = "aiecs" if app == AIECS_APP else "anchor"
        out = subprocess.run([PY, "-c", _QUEUE_ONE, which], capture_output=True, text=True,
                             check=True, env=base_env(CELERY_BROKER_URL=redis.url,
                                                      REDIS_URL=redis.url))
        key = f"celery-task-meta-{json.loads(out.stdout.strip().splitlines()[-1])}"
        if which == "aiecs":  # Celery's result is read from the terminal record
            key = "aiecs:t:u0:first1:1:state"

        def done() -> bool:
            if which == "aiecs":
                return redis.client.hget(key, "status") == b"completed"
            return bool(redis.client.exists(key))

        worker = Worker(app, redis.url, "threads", 8).start()
        try:
            deadline = worker.started + 120
            while not done():
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no result from {app}:\n{worker.tail()}")
                time.sleep(0.005)
            return {"seconds": time.monotonic() - worker.started}
        finally:
            worker.close()
    finally:
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
    }, repeats=p["startup_repeats"]), "worker start → first task done": alternate({
        "aiecs": lambda: _first_task(AIECS_APP),
        "anchor": lambda: _first_task(ANCHOR_APP),
    }, repeats=p["startup_repeats"])}
    for name, (mine, anchor) in IMPORTS.items():
        out[f"import {name}"] = alternate({
            "aiecs": lambda m=mine: {"seconds": statistics.median(
                import_seconds(m) for _ in range(p["imports"]))},
            "anchor": lambda m=anchor: {"seconds": statistics.median(
                import_seconds(m) for _ in range(p["imports"]))},
        })
    return out
