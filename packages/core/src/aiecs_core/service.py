"""The service contract: what a provider plugin implements.

A *service* is a class registered under ``(mode, name)``. It declares its *operations*
explicitly with :func:`operation`; a task can invoke a declared operation and nothing else
(no ``getattr`` on arbitrary names). Each operation has a pydantic input model, may be sync
or async, and receives an :class:`OperationContext` through which it reports progress,
streams partial output, records usage and sees cancellation::

    from pydantic import BaseModel
    from aiecs_core import Service, OperationContext, operation

    class AnalyzeInput(BaseModel):
        text: str

    class TextAnalyzer(Service):
        mode = "chat"
        name = "text_analyzer"

        @operation(description="Sentiment of a text")
        async def analyze_text(self, ctx: OperationContext, data: AnalyzeInput) -> dict:
            ctx.progress(0.5, "thinking")
            return {"sentiment": "positive"}

One instance of a service class is created per process, on first use, and reused: keep SDK
clients on it. ``aclose()`` is awaited when the worker shuts down.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputValidationError, TaskCancelledError
from .modelpolicy import current_model_policy
from .models import TaskEvent, TaskRequest, TaskStatus, Usage

#: A method declared an operation (``@operation`` returns it unchanged).
F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "OperationContext",
    "OperationSpec",
    "RateLimitKey",
    "RecordingContext",
    "Service",
    "invoke_operation",
    "operation",
    "validate_input",
]


@dataclass(frozen=True)
class OperationSpec:
    """A declared operation of a service."""

    name: str
    func: Callable[..., Any]
    input_model: type[BaseModel]
    description: str = ""
    heavy: bool = False
    """Default queue: ``heavy_tasks`` when true, ``fast_tasks`` otherwise."""
    is_async: bool = field(default=False)
    service: type[Service] | None = field(default=None, compare=False, repr=False)
    """The service class whose operation this is (bound when the class is defined): its
    :meth:`Service.check_input` runs in :func:`validate_input`."""

    def describe(self) -> dict[str, Any]:
        """The operation as listed (JSON): name, description, input schema, queue."""
        return {
            "name": self.name,
            "description": self.description,
            "heavy": self.heavy,
            "input_schema": self.input_model.model_json_schema(),
        }


def operation(
    input: type[BaseModel] | None = None,  # noqa: A002 - reads well at the call site
    *,
    name: str | None = None,
    description: str | None = None,
    heavy: bool = False,
) -> Callable[[F], F]:
    """Declare a method of a :class:`Service` as an invocable operation.

    The method's signature is ``(self, ctx, data)``; ``data`` is an instance of the input
    model (given here, or taken from the ``data`` annotation). ``heavy`` routes the
    operation to the heavy queue by default. ``@operation`` without parentheses is the
    same as ``@operation()``.
    """
    if input is not None and not isinstance(input, type) and callable(input):
        return operation()(input)  # used bare: ``@operation``

    def decorate(func: F) -> F:
        model = input
        if model is None:
            try:
                hints = typing.get_type_hints(func)
            except NameError as exc:  # e.g. a name imported under TYPE_CHECKING only
                raise TypeError(
                    f"operation {func.__qualname__}: cannot resolve its annotations ({exc}); "
                    "give the input model with @operation(InputModel)"
                ) from exc
            params = list(inspect.signature(func).parameters)
            if len(params) < 3 or params[2] not in hints:
                raise TypeError(
                    f"operation {func.__qualname__}: give the input model with "
                    "@operation(InputModel) or annotate the third parameter"
                )
            model = hints[params[2]]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"operation {func.__qualname__}: input must be a pydantic model")
        op_name = name or func.__name__
        if op_name.startswith("_"):
            raise TypeError(f"operation name {op_name!r} must not start with an underscore")
        func._aiecs_operation = OperationSpec(  # type: ignore[attr-defined]
            name=op_name,
            func=func,
            input_model=model,
            description=description or inspect.getdoc(func) or "",
            heavy=heavy,
            is_async=inspect.iscoroutinefunction(func),
        )
        return func

    return decorate


class RateLimitKey(BaseModel):
    """The provider quota one operation call draws on (see :meth:`Service.rate_limit_key`).

    The worker counts requests and tokens per ``(provider, model)`` across every worker
    process, against the limits configured for that key (``AIECS_RATE_LIMITS``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(min_length=1)
    """Provider name, as in usage records (``openai``, ``vertex``, ``xai``, ...)."""
    model: str = Field(min_length=1)
    """Model the call is made to."""
    tokens: int = Field(default=0, ge=0)
    """Estimated tokens the call will consume (input + maximum output); 0 when unknown."""

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


class Service:
    """Base class of every service. Subclasses set ``mode`` and ``name``."""

    mode: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Provider name used in usage records and rate-limit keys (defaults to ``name``).
    provider: ClassVar[str | None] = None
    #: Environment variables holding this service's secrets (API keys, tokens): their
    #: values are registered for redaction (:mod:`aiecs_core.redaction`) when the service
    #: is registered and when it is instantiated, so they never appear in errors, events,
    #: results or logs.
    secret_env: ClassVar[tuple[str, ...]] = ()
    #: Declared operations, collected from ``@operation`` methods (inherited ones included).
    operations: ClassVar[dict[str, OperationSpec]] = {}
    #: A valid first input per operation name, offered to users (``GET /services``, the
    #: page's form). Without one, the input schema's own ``examples`` are used.
    examples: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ops: dict[str, OperationSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                spec = getattr(attr, "_aiecs_operation", None)
                if isinstance(spec, OperationSpec):
                    ops[spec.name] = dataclasses.replace(spec, service=cls)
        cls.operations = ops

    @classmethod
    def check_input(cls, operation: str, data: BaseModel) -> None:
        """Refuse an operation's validated input with :class:`InputValidationError`
        (:func:`validate_input` calls it: at submission and in the worker, before the
        call). The default applies the operator's model policy (model allow-list,
        ``max_output_tokens`` ceiling: :mod:`aiecs_core.modelpolicy`) under this service's
        provider name. Override to add checks a field's own validation cannot make (call
        ``super().check_input`` too)."""
        policy = current_model_policy()
        if policy is not None:
            policy.check(cls.provider or getattr(cls, "name", None) or "", data)

    def warm(self) -> None:
        """Do now, in a thread, what the first call would otherwise do on the event loop:
        import the SDK, build the client, load credentials.

        The worker calls it once per process, in a thread of its own, when the process
        starts, and starts the process's first tasks once every service is warm: an SDK
        import that takes a second never freezes the executions sharing the event loop
        (see ``aiecs_worker.runner.warm``). Warm only what is configured (an API key is set, ...)
        and do no network I/O; return without doing anything otherwise. Must be
        idempotent and thread-safe against a call arriving meanwhile (with
        ``AIECS_WARM=0`` there is no warm-up), and such a call must not do this work on
        the loop either: build the client with ``asyncio.to_thread`` if it is missing. An
        exception is logged and ignored: the first call then fails or retries as usual.
        The default does nothing.
        """

    async def aclose(self) -> None:
        """Release clients. Called once when the worker process shuts down."""

    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        """The quota a call of ``operation`` with validated input ``data`` draws on.

        Return ``None`` (the default) for calls that no provider quota applies to. The
        worker waits for capacity under this key before each attempt, and a
        ``RateLimitError`` with ``retry_after`` pauses the key for every worker.
        """
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The service as listed (JSON): mode, name and its operations."""
        return {
            "mode": cls.mode,
            "service": cls.name,
            "provider": cls.provider or cls.name,
            "description": cls.description or inspect.cleandoc(cls.__dict__.get("__doc__") or ""),
            "operations": {name: {**spec.describe(), "example": cls.example_input(name)}
                           for name, spec in sorted(cls.operations.items())},
        }

    @classmethod
    def example_input(cls, operation: str) -> dict[str, Any] | None:
        """A valid first input of ``operation`` (None when neither the service nor the input
        schema gives one). Its ``model`` is one the operator's model policy allows for this
        service's provider."""
        spec = cls.operations[operation]
        example = cls.examples.get(operation)
        if example is None:
            given = spec.input_model.model_json_schema().get("examples") or [None]
            example = given[0] if isinstance(given, list) else None
        if not isinstance(example, dict):
            return None
        example = dict(json.loads(json.dumps(example)))  # a copy the caller may change
        policy = current_model_policy()
        allowed = policy.models.get(cls.provider or cls.name) if policy else None
        if allowed and isinstance(example.get("model"), str) and example["model"] not in allowed:
            example["model"] = sorted(allowed)[0]
        return example


class OperationContext:
    """What an operation sees of its execution.

    The methods are synchronous, non-blocking and thread-safe, so sync and async operations
    use them alike. Subclasses (the worker's, the recording one) decide where events go by
    overriding :meth:`emit`.
    """

    def __init__(self, request: TaskRequest, *, deadline: float | None = None):
        self.request = request
        #: ``time.monotonic()`` value after which the task is TIMED_OUT (None: no deadline).
        self.deadline = deadline
        self.usage: list[Usage] = []
        self.streamed_text: list[str] = []
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    # -- reporting ---------------------------------------------------------------------
    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress: ``fraction`` in [0, 1] (or None) and/or a message."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self.emit("progress", progress=fraction, message=message)

    def stream(self, delta: str) -> None:
        """Push a fragment of streamed output to the user."""
        if not delta:
            return
        with self._lock:
            self.streamed_text.append(delta)
        self.emit("stream", delta=delta)

    def record_usage(self, usage: Usage) -> None:
        """Record what a provider call consumed (one record per call)."""
        with self._lock:
            self.usage.append(usage)

    # -- cancellation and deadline ------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the execution was asked to stop."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the operation to stop (it sees it at its next check)."""
        self._cancelled.set()

    def raise_if_cancelled(self) -> None:
        """For sync operations: call between units of work."""
        if self._cancelled.is_set():
            raise TaskCancelledError("task was cancelled")

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def has_streamed(self) -> bool:
        """True once the operation streamed some text."""
        return bool(self.streamed_text)

    @property
    def partial_output(self) -> str:
        """The text streamed so far."""
        with self._lock:
            return "".join(self.streamed_text)

    # -- event sink -----------------------------------------------------------------------
    def make_event(self, type_: str, status: TaskStatus = TaskStatus.RUNNING,
                   **fields: Any) -> TaskEvent:
        """A :class:`~aiecs_core.TaskEvent` of this execution."""
        r = self.request
        return TaskEvent(
            type=type_,
            task_id=r.task_id,
            step=r.step,
            user_id=r.user_id,
            task_name=r.task_name,
            status=status,
            template=r.template,
            **fields,
        )

    def emit(self, type_: str, **fields: Any) -> None:  # pragma: no cover - abstract
        """Publish one event of this execution (the runner's context implements it)."""
        raise NotImplementedError


class RecordingContext(OperationContext):
    """A context that keeps events in memory: for tests and the conformance suite."""

    def __init__(self, request: TaskRequest, *, deadline: float | None = None):
        super().__init__(request, deadline=deadline)
        self.events: list[TaskEvent] = []

    def emit(self, type_: str, **fields: Any) -> None:
        """Record the event (for tests)."""
        with self._lock:
            self.events.append(self.make_event(type_, **fields))


def validate_input(spec: OperationSpec, input_data: dict[str, Any]) -> BaseModel:
    """Validate ``input_data`` against the operation's model, then its service's
    :meth:`Service.check_input` (the operator's model policy), or raise a clear error."""
    try:
        data = spec.input_model.model_validate(input_data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise InputValidationError(
            f"input_data does not match {spec.name}'s input ({spec.input_model.__name__}): "
            f"{problems}",
            operation=spec.name,
        ) from None
    if spec.service is not None:
        spec.service.check_input(spec.name, data)
    return data


async def invoke_operation(
    instance: Service, spec: OperationSpec, ctx: OperationContext, data: BaseModel
) -> Any:
    """Run one operation: async ones on the running loop, sync ones in a thread.

    Returns the result made JSON-ready (pydantic models are dumped).
    """
    if spec.is_async:
        result = await spec.func(instance, ctx, data)
    else:
        import asyncio  # not at import: plugin listings and the CLI never need it

        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            None, functools.partial(spec.func, instance, ctx, data)
        )
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    return result
