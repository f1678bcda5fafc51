"""The aiecs error hierarchy.

Every error takes ``(message, details)`` positionally and keeps exactly those two values in
``args``. Celery's JSON result backend stores ``exc.args`` and rebuilds the exception with
``cls(*args)``, so every class here round-trips through it unchanged. Structured fields
(``retry_after``, ``status_code``, ...) live in ``details`` and are exposed as properties;
keyword arguments are a convenience that fills ``details``.

Messages and details are redacted when an error is built (:mod:`aiecs_core.redaction`):
registered secrets and anything shaped like an API key are removed.

Providers convert SDK errors at their boundary, by exception type and HTTP status code
(never by message text), with ``raise ProviderError(...) from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .redaction import redact, redact_data

if TYPE_CHECKING:  # pragma: no cover - imported on use: the errors need no pydantic
    from .models import ErrorInfo

__all__ = [
    "AiecsError",
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "DuplicateExecutionError",
    "InputValidationError",
    "InvalidRequestError",
    "InvalidTaskError",
    "ModelNotFoundError",
    "OperationError",
    "OperationNotFoundError",
    "PayloadTooLargeError",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitError",
    "ServiceNotFoundError",
    "StreamInterruptedError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "WorkerLostError",
    "error_info",
]


class AiecsError(Exception):
    """Root of every aiecs error."""

    #: Whether retrying the same request could succeed.
    retryable: bool = False

    def __init__(self, message: str = "", details: dict[str, Any] | None = None, **fields: Any):
        merged = dict(details or {})
        merged.update({k: v for k, v in fields.items() if v is not None})
        # Secrets never leave the worker: a converted provider error may carry a request
        # id, a header or a body echoing the API key (see aiecs_core.redaction).
        super().__init__(redact(message), redact_data(merged))

    @property
    def message(self) -> str:
        """The human-readable message."""
        return self.args[0] if self.args else ""

    @property
    def details(self) -> dict[str, Any]:
        """Structured details (JSON values), part of the error's contract."""
        return self.args[1] if len(self.args) > 1 and isinstance(self.args[1], dict) else {}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"

    # pickling (e.g. across a process pool) keeps the same contract
    def __reduce__(self) -> tuple[type[AiecsError], tuple[Any, ...]]:
        return (type(self), self.args)

    def to_info(self) -> ErrorInfo:
        """The error as the :class:`~aiecs_core.ErrorInfo` of a FAILED event or result."""
        from .models import ErrorInfo

        return ErrorInfo(
            type=type(self).__name__,
            message=self.message,
            retryable=self.is_retryable,
            details=self.details,
        )

    @property
    def is_retryable(self) -> bool:
        """Whether retrying the call may succeed (``details['retryable']`` overrides the class)."""
        return bool(self.details.get("retryable", self.retryable))


# --- request / task errors -------------------------------------------------------------


class InvalidTaskError(AiecsError):
    """The task's arguments are missing, extra or of the wrong type."""


class PayloadTooLargeError(InvalidTaskError):
    """``input_data`` + ``context`` exceed the configured size limit."""

    @property
    def limit(self) -> int | None:
        """The largest size allowed, in bytes."""
        return self.details.get("limit")

    @property
    def size(self) -> int | None:
        """The size that was refused, in bytes."""
        return self.details.get("size")


