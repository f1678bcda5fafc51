"""The worker's start-up report: which plugins, services and operations it loaded, and
every plugin that failed, with the reason.

Logged by the worker's main process once logging is configured and before its pool
starts (Celery's ``celeryd_after_setup``), so it is in the log before the first task.
Under the prefork pool the children inherit the loaded registry.
"""

from __future__ import annotations

import logging
from typing import Any

from aiecs_core import load_plugins
from celery import signals

log = logging.getLogger("aiecs.plugins")


def log_plugins(logger: logging.Logger = log) -> None:
    """Load the plugins (once per process) and log what loaded and what failed."""
    for level, line in load_plugins().report():
        logger.log(level, "%s", line)


@signals.celeryd_after_setup.connect
def _on_after_setup(sender: Any = None, **_: Any) -> None:
    try:
        log_plugins()
    except Exception:  # noqa: BLE001 - a report must never stop the worker
        log.exception("could not list the plugins")
