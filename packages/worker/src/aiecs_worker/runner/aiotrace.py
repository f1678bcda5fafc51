"""What Celery's worker does around a task's body, for the executions ``--pool asyncio``
runs on the event loop (:mod:`aiecs_worker.runner.aiopool`): its task signals and its
record of the requests it holds.

Celery's tracer (``celery.app.trace.build_tracer``) sends, around the body and in this
order: ``task_prerun`` (before it), then ``task_success`` (after the result is stored) or
``task_failure`` (after the failure is stored, with the exception and its
``ExceptionInfo``), then ``task_postrun`` (``retval`` and ``state``); ``IGNORED`` and
``REJECTED`` outcomes send no third signal. Celery's ``Request`` registers itself in
``celery.worker.state`` (reserved, then active once accepted, removed when ready), which
is what ``celery inspect active`` / ``reserved`` / ``query_task`` read and what
``revoke()`` consults before marking a task REVOKED.

The pool does the same with the same arguments: ``sender`` is the task, ``task.request``
(and ``celery.current_task``) is the execution's request while each signal is sent, and
the signals are sent from the execution's own asyncio task on the loop thread, so a
receiver that attaches a context in ``task_prerun`` and detaches it in ``task_postrun``
(OpenTelemetry's ``CeleryInstrumentor``, the logs' identity) sees one context, that of the
execution, which the operation's coroutine inherits.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import signals
from celery._state import _task_stack
from celery.app.task import Context
from celery.app.trace import traceback_clear
from celery.utils.imports import symbol_by_name
from celery.worker import state as worker_state

__all__ = ["accepted", "context", "failure", "make_request", "postrun", "prerun", "ready",
           "success"]


def make_request(app: Any, task: Any, message: Any, body: tuple, hostname: str,
                 utc: bool) -> Any:
    """Celery's worker-side ``Request`` of a message (the task's ``Request`` class), its
    body already decoded: what ``worker.state`` holds and ``inspect active`` reports.
    ``utc``: ``app.uses_utc_timezone()``, read once by the caller (not per message)."""
    cls = task.Request
    if isinstance(cls, str):
        cls = symbol_by_name(cls)
    return cls(message, app=app, task=task, hostname=hostname, body=body,
               headers=message.headers, decoded=True,
               utc=utc)


def context(request: Any) -> Context:
    """The task's request context as the tracer builds it (``task.request``)."""
    _, _, embed = request.body
    return Context(request.request_dict, called_directly=False, **(embed or {}))


def accepted(request: Any) -> None:
    """The request runs now (Celery's ``Request.on_accepted``: active, counted)."""
    request.on_accepted(os.getpid(), time.monotonic())


def ready(request: Any, successful: bool = False) -> None:
    """The request is done (Celery's ``task_ready``)."""
    worker_state.task_ready(request, successful=successful)


@contextlib.contextmanager
def _current(task: Any, ctx: Context) -> Any:
    """``task.request`` and ``current_task`` are the execution's, while a signal is sent
    (the loop thread runs many executions: they are pushed only for that moment)."""
    _task_stack.push(task)
    task.request_stack.push(ctx)
    try:
        yield
    finally:
        task.request_stack.pop()
        _task_stack.pop()


def prerun(task: Any, ctx: Context) -> None:
    if signals.task_prerun.receivers:
        with _current(task, ctx):
            signals.task_prerun.send(sender=task, task_id=ctx.id, task=task,
                                     args=ctx.args, kwargs=ctx.kwargs)


def success(task: Any, ctx: Context, retval: Any, runtime: float) -> None:
    if signals.task_success.receivers:
        with _current(task, ctx):
            signals.task_success.send(sender=task, result=retval, runtime=runtime)


def failure(task: Any, ctx: Context, exc: BaseException) -> None:
    """``task_failure`` with the exception and an ``ExceptionInfo`` whose traceback is
    where the pool raised it (as the tracer's is where the task raised it)."""
    if not signals.task_failure.receivers:
        return
    try:
        raise exc
    except BaseException:  # noqa: BLE001 - raised here for its traceback only
        einfo = ExceptionInfo()
    try:
        with _current(task, ctx):
            signals.task_failure.send(sender=task, task_id=ctx.id, exception=exc,
                                      args=ctx.args, kwargs=ctx.kwargs,
                                      traceback=exc.__traceback__, einfo=einfo)
    finally:
        traceback_clear(exc)


def postrun(task: Any, ctx: Context, retval: Any, state: str | None) -> None:
    if signals.task_postrun.receivers:
        with _current(task, ctx):
            signals.task_postrun.send(sender=task, task_id=ctx.id, task=task, args=ctx.args,
                                      kwargs=ctx.kwargs, retval=retval, state=state)