class QuotaExceededError(AiecsError):
    """A per-user quota set by the operator refused a submission before anything was
    recorded or queued.

    ``limit`` is the quota, ``setting`` the environment variable that sets it, and
    ``retry_after`` the seconds after which the same request may pass (the HTTP API's
    ``429`` with ``Retry-After``). A limit the request can never meet has no
    ``retry_after`` and ``retryable=False`` in ``details`` (HTTP ``422``).
    """

    retryable = True

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again, when known."""
        value = self.details.get("retry_after")
        return float(value) if value is not None else None

    @property
    def limit(self) -> int | float | None:
        """The limit that was reached."""
        return self.details.get("limit")

    @property
    def setting(self) -> str | None:
        """The setting (environment variable) that sets the limit."""
        return self.details.get("setting")


class BudgetExceededError(AiecsError):
    """A user's budget (money or tokens, per day or month, set by the operator) refused a
    submission before anything was queued: what it would reserve does not fit under the
    hard limit (HTTP ``402``).

    ``details``: ``period`` (``day`` / ``month``), ``kind`` (``usd`` / ``tokens``), ``limit``
    (the hard limit), ``committed`` (spent + reserved before this submission), ``requested``
    (what this submission would reserve) and ``resets_at`` (ISO-8601 UTC, when the period's
    spend starts again from zero). A model without a price under a money budget is refused
    too (``reason: "unpriced"``, ``model``).
    """

    @property
    def period(self) -> str | None:
        """``day`` or ``month``."""
        return self.details.get("period")

    @property
    def kind(self) -> str | None:
        """``usd`` or ``tokens``."""
        return self.details.get("kind")

    @property
    def limit(self) -> int | float | None:
        """The hard limit that refused the submission."""
        return self.details.get("limit")


class ServiceNotFoundError(AiecsError):
    """No service is registered under ``(mode, service)``."""


class OperationNotFoundError(AiecsError):
    """The service does not declare the requested operation."""


class InputValidationError(AiecsError):
    """``input_data`` does not satisfy the operation's input model."""


class ConfigurationError(AiecsError):
    """A required setting (API key, project id, ...) is missing or invalid."""

    @property
    def env_var(self) -> str | None:
        """The environment variable to set or correct."""
        return self.details.get("env_var")


class PluginError(AiecsError):
    """A plugin could not be loaded or registered something invalid."""


class DuplicateExecutionError(AiecsError):
    """The same ``(task_id, step)`` is already running elsewhere."""


class WorkerLostError(AiecsError):
    """The worker process executing the task died too many times."""


class OperationError(AiecsError):
    """The operation raised something that is not an aiecs error (a bug in the provider).

    ``details["exception_type"]`` names the original class; the traceback stays in the
    worker's log.
    """


class TaskTimeoutError(AiecsError):
    """The task's deadline passed; the provider call was cancelled."""


class TaskCancelledError(AiecsError):
    """The task was cancelled (revoked) by the user."""


# --- provider errors ----------------------------------------------------------------------


class ProviderError(AiecsError):
    """An AI provider call failed. ``provider`` and ``status_code`` are in ``details``."""

    @property
    def provider(self) -> str | None:
        """The provider that answered with the error."""
        return self.details.get("provider")

    @property
    def status_code(self) -> int | None:
        """The provider's HTTP status, when there was one."""
        return self.details.get("status_code")


class InvalidRequestError(ProviderError):
    """The provider rejected the request (HTTP 400/422). Not retried."""


class AuthenticationError(ProviderError):
    """Missing or rejected credentials (HTTP 401/403). Not retried."""


class ModelNotFoundError(ProviderError):
    """Unknown model or endpoint (HTTP 404). Not retried."""


class RateLimitError(ProviderError):
    """The provider asked us to slow down (HTTP 429). Retried after ``retry_after``."""

    retryable = True

    @property
    def retry_after(self) -> float | None:
        """Seconds the provider asked to wait (``Retry-After``), when it said."""
        value = self.details.get("retry_after")
        return float(value) if value is not None else None


class ProviderServerError(ProviderError):
    """The provider failed (HTTP 5xx). Retried."""

    retryable = True


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time. Retried within the task's deadline."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The provider could not be reached. Retried within the task's deadline."""

    retryable = True


class StreamInterruptedError(ProviderError):
    """A streamed response was cut after output had been sent. Never retried.

    ``partial_output`` in ``details`` holds the text already streamed to the user.
    """

    retryable = False

    @property
    def partial_output(self) -> str | None:
        """The text streamed before the stream broke."""
        return self.details.get("partial_output")


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe any exception for users without leaking internals.

    aiecs errors carry their own message; anything else is reported by class name and
    message only (no traceback).
    """
    if isinstance(exc, AiecsError):
        return exc.to_info()
    from .models import ErrorInfo

    return ErrorInfo(type=type(exc).__name__, message=str(exc) or type(exc).__name__)
