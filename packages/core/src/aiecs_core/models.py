"""Task and event models shared by every aiecs component.

Everything that crosses a process boundary (a queue message, a progress event, a task
result) is one of these models, serialised as JSON.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ID_PATTERN",
    "TERMINAL_STATUSES",
    "Budget",
    "ErrorInfo",
    "EventType",
    "TaskEvent",
    "TaskRequest",
    "TaskResult",
    "TaskStatus",
    "TemplateRef",
    "Usage",
]

#: Identifiers (user_id, task_id, mode, service, task_name) are short printable strings
#: without ':' or '/': they end up in Redis keys, room names and URLs.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$"


class TaskStatus(StrEnum):
    """Lifecycle of one task execution (one ``(task_id, step)``)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses an execution ends in."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)


class TemplateRef(BaseModel):
    """The template version an execution's input was rendered from: resolved once, when
    it was submitted (a label is never stored here, only the version it pointed at)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    """The template's name."""
    version: int = Field(ge=1, le=2**31 - 1)
    """The template's version number (1, 2, ...)."""


class TaskRequest(BaseModel):
    """One execution request, as sent by ``execute_task.delay(...)``.

    ``task_name`` names the operation to run on the service found under ``(mode, service)``.
    ``task_id`` names a user's task and ``step`` one execution of it: step 1, 2, ... of the
    same task_id are separate executions, each with its own lifecycle.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,127}$")
    """The operation to invoke (must be declared by the service)."""
    user_id: str = Field(pattern=ID_PATTERN)
    """Owner of the task; progress events go to this user only."""
    task_id: str = Field(pattern=ID_PATTERN)
    """The user's task identifier."""
    step: int = Field(ge=0)
    """Step of the task; each step is a separate execution."""
    mode: str = Field(pattern=ID_PATTERN)
    """Registry key, first half (e.g. ``chat``)."""
    service: str = Field(pattern=ID_PATTERN)
    """Registry key, second half (e.g. ``openai``)."""
    input_data: dict[str, Any] = Field(default_factory=dict)
    """The operation's input; validated against the operation's input model."""
    context: dict[str, Any] = Field(default_factory=dict)
    """Free-form context handed to the operation (language, model hints, ...)."""
    template: TemplateRef | None = Field(default=None, exclude_if=lambda v: v is None)
    """The template version ``input_data`` was rendered from (None: not a template's, and
    then absent from the JSON: messages without a template are as before); carried by
    the message, the events and the history row."""

    @field_validator("step", mode="before")
    @classmethod
    def _no_bool_step(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("step must be an integer, not a boolean")
        return v

    @property
    def key(self) -> str:
        """``task_id:step``: the identity of this execution."""
        return f"{self.task_id}:{self.step}"


class Usage(BaseModel):
    """What a provider call consumed."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    """Provider name (``openai``, ``vertex``, ``xai``, ...)."""
    model: str
    """Model identifier as reported by the provider."""
    input_tokens: int = 0
    """Prompt / input tokens."""
    output_tokens: int = 0
    """Completion / output tokens."""
    cached_tokens: int = 0
    """Of the input tokens, those the provider served from its prompt cache (when it
    reports them)."""
    reasoning_tokens: int = 0
    """Of the output tokens, those spent on reasoning (when the provider reports them)."""
    cost: float | None = None
    """Cost in USD, only when a price is configured; never estimated."""
    estimated: bool = False
    """The tokens were counted here, not reported by the provider (a cancelled or cut
    call, or a server that reports no usage). Estimated usage is never priced."""

    def __add__(self, other: Usage) -> Usage:
        cost = None
        if self.cost is not None or other.cost is not None:
            cost = (self.cost or 0.0) + (other.cost or 0.0)
        return Usage(
            provider=self.provider,
            model=self.model,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost=cost,
            estimated=self.estimated or other.estimated,
        )


class Budget(BaseModel):
    """One budget of a user: a ``soft`` and/or ``hard`` limit on what the user's executions
    may spend in a ``period`` (``day`` or ``month``, UTC), in US dollars (``kind="usd"``,
    priced from ``AIECS_PRICES``) or in tokens (input + output, ``kind="tokens"``).

    The hard limit refuses a submission whose reservation does not fit (HTTP 402); crossing
    the soft limit sends the user one warning event per period. The operator sets them:
    ``AIECS_BUDGETS`` (everyone's default) and ``PUT /budgets/{user}``.
    """

    model_config = ConfigDict(extra="forbid")

    period: Literal["day", "month"]
    """The period the spend is counted over (UTC calendar day or month)."""
    kind: Literal["usd", "tokens"]
    """What is counted: US dollars or tokens."""
    soft: float | None = Field(default=None, ge=0, le=1e15)
    """Crossing it sends one warning event per period (None: no warning)."""
    hard: float | None = Field(default=None, ge=0, le=1e15)
    """Reservations never take the spend past it (None: no hard limit)."""

    @model_validator(mode="after")
    def _one_limit(self) -> Budget:
        soft, hard = self.soft, self.hard
        if hard is None and soft is None:
            raise ValueError("give a soft or a hard limit (or both)")
        if hard is not None and soft is not None and soft > hard:
            raise ValueError(f"soft ({soft:g}) must not be above hard ({hard:g})")
        return self


class ErrorInfo(BaseModel):
    """A failure as users see it: no traceback, no secrets."""

    type: str
    """Error class name (``RateLimitError``, ``UnknownServiceError``, ...)."""
    message: str
    """Human-readable reason."""
    retryable: bool = False
    """Whether retrying the same request could succeed."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Structured fields of the error (``retry_after``, ``status_code``, ...)."""


EventType = Literal["status", "progress", "stream"]


class TaskEvent(BaseModel):
    """One progress event of one task execution.

    ``seq`` increases across *all* events of a ``task_id`` (every step), so a client that
    remembers the last ``seq`` it saw can ask for exactly what it missed.
    """

    type: EventType
    """``status``: a lifecycle change; ``progress``: fraction/message; ``stream``: text delta."""
    task_id: str
    step: int
    user_id: str
    task_name: str
    status: TaskStatus
    """The execution's status when the event was emitted."""
    seq: int = 0
    """Per-task_id sequence number, assigned when the event is published (0 = unassigned)."""
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    """Completion fraction in [0, 1], or None when unknown."""
    message: str | None = None
    """Human-readable progress message."""
    delta: str | None = None
    """Streamed text fragment (``type == "stream"``)."""
    result: Any = None
    """The operation's result (terminal COMPLETED event only)."""
    error: ErrorInfo | None = None
    """Why the execution did not complete (terminal FAILED / TIMED_OUT / CANCELLED)."""
    usage: list[Usage] = Field(default_factory=list)
    """Usage recorded so far (terminal events)."""
    partial_output: str | None = None
    """Text already streamed when a failure happened."""
    timestamp: float = Field(default_factory=time.time)
    """Unix time of emission."""
    template: TemplateRef | None = Field(default=None, exclude_if=lambda v: v is None)
    """The template version the execution's input was rendered from; absent from the
    JSON of executions that are not a template's."""

    @property
    def terminal(self) -> bool:
        """True for the status event that ends an execution."""
        return self.type == "status" and self.status.is_terminal


class TaskResult(BaseModel):
    """What ``AsyncResult.get()`` returns for a COMPLETED execution."""

    task_id: str
    step: int
    user_id: str
    task_name: str
    mode: str
    service: str
    status: TaskStatus
    result: Any = None
    """The operation's output (JSON)."""
    usage: list[Usage] = Field(default_factory=list)
    attempts: int = 1
    """How many times the operation ran (retries included)."""
    started_at: float | None = None
    finished_at: float | None = None
