"""Warm the enabled providers off the event loop as a worker process starts.

A provider's first call would otherwise import its SDK and build its client on the
process's event loop (importing openai takes about a second, google-genai several), and
every other execution of the process would stand still meanwhile. So each process that
runs tasks calls :meth:`aiecs_core.Service.warm` of every loaded service in a thread of
its own (``aiecs-warm``) as it starts: the threads/solo pool's process when the worker is
ready, each prefork child when it starts.

The worker is ready, answers pings and receives tasks at once (start-up is as fast as
without warming), but its first tasks start only once the warm-up is done (at most
:data:`WARM_WAIT` seconds): they wait in their pool thread (Celery's ``task_prerun``),
never on the loop, so no execution runs while an SDK is being imported. Imports hold the
GIL for long stretches (compiling a large module from source holds it for 100 ms and
more), which would show as pauses in the streams running meanwhile.

Which providers: those whose plugin is loaded (``AIECS_PLUGINS``) and that are configured
(each service's ``warm`` does nothing without its API key or project). ``AIECS_WARM=0``
turns warming off: tasks start at once and a provider's first call builds its client in
a thread (the providers' ``client()``), still off the loop, while other executions run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from aiecs_core import load_plugins
from celery import signals

from ..settings import load_settings

__all__ = ["WARM_ENV", "WARM_WAIT", "start_warming", "wait_warm", "warm_services"]

log = logging.getLogger("aiecs.worker")

#: Environment variable: ``0`` turns the warm-up off.
WARM_ENV = "AIECS_WARM"
#: Seconds the first tasks of a process wait, at most, for its warm-up.
WARM_WAIT = 30.0

#: Set while no warm-up is running in this process (the tasks' gate).
_warmed = threading.Event()
_warmed.set()


def _enabled() -> bool:
    return load_settings().aiecs_warm  # read as each process starts (tests change it)


def warm_services(registry: Any = None) -> dict[str, float]:
    """Warm every service of ``registry`` (default: the process's), one after another.

    Returns the seconds each took, by ``mode/service``. A failure is logged, never raised:
    the service's first call then fails (or succeeds) as it would have.
    """
    if registry is None:
        registry = load_plugins()
    took: dict[str, float] = {}
    for mode, service in registry.keys():
        started = time.perf_counter()
        try:
            registry.instance(mode, service).warm()
        except Exception as exc:  # noqa: BLE001 - a warm-up must never stop the worker
            log.warning("warming %s/%s failed (its first call will try again): %s: %s",
                        mode, service, type(exc).__name__, exc)
        took[f"{mode}/{service}"] = time.perf_counter() - started
    slow = {key: s for key, s in took.items() if s >= 0.01}
    if slow:
        log.info("providers warmed: %s", ", ".join(f"{k} {s:.2f}s" for k, s in slow.items()))
    return took


def start_warming(registry: Any = None) -> threading.Thread:
    """:func:`warm_services` in a daemon thread, started now; tasks of this process start
    once it is done (:func:`wait_warm`)."""
    _warmed.clear()

    def run() -> None:
        try:
            warm_services(registry)
        finally:
            _warmed.set()

    thread = threading.Thread(target=run, name="aiecs-warm", daemon=True)
    thread.start()
    return thread


def wait_warm(timeout: float = WARM_WAIT) -> bool:
    """Wait until this process's warm-up is done (at most ``timeout`` seconds); True if
    it is. Returns at once when none is running."""
    return _warmed.is_set() or _warmed.wait(timeout)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """A prefork child warms its own providers (clients are per process)."""
    if _enabled():
        start_warming()


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    """In-process pools (threads, solo) warm in the worker's process; not the prefork
    parent, which runs no task and must not hold threads when it forks."""
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" not in type(pool).__module__ and _enabled():
        start_warming()


@signals.task_prerun.connect
def _on_task_prerun(**_: Any) -> None:
    """A task starts once the warm-up is done (in its pool thread, not on the loop:
    ``--pool asyncio`` sends this signal on the loop, having waited in a thread before)."""
    if _warmed.is_set() or _on_loop():
        return
    if not _warmed.wait(WARM_WAIT):
        log.warning("the providers' warm-up takes over %.0fs; tasks start anyway", WARM_WAIT)


def _on_loop() -> bool:
    """Whether this thread runs an event loop (which must never block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
