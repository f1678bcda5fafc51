"""Loaded into a worker (``celery worker --include tests.support.signal_recorder``, see
:data:`WORKER_ARGS`): records each of Celery's task signals the worker sends, as one JSON
line in the Redis list :data:`KEY` of the worker's broker, with what a tracing or
error-reporting SDK's Celery integration reads of it."""

from __future__ import annotations

import contextvars
import json
import os
import threading
from typing import Any

import redis
from celery import current_task, signals

#: The list the records go to (on the worker's broker Redis).
KEY = "test:celery-signals"
#: What makes a worker load this module (with :data:`ENV`).
WORKER_ARGS = ["--include", "tests.support.signal_recorder"]
#: The repository's root on the worker's PYTHONPATH (``tests`` is importable there).
ENV = {"PYTHONPATH": os.pathsep.join(
    p for p in (os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                os.environ.get("PYTHONPATH", "")) if p)}

_client = redis.Redis.from_url(os.environ.get("CELERY_BROKER_URL", "redis://localhost"))
#: Set in task_prerun, read by the later signals: an SDK attaches its span there and
#: detaches it in task_postrun, which works only if both run in one context.
_attached: contextvars.ContextVar[str | None] = contextvars.ContextVar("attached", default=None)


def _record(signal: str, sender: Any, **fields: Any) -> None:
    task = current_task
    fields.update(signal=signal, sender=getattr(sender, "name", type(sender).__name__),
                  request_id=getattr(getattr(sender, "request", None), "id", None),
                  current_task=getattr(task, "name", None), attached=_attached.get(),
                  thread=threading.current_thread().name)
    _client.rpush(KEY, json.dumps(fields, default=repr))


def _unwrapped(exc: Any) -> Any:
    """billiard's ``ExceptionWithTraceback`` around an ``ExceptionInfo``'s exception
    (OpenTelemetry's instrumentation unwraps it the same way)."""
    return getattr(exc, "exc", exc)


def _exc(exc: Any) -> Any:
    return None if exc is None else [type(exc).__name__, str(exc)]


@signals.task_received.connect
def _received(sender=None, request=None, **_: Any) -> None:
    _record("task_received", sender, task_id=request.id, name=request.name,
            request_type=type(request).__name__)


@signals.task_prerun.connect
def _prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **_: Any) -> None:
    _attached.set(task_id)
    _record("task_prerun", sender, task_id=task_id, task=task.name, args=args, kwargs=kwargs)


@signals.task_success.connect
def _success(sender=None, result=None, runtime=None, **_: Any) -> None:
    _record("task_success", sender, task_id=sender.request.id, result=result,
            runtime_ok=isinstance(runtime, float) and runtime >= 0)


@signals.task_failure.connect
def _failure(sender=None, task_id=None, exception=None, args=None, kwargs=None,
             traceback=None, einfo=None, **_: Any) -> None:
    _record("task_failure", sender, task_id=task_id, exception=_exc(exception), args=args,
            kwargs=kwargs, traceback=traceback is not None,
            einfo=_exc(_unwrapped(getattr(einfo, "exception", None))),
            einfo_traceback="Traceback" in str(getattr(einfo, "traceback", "")))


@signals.task_retry.connect
def _retry(sender=None, request=None, reason=None, **_: Any) -> None:
    _record("task_retry", sender, task_id=getattr(request, "id", None), reason=str(reason))


@signals.task_revoked.connect
def _revoked(sender=None, request=None, terminated=None, signum=None, expired=None,
             **_: Any) -> None:
    _record("task_revoked", sender, task_id=request.id, args=request.args,
            kwargs=request.kwargs, terminated=terminated, signum=signum, expired=expired)


@signals.task_postrun.connect
def _postrun(sender=None, task_id=None, task=None, args=None, kwargs=None, retval=None,
             state=None, **_: Any) -> None:
    _record("task_postrun", sender, task_id=task_id, task=task.name, args=args,
            kwargs=kwargs, retval=_exc(retval) if isinstance(retval, BaseException)
            else retval, state=state)
    _attached.set(None)
