"""Logs as JSON lines (``AIECS_LOG_FORMAT=json``), each carrying its execution's identity.

One JSON object per line, from the worker (Celery's own lines included) and the progress
server: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``pid``; on the lines
written while an execution runs (the runner's, the provider's, its HTTP client's, Celery's
"succeeded"/"raised" lines) also ``task_id``, ``step``, ``user_id``, ``celery_id``,
``mode``, ``service``, ``operation``; and on the line that ends an execution
("task ... finished"), ``status``, ``duration`` (seconds) and ``rss_mb`` (the process's
resident memory). Tracebacks are in ``exc_info``.

The identity is a context variable set when Celery starts the task (``task_prerun``) in
the pool's thread (or prefork child); the runner's coroutine inherits it on the event loop,
and so does everything the operation runs there.

Secrets: the redacting filter (:mod:`aiecs_worker.ops.redaction`) stays on every handler, and
each JSON line is redacted once more as a whole (a traceback or an extra field the filter
did not see cannot carry a registered secret or anything shaped like a key out).

Text format (the default) is unchanged: Celery's, or ``aiecs serve``'s.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import logging
import os
import resource
import time
from typing import Any

from aiecs_core import redact
from celery import signals

from ..settings import get_settings

__all__ = ["bind", "finished", "install", "json_formatter", "json_line", "json_mode"]

log = logging.getLogger("aiecs.worker")
_identity: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aiecs_log_identity", default=None)
_FIELDS = ("task_name", "user_id", "task_id", "step", "mode", "service")
#: record attributes never written as fields (uvicorn's colored copy of the message)
_SKIP = ("color_message", "taskName")


def json_mode() -> bool:
    return get_settings().aiecs_log_format == "json"


@functools.cache
def json_formatter() -> logging.Formatter:
    """The JSON formatter (python-json-logger), made once."""
    # python-json-logger only when JSON logs are asked for (AIECS_LOG_FORMAT=json)
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict):
            log_data["time"] = datetime.datetime.fromtimestamp(
                record.created, tz=datetime.UTC).isoformat(timespec="milliseconds")
            log_data["level"] = record.levelname
            log_data["logger"] = record.name
            log_data["message"] = record.message
            log_data["pid"] = record.process
            identity = _identity.get()
            if identity:
                log_data.update(identity)
            super().add_fields(log_data, record, message_dict)

        def format(self, record: logging.LogRecord) -> str:
            exc_info = record.exc_info
            if exc_info and record.exc_text:
                record.exc_info = None  # the redacting filter's text of it
            try:
                return redact(super().format(record))
            finally:
                record.exc_info = exc_info

    return Formatter(reserved_attrs=[*RESERVED_ATTRS, *_SKIP], json_ensure_ascii=False)


def json_line(message: str, logger: str = "aiecs", level: int = logging.INFO) -> str:
    """``message`` as a JSON log line (for what a command prints, e.g. ``aiecs worker``)."""
    record = logging.LogRecord(logger, level, "", 0, message, None, None)
    return json_formatter().format(record)


def install(*loggers: Any) -> int:
    """In JSON mode, give every handler of the root logger, of ``loggers`` and of every
    existing logger the JSON formatter; returns how many (0 in text mode)."""
    if not json_mode():
        return 0
    targets = [logging.getLogger()]
    targets += [logging.getLogger(x) if isinstance(x, str) else x for x in loggers]
    targets += [lg for lg in list(logging.Logger.manager.loggerDict.values())
                if isinstance(lg, logging.Logger)]
    formatter = json_formatter()
    handlers = {h for lg in targets for h in lg.handlers}
    for handler in handlers:
        handler.setFormatter(formatter)
    return len(handlers)


def _label(value: Any) -> Any:
    """A field of a raw (not yet validated) task argument, kept only when plain."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value[:128] if isinstance(value, str) else value


def bind(args: tuple | list, kwargs: dict[str, Any], celery_id: str | None) -> Any:
    """Set the execution identity of what this context logs from now; returns the token
    for :func:`unbind`."""
    values = dict(zip(_FIELDS, args, strict=False)) | dict(kwargs)
    identity = {"task_id": _label(values.get("task_id")), "step": _label(values.get("step")),
                "user_id": _label(values.get("user_id")), "celery_id": celery_id,
                "mode": _label(values.get("mode")), "service": _label(values.get("service")),
                "operation": _label(values.get("task_name"))}
    return _identity.set({k: v for k, v in identity.items() if v is not None})


def finished(celery_id: str | None, status: str, began: float | None) -> None:
    """The line that ends an execution (INFO): its status, duration and the memory of the
    process (the specification's "Task completed" and "Memory usage" lines, in one)."""
    if not log.isEnabledFor(logging.INFO):
        return
    duration = round(time.monotonic() - began, 4) if began is not None else None
    log.info("task %s finished: %s in %ss", celery_id, status, duration,
             extra={"status": status, "duration": duration, "rss_mb": _rss_mb()})


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)
    except (OSError, ValueError, IndexError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- Celery -----------------------------------------------------------------------------------
@signals.celeryd_init.connect
def _on_init(instance: Any = None, **_: Any) -> None:
    """JSON mode: no start-up banner (it is not JSON; the plugin report is logged), and
    warnings (Celery's about running as root comes next) are JSON lines too: through a
    JSON handler on the root logger until Celery replaces it with its own."""
    if not json_mode():
        return
    if instance is not None:
        instance.quiet = True
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(json_formatter())
        root.addHandler(handler)


def _on_logger_set_up(logger: Any = None, **_: Any) -> None:
    """Celery set up its logger's (or its task logger's) handlers: JSON them."""
    install(*([logger] if logger is not None else []))


signals.after_setup_logger.connect(_on_logger_set_up, weak=False)
signals.after_setup_task_logger.connect(_on_logger_set_up, weak=False)


@signals.task_prerun.connect
def _on_prerun(task_id: str | None = None, args: Any = None, kwargs: Any = None,
               **_: Any) -> None:
    if not json_mode():
        return
    with contextlib.suppress(Exception):  # a logging context must never fail a task
        bind(args or (), kwargs or {}, task_id)


@signals.task_postrun.connect
def _on_postrun(**_: Any) -> None:
    _identity.set(None)
