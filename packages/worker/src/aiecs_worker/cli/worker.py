"""``aiecs worker --processes N``: N Celery workers on one host, one event loop each.

One worker process runs every provider call of its pool on one event loop thread, and the
GIL keeps that loop on one core; AI calls are I/O-bound, so a host runs one asyncio-pool
worker per core (bench: 2 processes on 2 cores, 192 chat tasks/s against 128 for one).
This starts them as one command and keeps them running: a worker that exits is started
again (after a back-off when it keeps dying); SIGTERM or SIGINT stops them all (warm
shutdown: running tasks finish) and the command exits when they have.

With ``AIECS_METRICS_PORT`` set, the workers write their metrics to one shared
``PROMETHEUS_MULTIPROC_DIR`` and this command serves their sum on that port (see
:mod:`aiecs_worker.ops.metrics_http`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from ..ops.logs import json_line, json_mode
from ..settings import get_settings
from .common import fail

__all__ = ["Supervisor", "default_processes", "worker"]

CELERY = str(Path(sys.executable).with_name("celery"))
#: ``--pool asyncio``: Celery's custom pool (``--pool custom``) naming this class
#: (see aiecs_worker.runner.aiopool; a string: this module must not import Celery).
ASYNCIO_POOL = "aiecs_worker.runner.aiopool:TaskPool"
CUSTOM_POOL_ENV = "CELERY_CUSTOM_WORKER_POOL"


def celery_pool_args(celery_args: Sequence[str]) -> tuple[list[str], bool]:
    """``celery_args`` with ``--pool asyncio`` (``--pool=asyncio``, ``-P asyncio``,
    ``-Pasyncio``) made Celery's ``--pool custom``; and whether it was there."""
    out: list[str] = []
    found = False
    args = list(celery_args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--pool", "-P") and i + 1 < len(args) and args[i + 1] == "asyncio":
            out += [arg, "custom"]
            found = True
            i += 2
            continue
        if arg in ("--pool=asyncio", "-Pasyncio", "-P=asyncio"):
            out.append("--pool=custom")
            found = True
        else:
            out.append(arg)
        i += 1
    return out, found


class Supervisor:
    """Starts ``processes`` workers with ``celery_args`` and keeps them running."""

    def __init__(self, processes: int, celery_args: Sequence[str], *,
                 echo: Callable[[str], None] = print, name: str = "aiecs"):
        self.processes = processes
        self.celery_args = list(celery_args)
        self.echo = echo
        self.name = name
        self.procs: list[subprocess.Popen | None] = [None] * processes
        self.started_at = [0.0] * processes
        self._stopping = False
        self.env: dict[str, str] | None = None  # the workers' environment (None: ours)

    def command(self, index: int) -> list[str]:
        return [CELERY, "-A", "aiecs_worker", "worker", *self.celery_args,
                "--hostname", f"{self.name}{index + 1}@%h"]

    def _start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(self.command(index), env=self.env)
        self.started_at[index] = time.monotonic()
        self.echo(f"aiecs worker: started worker {index + 1} (pid {self.procs[index].pid})")

    def _stop(self, signum: int, _frame=None) -> None:
        self._stopping = True
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)

    def _serve_metrics(self) -> Callable[[], None]:
        """Serve the workers' summed metrics here; returns the clean-up."""
        # deferred: metrics_http brings Celery and prometheus_client, which only a
        # supervisor serving metrics needs (every `aiecs` command imports this module)
        from ..ops.metrics_http import prepare_dir, serve

        s = get_settings()
        if s.aiecs_metrics_port is None:
            return lambda: None
        path, made = prepare_dir()
        # the children's environment (not a setting read): ours, without the port we serve
        self.env = {k: v for k, v in os.environ.items() if k.upper() != "AIECS_METRICS_PORT"}
        try:
            port = serve(s.aiecs_metrics_port, s.aiecs_metrics_host, path)
        except OSError as exc:
            raise SystemExit(f"aiecs worker: cannot serve metrics on {s.aiecs_metrics_host}:"
                             f"{s.aiecs_metrics_port} (AIECS_METRICS_PORT): {exc}") from None
        self.echo(f"aiecs worker: metrics on http://{s.aiecs_metrics_host}:{port}/metrics")
        return (lambda: shutil.rmtree(path, ignore_errors=True)) if made else (lambda: None)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cleanup = self._serve_metrics()
        try:
            return self._run()
        finally:
            cleanup()

    def _run(self) -> int:
        for i in range(self.processes):
            self._start(i)
        while True:
            for i, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                if self._stopping:
                    continue
                lived = time.monotonic() - self.started_at[i]
                self.echo(f"aiecs worker: worker {i + 1} exited with {proc.returncode}"
                          f" after {lived:.0f}s; starting it again")
                if lived < 10:
                    time.sleep(min(10.0, 10 - lived))  # a worker that keeps dying
                self._start(i)
            if self._stopping and all(p is None or p.poll() is not None for p in self.procs):
                return 0
            time.sleep(0.2)


def default_processes() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--processes", "-p", type=int, default=None,
              help="Worker processes (default: one per CPU core).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, celery_args: tuple[str, ...]) -> None:
    """Run N Celery workers, one event loop each (the recommended deployment for AI calls).

    Arguments after the options go to each ``celery worker``, e.g.
    ``aiecs worker -p 2 -- -Q fast_tasks --pool asyncio --concurrency 200`` (the
    recommended pool: the aiecs queues consumed on each worker's event loop, README
    "Worker pools"); it is Celery's ``--pool custom`` with
    ``CELERY_CUSTOM_WORKER_POOL=aiecs_worker.runner.aiopool:TaskPool``.
    A worker that exits is started again; SIGTERM / Ctrl-C stops them all.
    """
    n = processes or default_processes()
    if n < 1:
        fail("--processes must be at least 1", 2)
    args, asyncio_pool = celery_pool_args(celery_args)
    if asyncio_pool:  # read by Celery's command line in each worker, before the app
        os.environ[CUSTOM_POOL_ENV] = ASYNCIO_POOL
    echo = (lambda text: click.echo(json_line(text, "aiecs.supervise"))) if json_mode() \
        else click.echo
    raise SystemExit(Supervisor(n, args, echo=echo).run())
