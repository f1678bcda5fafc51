"""The request bodies of the task API (pydantic models; ``extra="forbid"``)."""

from __future__ import annotations

from typing import Any

from aiecs_core import ID_PATTERN
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ..producer.batch import BatchItem

__all__ = ["MAX_DELAY", "BatchBody", "DevTokenBody", "OperationBody", "ScheduleBody",
           "SubmitBody", "WorkflowBody"]

MAX_DELAY = 30 * 86400  # seconds: the furthest ahead a submission's countdown / eta may be


class OperationBody(BatchItem):
    """What to run: a TaskRequest without ``user_id`` (the token says who) and ``step``,
    plus ``heavy`` to override the operation's queue (a batch item), and the task id."""

    task_id: str | None = None


class SubmitBody(OperationBody):
    """``POST /tasks``: what to run, which step, and not before when."""

    step: int | None = None
    countdown: float | None = Field(default=None, ge=0, le=MAX_DELAY)
    """Run no earlier than this many seconds from now (PENDING until then)."""
    eta: AwareDatetime | None = None
    """Run no earlier than this time (ISO 8601 with a timezone)."""


class ScheduleBody(OperationBody):
    """``POST /schedules``: what to run (as ``POST /tasks``, without ``step``) and when."""

    every: float | None = None
    cron: str | None = None


class BatchBody(BaseModel):
    """``POST /batches``."""

    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]]
    batch_id: str | None = None
    heavy: bool | None = None


class WorkflowBody(BaseModel):
    """``POST /workflows``."""

    model_config = ConfigDict(extra="forbid")
    steps: list[dict[str, Any]]
    task_id: str | None = None


class DevTokenBody(BaseModel):
    """``POST /dev/token`` (development mode only)."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=ID_PATTERN)
    ttl: int | None = Field(default=None, gt=0, le=7 * 86400)
    operator: bool = False
    """A token with the operator scope (templates' writes, every user's history)."""
