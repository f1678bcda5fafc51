"""The Celery tasks: thin shells around :class:`aiecs_worker.runner.runtime.Runtime`.

Both take the specification's keyword arguments (``task_name, user_id, task_id, step,
mode, service, input_data, context``). Their Celery task id is derived from
``(user_id, task_id, step)`` unless the caller gives one (see :func:`celery_task_id`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiecs_core import AiecsError, TaskCancelledError, TaskRequest, TaskStatus, redact_data
from celery import Task, signals
from celery.exceptions import Ignore, Reject
from pydantic import ValidationError

from ..app import app
from ..history.templates import expand
from ..ops import tracing
from ..producer.advance import after_step
from ..producer.release import record_cancelled
from ..routing import (
    AIECS_TASKS,
    FAST_TASK,
    FLOW_HEAVY_TASK,
    FLOW_TASK,
    FLOW_TASKS,
    HEAVY_TASK,
    queue_of_task,
)
from ..store import admission
from ..store.events import celery_task_id
from ..store.records import record_pending, state_redis
from ..store.results import RECORDED
from . import send
from .runtime import StateUnavailableError, close_runtime, get_runtime
from .taskevents import ExecutionCancelled

__all__ = ["execute_flow_step", "execute_heavy_flow_step", "execute_heavy_task",
           "execute_task"]

log = logging.getLogger("aiecs.worker")


class AiecsTask(Task):
    """Derives the Celery id from the execution's identity, so it is stable; checks the
    user's budget (BudgetExceededError, nothing queued) and records PENDING."""

    typing = False  # arguments are validated by the runner, which reports what is wrong
    #: sends the Celery events Flower needs for cancelled executions (see taskevents)
    Request = "aiecs_worker.runner.taskevents:AiecsRequest"

    def apply_async(self, args=None, kwargs=None, task_id=None, **options):
        request = None
        if kwargs and not args and _templated(kwargs):
            # template + variables: the version resolved now, once; the rendered input
            # checked before anything is queued (TemplateVariablesError, InputValidationError
            # ... raised to the caller)
            kwargs = expand(kwargs)
            request = TaskRequest.model_validate(kwargs)  # invalid: raised to the caller
            admission.check(request)
        elif kwargs and not args:
            try:
                request = TaskRequest.model_validate(kwargs)
            except ValidationError:
                request = None  # invalid: the runner reports exactly what is wrong
        if request is not None:
            task_id = task_id or celery_task_id(request.user_id, request.task_id, request.step)
            hold = admission.hold_sent(request)  # reserved with the PENDING record
            queue = options.get("queue") or queue_of_task(self.name)
            client = state_redis()
            # the message itself, pushed by the admission when it sends it (runner.send)
            plan = send.plan(self, client) if send.eligible(options, args) else None
            push = (plan.list_key, send.message(plan, task_id, kwargs)) if plan else None
            admitted = record_pending(request, task_id, queue=getattr(queue, "name", queue),
                                      task=self.name, eta=eta_timestamp(options), hold=hold,
                                      push=push)
            if hold is not None:
                admission.warn(client, hold.reserved, request.user_id,
                               request.task_id, request.step, request.task_name)
            if admitted == "held":  # kept in Redis; sent when it may run (aiecs_worker.store.hold)
                return self.AsyncResult(task_id)
            if admitted == "pushed":  # sent: what Celery's send_task does after its publish
                assert plan is not None
                send.subscribe(plan, task_id)
                result = self.AsyncResult(task_id)
                result.ignored = plan.ignore_result
                return result
        return super().apply_async(args=args, kwargs=kwargs, task_id=task_id, **options)


def _templated(kwargs: dict[str, Any]) -> bool:
    """A ``.delay(template=..., variables=...)`` call, not a message that already carries
    its resolved ``template`` (a redelivery or a release sends ``task_name`` with it)."""
    return "variables" in kwargs or ("template" in kwargs and "task_name" not in kwargs)


