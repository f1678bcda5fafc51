"""The one submission check: every way in (Python, HTTP, batch, workflow, schedule, CLI)
goes through it before anything is recorded or queued.

:func:`check` is what a submission's content must pass: its payload size (input_data +
context, AIECS_MAX_PAYLOAD_BYTES), its operation known to this process's plugins, its
input valid for the operation's model and the operator's model policy
(:func:`aiecs_core.validate_input`). :func:`admit_one` / :func:`admit` are what the user
may submit (:mod:`aiecs_worker.store.quotas`). A workflow step whose input holds references is
checked with ``input_data=None`` (its input is validated when the step is released).
"""

from __future__ import annotations

from typing import Any

from aiecs_core import OperationSpec, TaskRequest, load_plugins, validate_input

from ..settings import get_settings
from . import quotas
from .keys import TaskKeys
from .requests import check_payload_size

__all__ = ["admit", "admit_one", "check", "check_request", "operation"]

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


def check_request(request: TaskRequest, *, client: Any) -> OperationSpec:
    """:func:`check` and :func:`admit_one`: the whole check of a single submission."""
    spec = check(request)
    admit_one(request, client=client)
    return spec


def admit_one(request: TaskRequest, *, client: Any) -> None:
    """Count one execution against its user's quotas (QuotaExceededError, nothing
    counted, when one refuses it); the step must not be past the user's step limit."""
    quotas.check_steps(client, request.user_id, request.task_id, request.step)
    quotas.admit(request.user_id, [TaskKeys(request.user_id, request.task_id)
                                   .state(request.step)], client=client)
