"""The one submission check: every way in (Python, HTTP, batch, workflow, schedule, CLI)
goes through it before anything is recorded or queued.

:func:`check` is what a submission's content must pass: its payload size (input_data +
context, AIECS_MAX_PAYLOAD_BYTES), its operation known to this process's plugins, its
input valid for the operation's model and the operator's model policy
(:func:`aiecs_core.validate_input`). :func:`admit_one` / :func:`admit` are what the user
may submit (:mod:`aiecs_worker.store.quotas`). A workflow step whose input holds references is
checked with ``input_data=None`` (its input is validated when the step is released).

:func:`reserve` is what the user may spend (:mod:`aiecs_worker.store.budgets`): it runs
before the quotas, and :func:`unreserve` undoes it when a later check refuses the
submission. A single execution (:func:`check_request`) and a batch reserve at submission;
a workflow reserves its first steps at submission and the others when they are released;
a ``.delay()`` / ``apply_async`` and a schedule's run reserve when they are sent, in the
script that records them PENDING (:func:`hold_sent`).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

from aiecs_core import AiecsError, OperationSpec, TaskRequest, load_plugins, validate_input

from ..settings import get_settings
from . import budgets, quotas
from .keys import TaskKeys
from .requests import check_payload_size

__all__ = ["admit", "admit_one", "check", "check_request", "hold_sent", "operation",
           "reserve", "unreserve", "warn"]

#: The execution :func:`check_request` reserved for in this thread, so that the
#: ``apply_async`` that follows it (``control.submit``) does not reserve again.
_just_checked = threading.local()

#: A user's quotas for a submission of several executions (a batch, a workflow, a
#: schedule): :func:`aiecs_worker.store.quotas.admit`.
admit = quotas.admit


def operation(request: Any) -> OperationSpec:
    """The operation of a request (anything with ``mode``, ``service`` and ``task_name``);
    ServiceNotFoundError / OperationNotFoundError when this process's plugins lack it."""
    return load_plugins().operation(request.mode, request.service, request.task_name)


def check(request: Any, *, validate: bool = True, max_bytes: int | None = None
          ) -> OperationSpec:
    """The content check of one submission (a TaskRequest, a batch item, a workflow step,
    a schedule: anything with ``mode``, ``service``, ``task_name``, ``input_data`` and
    ``context``), in this order: payload size, operation, input (unless ``validate`` is
    false: the caller validates the input itself). Returns the operation's spec; raises
    PayloadTooLargeError / InvalidTaskError / ServiceNotFoundError /
    OperationNotFoundError / InputValidationError (and what the model policy raises)."""
    limit = get_settings().aiecs_max_payload_bytes if max_bytes is None else max_bytes
    check_payload_size({"input_data": request.input_data, "context": request.context},
                       limit)
    spec = operation(request)
    if validate:
        validate_input(spec, request.input_data)
    return spec


def check_request(request: TaskRequest, *, client: Any,
                  steps: Collection[int] | None = None) -> OperationSpec:
    """:func:`check`, :func:`reserve` and :func:`admit_one`: the whole check of a single
    submission (BudgetExceededError / QuotaExceededError: nothing reserved or counted).
    The ``apply_async`` that sends it (:func:`hold_sent`) publishes any budget
    warning, once its PENDING record exists. ``steps``: the task's steps, when the caller
    has just read them (:func:`admit_one`)."""
    spec = check(request)
    if not budgets.enabled():
        admit_one(request, client=client, steps=steps)
        return spec
    state_key = TaskKeys(request.user_id, request.task_id).state(request.step)
    held = reserve(request.user_id, [(state_key, spec, request.input_data)], client=client)
    try:
        admit_one(request, client=client, steps=steps)
    except BaseException:
        unreserve(client, held)
        raise
    _just_checked.key, _just_checked.held = state_key, held
    return spec


def reserve(user_id: str, executions: Sequence[tuple[str, OperationSpec, Any]], *,
            client: Any) -> budgets.Reserved:
    """Reserve what ``executions`` (``(state key, operation, input_data)``) may spend
    against the user's budgets, all or none (BudgetExceededError: none). Nothing at all
    while budgets are off."""
    if not budgets.enabled():
        return budgets.Reserved([], [])
    return budgets.reserve(client, user_id, [
        (key, budgets.estimate(spec, input_data)) for key, spec, input_data in executions])


def unreserve(client: Any, held: budgets.Reserved) -> None:
    """Undo :func:`reserve` for a submission refused after it."""
    budgets.release(client, held)


def warn(client: Any, held: budgets.Reserved | None, user_id: str, task_id: str, step: int,
         task_name: str) -> None:
    """Tell the user the soft limits :func:`reserve` reached (one event on the task).
    Call it once the submission is recorded: the event joins the task's log after its
    PENDING event (the first event of a log sets the log's lifetime)."""
    if held is not None and held.crossed:
        budgets.warn(client, user_id, task_id, step, task_name, held.crossed)


def hold_sent(request: TaskRequest) -> budgets.Hold | None:
    """The budget reservation of an execution as it is sent (``execute_task.delay`` /
    ``apply_async``, a schedule's run, ``control.submit``), for
    :func:`aiecs_worker.store.records.record_pending` to make with its PENDING record (one
    script: BudgetExceededError, nothing recorded or queued), then :func:`warn` about.
    None when budgets are off or this process does not know its operation (it reserves
    nothing: the worker refuses it before any call). An execution :func:`check_request`
    just reserved for is not reserved again. An unreachable Redis lets it through, as its
    PENDING record does (docs/budgets.md)."""
    if not budgets.enabled():
        return None
    state_key = TaskKeys(request.user_id, request.task_id).state(request.step)
    if getattr(_just_checked, "key", None) == state_key:
        _just_checked.key = None  # control.submit reserved it a moment ago
        return budgets.Hold(request.user_id, state_key, reserved=_just_checked.held)
    try:
        spec = operation(request)
    except AiecsError:
        return None
    return budgets.Hold(request.user_id, state_key, budgets.estimate(spec, request.input_data))


def admit_one(request: TaskRequest, *, client: Any,
              steps: Collection[int] | None = None) -> None:
    """Count one execution against its user's quotas (QuotaExceededError, nothing
    counted, when one refuses it); the step must not be past the user's step limit.
    ``steps``: the task's steps as the caller just read them (else they are read)."""
    quotas.check_steps(client, request.user_id, request.task_id, request.step, steps)
    quotas.admit(request.user_id, [TaskKeys(request.user_id, request.task_id)
                                   .state(request.step)], client=client)