def eta_timestamp(options: dict[str, Any]) -> float | None:
    """When a submission's ``countdown`` / ``eta`` option lets it run (Celery's meaning:
    a naive ``eta`` is UTC), or None."""
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None:
        return time.time() + float(countdown)
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        return (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp()
    return None


def message_limit(timelimit: Any) -> float | None:
    """The seconds an execution may run by its message's ``(time_limit, soft_time_limit)``
    (``apply_async(time_limit=..., soft_time_limit=...)``): the smaller one given.

    The runner's deadline (TIMED_OUT, the operation cancelled) is the only limit the
    in-process pools (threads, asyncio) enforce, so a message's hard limit bounds it too:
    under them nothing else would stop the execution at that limit."""
    given = [float(x) for x in (timelimit or ()) if x]
    return min(given) if given else None


def _run(task: Task, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    runtime = get_runtime()
    delivery = task.request.delivery_info or {}
    queue = delivery.get("routing_key") or ""
    try:
        with tracing.execution(task.request, task.name, queue):
            outcome = runtime.run(
                args,
                kwargs,
                celery_id=task.request.id,
                soft_limit=message_limit(task.request.timelimit),
                task=task.name,
                queue=queue,
            )
    except StateUnavailableError as exc:
        log.warning("task %s not started: %s; returned to its queue", task.request.id, exc)
        raise Reject(str(exc), requeue=True) from None
    if outcome.duplicate:
        raise Ignore()  # a live worker runs this execution; it stores the result
    if outcome.recorded:  # Celery's result is read from the record (store.results)
        setattr(task.request, RECORDED, True)
    if outcome.status == TaskStatus.COMPLETED:
        return redact_data(outcome.result or {})  # for the result backend and Celery's log
    if outcome.status == TaskStatus.CANCELLED and task.request.id:
        task.backend.mark_as_revoked(
            task.request.id, reason=str(outcome.error or "cancelled"), request=task.request
        )
        raise ExecutionCancelled()  # an Ignore, reported to monitors as task-revoked
    raise _detached(outcome.error or TaskCancelledError("task did not complete"))


def _detached(error: BaseException) -> BaseException:
    """The error as Celery should store it: without the chain of exceptions behind it.

    A provider error is raised ``from`` the SDK's exception, whose text can hold what must
    never leave the worker (an SDK may echo the API key, a request body, a header). Celery
    stores the traceback, chain included, in the result backend, so the chain is cut here;
    the error's own message and details are already safe for users.
    """
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    error.args = redact_data(error.args)
    return error.with_traceback(None)


@app.task(bind=True, base=AiecsTask, name=FAST_TASK,
          throws=(AiecsError,))
def execute_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a fast task: ``execute_task.delay(task_name=..., user_id=..., ...)``."""
    return _run(self, args, kwargs)


@app.task(bind=True, base=AiecsTask, name=HEAVY_TASK,
          throws=(AiecsError,))
def execute_heavy_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a heavy task (``heavy_tasks`` queue); same arguments as :func:`execute_task`."""
    return _run(self, args, kwargs)


@app.task(bind=True, base=AiecsTask, name=FLOW_TASK, throws=(AiecsError,))
def execute_flow_step(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A workflow step (see aiecs_worker.producer.flow): run it, then release or cancel
    the steps that depend on it."""
    try:
        return _run(self, args, kwargs)
    finally:
        after_step(kwargs)


@app.task(bind=True, base=AiecsTask, name=FLOW_HEAVY_TASK, throws=(AiecsError,))
def execute_heavy_flow_step(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A heavy workflow step (``heavy_tasks`` queue)."""
    try:
        return _run(self, args, kwargs)
    finally:
        after_step(kwargs)


@signals.task_revoked.connect
def _on_revoked(sender=None, request=None, terminated=False, expired=False, **_: Any) -> None:
    """A task revoked before it ran (or terminated): record and publish CANCELLED."""
    name = getattr(sender, "name", None)
    if request is None or name not in AIECS_TASKS:
        return
    try:
        record_cancelled(tuple(request.args or ()), dict(request.kwargs or {}),
                         reason="task was cancelled before it ran" if not terminated
                         else "task was terminated")
    except Exception:  # noqa: BLE001 - never break the worker's control loop
        log.exception("could not record the revocation of %s", request.id)
    if name in FLOW_TASKS:
        after_step(dict(request.kwargs or {}))


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """A prefork child starts its runtime (lease, sweeper, plugins) before any task, and
    its own tracing exporter (a thread does not survive the fork)."""
    tracing.setup("aiecs-worker")
    get_runtime()


@signals.worker_ready.connect
def _on_ready(sender=None, **_: Any) -> None:
    """In-process pools (threads, solo) start the runtime before taking tasks.

    Not the prefork parent: it forks children later and must not hold a loop thread then.
    """
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" not in type(pool).__module__:
        tracing.setup("aiecs-worker")
        get_runtime()


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    close_runtime()
    tracing.shutdown()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    close_runtime()
    tracing.shutdown()
