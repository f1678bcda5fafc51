"""Celery's own task events agree with the aiecs states (what Flower and ``celery events``
show).

Celery reports a task to monitors through events sent by the worker's main process:
``task-received``, ``task-started``, then one of ``task-succeeded``, ``task-failed`` or
``task-revoked``. The runner records every outcome in Redis itself and tells Celery only
what Celery must store, so two outcomes needed help:

- **CANCELLED while running**: the task stores REVOKED in the result backend and raises
  :class:`Ignore` (nothing else for Celery to record). Celery sends no event for an
  ignored task, so a monitor kept it STARTED for good. The task now raises
  :class:`ExecutionCancelled` (an ``Ignore``), and :class:`AiecsRequest` sends
  ``task-revoked`` for it.
- **CANCELLED while queued**: the worker drops a revoked message before its
  ``task-received`` event, and Celery's ``task-revoked`` event carries no task name, so a
  monitor showed a nameless REVOKED task. :class:`AiecsRequest` adds the name.

The mapping (docs/operations.md, "Flower"): COMPLETED → SUCCESS, FAILED → FAILURE,
TIMED_OUT → FAILURE (``TaskTimeoutError``), CANCELLED → REVOKED, RUNNING → STARTED. A
duplicate delivery (an execution a live worker already runs, see lease.py) is ignored
without an event: the worker that runs it sends the outcome.

These are Celery events only; the aiecs event log and its single terminal event
(docs/reliability.md) are untouched.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore
from celery.worker.request import Request

__all__ = ["AiecsRequest", "ExecutionCancelled"]


class ExecutionCancelled(Ignore):
    """Raised by a task whose execution ended CANCELLED (its outcome is already stored)."""


class AiecsRequest(Request):
    """Celery's worker-side request of the aiecs tasks, with the two events above."""

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        if type == "task-revoked":
            fields.setdefault("name", self.name)
        super().send_event(type, **fields)

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback (prefork)
        if isinstance(exc, ExecutionCancelled):
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)
