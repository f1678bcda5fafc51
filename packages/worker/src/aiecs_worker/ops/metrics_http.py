"""Serving the metrics of :mod:`aiecs_worker.ops.metrics`: every process of a worker, one page.

- A worker serves ``/metrics`` on ``AIECS_METRICS_PORT`` (unset: off) and
  ``AIECS_METRICS_HOST``. Its processes (the prefork pool's children, or the one process of
  an in-process pool) write their values to files in ``PROMETHEUS_MULTIPROC_DIR``
  (prometheus_client's multi-process mode); the main process serves their sum. Without
  the variable the worker makes a private directory and removes it when it stops.
- ``aiecs worker --processes N`` with ``AIECS_METRICS_PORT``: the N workers share one
  directory and the supervising command serves it, so a host (a pod) is one scrape target.
- The progress server serves ``/metrics`` on its own port (:func:`metrics_endpoint`).

A process that died (a prefork child replaced, a worker restarted) leaves its counters in
the sum (they do not go back) and its gauges out of it: its files are marked dead when
the child exits and, for one killed outright, when the next scrape finds it gone.
``aiecs_process_resident_memory_bytes{pid}`` reports each live process's memory (Linux).

A worker's page (not the progress server's) also carries the gauges its scrape collectors
read then (:func:`scrape_collector`; :mod:`aiecs_worker.store.gauges` registers the queue
depths, ``aiecs:pending``, the dead letters and Redis availability).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from typing import Any

from celery import signals

from ..settings import get_settings
from . import metrics

__all__ = ["exposition", "metrics_endpoint", "prepare_dir", "scrape_collector", "serve"]

log = logging.getLogger("aiecs.metrics")
#: Not a setting of ours (so read from os.environ here, not aiecs_worker.settings):
#: prometheus_client reads it itself, and a worker sets it for its pool's children.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID_FILE = re.compile(r"_(\d+)\.db$")
#: the directory this process made (and removes at shutdown)
_private_dir: str | None = None
#: collectors computed when a worker's page is scraped (see :func:`scrape_collector`)
_scrape_collectors: list[Any] = []


def scrape_collector(collector: Any) -> Any:
    """Add a prometheus_client collector to every worker's metrics page (one computed at
    scrape time; a higher layer registers it, this module does not import it)."""
    _scrape_collectors.append(collector)
    return collector


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids(path: str) -> set[int]:
    return {int(m.group(1)) for f in os.listdir(path) if (m := _PID_FILE.search(f))}


class _ProcessCollector:
    """Marks dead processes' gauges dead, then reports each live process's memory."""

    def __init__(self, path: str | None):
        self.path = path

    def collect(self):
        # prometheus_client on first use (see aiecs_worker.ops.metrics)
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.multiprocess import mark_process_dead

        pids = {os.getpid()}
        if self.path:
            pids = set()
            for pid in _pids(self.path):
                if _alive(pid):
                    pids.add(pid)
                else:
                    mark_process_dead(pid, self.path)
        family = GaugeMetricFamily("aiecs_process_resident_memory_bytes",
                                   "Resident memory of each live process", labels=["pid"])
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        for pid in sorted(pids):
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{pid}/statm") as f:
                family.add_metric([str(pid)], int(f.read().split()[1]) * page)
        yield family


def exposition(path: str | None = None, *, scraped: bool = False) -> tuple[bytes, str]:
    """The metrics page (body, content type): the sum over ``path`` (default
    ``PROMETHEUS_MULTIPROC_DIR``), or this process's own values when there is none;
    ``scraped``: with the gauges of :func:`scrape_collector` (a worker's page)."""
    # prometheus_client on first use (see aiecs_worker.ops.metrics)
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    path = path or os.environ.get(MULTIPROC_ENV)
    registry = CollectorRegistry()
    registry.register(_ProcessCollector(path))  # first: sweeps the dead before the sum
    if path:
        MultiProcessCollector(registry, path=path)
    else:
        for metric in metrics.load().objects.values():
            registry.register(metric)
    if scraped:
        for collector in _scrape_collectors:
            registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(port: int, host: str, path: str | None = None) -> int:
    """Serve a worker's :func:`exposition` (with its scrape-time gauges) on
    ``http://host:port/metrics`` from a daemon thread; returns the port (``0`` picks a
    free one)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body, ctype = exposition(path, scraped=True)
            except Exception:  # noqa: BLE001 - a scrape must not kill the thread
                log.exception("metrics exposition failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="aiecs-metrics", daemon=True).start()
    return server.server_address[1]


def prepare_dir() -> tuple[str, bool]:
    """``PROMETHEUS_MULTIPROC_DIR``, made (private, empty) and exported when unset:
    (path, made here)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        return path, False
    path = tempfile.mkdtemp(prefix="aiecs-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path, True


async def metrics_endpoint(request: Any) -> Any:
    """The progress server's ``GET /metrics`` (Starlette)."""
    # starlette: the progress server's stack, not imported by a worker
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response

    body, ctype = await run_in_threadpool(exposition)
    return Response(body, media_type=ctype.split(";")[0],
                    headers={"Content-Type": ctype})


# -- the worker -------------------------------------------------------------------------------
def _load_worker(conf: Any) -> None:
    """The worker's metrics, its queues' executions pre-set to 0."""
    queues = [q.name for q in (getattr(conf, "task_queues", None) or ())]
    try:
        metrics.load("worker", queues=queues)
    except Exception:  # noqa: BLE001 - metrics must never stop the worker
        log.exception("metrics not loaded")


@signals.celeryd_after_setup.connect
def _on_worker_setup(conf: Any = None, **_: Any) -> None:
    """Before the pool starts (and once logging is set up): load the metrics (the pool's
    children inherit them) and serve."""
    global _private_dir
    s = get_settings()
    if s.aiecs_metrics_port is None:
        if os.environ.get(MULTIPROC_ENV):  # a process of `aiecs worker -p N`: record only
            _load_worker(conf)
        return
    path, made = prepare_dir()
    _private_dir = path if made else None
    _load_worker(conf)
    try:
        port = serve(s.aiecs_metrics_port, s.aiecs_metrics_host, path)
    except OSError as exc:
        log.error("metrics not served: cannot listen on %s:%s (AIECS_METRICS_PORT): %s",
                  s.aiecs_metrics_host, s.aiecs_metrics_port, exc)
        return
    where = f"metrics served on http://{s.aiecs_metrics_host}:{port}/metrics"
    if log.isEnabledFor(logging.INFO):
        log.info(where)
    else:  # Celery's default level (WARNING) hides INFO: where metrics are is never hidden
        # (AIECS_METRICS_PORT=0 picks the port), so it is printed as Celery's banner is
        from .logs import json_line, json_mode

        print(json_line(where, log.name) if json_mode() else f"aiecs worker: {where}",
              file=sys.stderr, flush=True)


@signals.worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    """A prefork child leaves: its gauges leave the sum."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and metrics.loaded():  # (loaded: prometheus_client is imported already)
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(os.getpid(), path)


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _private_dir is not None:
        shutil.rmtree(_private_dir, ignore_errors=True)
