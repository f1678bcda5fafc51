"""The service contract: @operation, Service, validate_input, invoke_operation, OperationContext."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from typing import Any

import pytest
from aiecs_core import (
    InputValidationError,
    OperationContext,
    OperationNotFoundError,
    OperationSpec,
    RateLimitKey,
    RecordingContext,
    Service,
    ServiceRegistry,
    TaskCancelledError,
    TaskStatus,
    Usage,
    invoke_operation,
    operation,
    validate_input,
)
from aiecs_core.testing import make_request
from pydantic import BaseModel, ConfigDict, Field

from tests.support.plugins import ServicesPlugin


class Inner(BaseModel):
    depth: int


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    count: int = 1
    inner: Inner | None = None


class Answer(BaseModel):
    text: str
    at: datetime.datetime


class Calculator(Service):
    """Answers questions."""

    mode = "chat"
    name = "calc"

    @operation(Question, description="Explicit model")
    async def explicit(self, ctx, data):
        return {"model": type(data).__name__, "thread": threading.get_ident()}

    @operation()
    def inferred(self, ctx: OperationContext, data: Question) -> dict[str, Any]:
        """Inferred model, sync."""
        return {"model": type(data).__name__, "thread": threading.get_ident()}

    @operation(name="renamed", heavy=True)
    async def original_name(self, ctx: OperationContext, data: Question) -> Answer:
        return Answer(text=data.text, at=datetime.datetime(2024, 1, 2, 3, 4, 5))

    def helper(self) -> str:  # a public method that is not an operation
        return "not invocable"


class ExtendedCalculator(Calculator):
    name = "calc2"

    @operation
    def extra(self, ctx: OperationContext, data: Question) -> str:
        return "extra"

    @operation(Question, description="overridden")
    async def explicit(self, ctx, data):
        return "subclass"


def _ctx(task_name: str = "explicit", **fields) -> RecordingContext:
    return RecordingContext(make_request("chat", "calc", task_name, **fields))


# --- @operation --------------------------------------------------------------------------


def test_explicit_and_inferred_models():
    ops = Calculator.operations
    assert set(ops) == {"explicit", "inferred", "renamed"}
    assert ops["explicit"].input_model is Question and ops["explicit"].is_async
    assert ops["inferred"].input_model is Question and not ops["inferred"].is_async
    assert ops["explicit"].description == "Explicit model"
    assert ops["inferred"].description == "Inferred model, sync."  # from the docstring
    assert ops["renamed"].func is Calculator.original_name and ops["renamed"].heavy
    assert not ops["explicit"].heavy
    assert all(isinstance(spec, OperationSpec) for spec in ops.values())


def test_bare_decorator_without_parentheses():
    # ``@operation`` (no call) must work like ``@operation()`` or fail loudly, never
    # silently turn the method into something else.
    assert ExtendedCalculator.operations["extra"].input_model is Question


def test_missing_model_is_an_error():
    with pytest.raises(TypeError, match=r"give the input model with @operation\(InputModel\)"):

        class NoModel(Service):
            mode, name = "m", "s"

            @operation()
            def run(self, ctx, data):
                return None

    with pytest.raises(TypeError, match="annotate the third parameter"):

        @operation()
        def too_few(self, ctx: OperationContext):
            return None


def test_unresolvable_annotation_is_explained():
    # With ``from __future__ import annotations`` a name imported under TYPE_CHECKING only
    # cannot be resolved at decoration time; the error says what to do instead.
    with pytest.raises(TypeError, match=r"cannot resolve its annotations .*NotImported.*"
                       r"give the input model with @operation\(InputModel\)"):

        @operation()
        def run(self, ctx: NotImported, data: Question) -> None:  # noqa: F821
            return None

    @operation(Question)  # an explicit model needs no annotation resolution
    def run_explicit(self, ctx: NotImported, data) -> None:  # noqa: F821
        return None

    assert run_explicit._aiecs_operation.input_model is Question


def test_model_must_be_pydantic():
    with pytest.raises(TypeError, match="input must be a pydantic model"):

        @operation(dict)  # type: ignore[arg-type]
        def run(self, ctx, data):
            return None

    with pytest.raises(TypeError, match="input must be a pydantic model"):

        @operation()
        def run2(self, ctx: OperationContext, data: dict) -> None:
            return None


@pytest.mark.parametrize("bad", ["_private", "__init__", "__class__"])
def test_underscore_names_are_rejected(bad):
    with pytest.raises(TypeError, match="must not start with an underscore"):

        @operation(Question, name=bad)
        def run(self, ctx, data):
            return None

    with pytest.raises(TypeError, match="must not start with an underscore"):

        class Sneaky(Service):
            mode, name = "m", "s"

            @operation(Question)
            def _hidden(self, ctx, data):
                return None


def test_operations_are_inherited_and_overridable():
    ops = ExtendedCalculator.operations
    assert set(ops) == {"explicit", "inferred", "renamed", "extra"}
    assert ops["explicit"].func is ExtendedCalculator.__dict__["explicit"]
    assert ops["explicit"].description == "overridden"
    # The same declaration, bound to the subclass (whose check_input and provider apply).
    assert ops["inferred"] == Calculator.operations["inferred"]
    assert ops["inferred"].service is ExtendedCalculator
    assert Calculator.operations["inferred"].service is Calculator
    # the base class is not affected by its subclass
    assert set(Calculator.operations) == {"explicit", "inferred", "renamed"}
    assert Calculator.operations["explicit"].description == "Explicit model"
    assert Service.operations == {}


def test_describe_is_json_and_complete():
    described = json.loads(json.dumps(Calculator.describe()))
    assert described["mode"] == "chat" and described["service"] == "calc"
    assert described["provider"] == "calc"  # defaults to the service name
    assert described["description"] == "Answers questions."
    assert list(described["operations"]) == ["explicit", "inferred", "renamed"]
    schema = described["operations"]["inferred"]["input_schema"]
    assert schema["type"] == "object" and schema["required"] == ["text"]
    assert described["operations"]["renamed"]["heavy"] is True


def test_default_rate_limit_key_and_aclose():
    service = Calculator()
    assert service.rate_limit_key("explicit", Question(text="x")) is None
    assert asyncio.run(service.aclose()) is None
    key = RateLimitKey(provider="openai", model="gpt-4o", tokens=10)
    assert str(key) == "openai/gpt-4o"


# --- undeclared names --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["__init__", "__class__", "__dict__", "aclose", "describe", "mode", "name", "operations",
     "helper", "rate_limit_key", "original_name", "__subclasshook__", ""],
)
def test_undeclared_names_are_never_resolvable(name):
    registry = ServiceRegistry()
    registry.register_plugin(ServicesPlugin(Calculator), "calc")
    with pytest.raises(OperationNotFoundError) as info:
        registry.operation("chat", "calc", name)
    assert info.value.details == {"mode": "chat", "service": "calc", "operation": name}
    assert "available: explicit, inferred, renamed" in str(info.value)


# --- validate_input --------------------------------------------------------------------


def test_validate_input_returns_the_model():
    data = validate_input(Calculator.operations["explicit"], {"text": "hi", "count": "2"})
    assert data == Question(text="hi", count=2)


@pytest.mark.parametrize(
    ("input_data", "fragments"),
    [
        ({}, ["text: Field required"]),
        ({"text": ""}, ["text: String should have at least 1 character"]),
        ({"text": "x", "count": "many"}, ["count: Input should be a valid integer"]),
        ({"text": "x", "inner": {"depth": "d"}}, ["inner.depth: Input should be a valid integer"]),
        ({"text": "x", "colour": "red"}, ["colour: Extra inputs are not permitted"]),
        ({"count": 1, "colour": "red"}, ["text: Field required", "colour: Extra inputs"]),
    ],
)
def test_validate_input_names_the_fields(input_data, fragments):
    spec = Calculator.operations["explicit"]
    with pytest.raises(InputValidationError) as info:
        validate_input(spec, input_data)
    message = str(info.value)
    assert message.startswith("input_data does not match explicit's input (Question): ")
    for fragment in fragments:
        assert fragment in message
    assert info.value.details == {"operation": "explicit"}
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_validate_input_does_not_echo_values():
    # Inputs can hold secrets or whole documents: the message names fields, not values.
    spec = Calculator.operations["explicit"]
    with pytest.raises(InputValidationError) as info:
        validate_input(spec, {"text": "x", "count": "sk-secret-value-123"})
    assert "sk-secret-value-123" not in str(info.value)
    assert "sk-secret-value-123" not in repr(info.value.details)


# --- invoke_operation -------------------------------------------------------------------


async def _invoke(service: Service, name: str, input_data: dict, ctx=None):
    spec = type(service).operations[name]
    ctx = ctx or _ctx(name)
    return await invoke_operation(service, spec, ctx, validate_input(spec, input_data))


def test_async_operation_runs_on_the_loop_thread():
    async def main():
        result = await _invoke(Calculator(), "explicit", {"text": "x"})
        return result, threading.get_ident()

    result, loop_thread = asyncio.run(main())
    assert result == {"model": "Question", "thread": loop_thread}


def test_sync_operation_runs_in_a_worker_thread():
    async def main():
        result = await _invoke(Calculator(), "inferred", {"text": "x"})
        return result, threading.get_ident()

    result, loop_thread = asyncio.run(main())
    assert result["model"] == "Question"
    assert result["thread"] != loop_thread


def test_sync_operation_does_not_block_the_loop():
    started = threading.Event()
    release = threading.Event()

    class Blocking(Service):
        mode, name = "m", "blocking"

        @operation(Question)
        def wait(self, ctx, data):
            started.set()
            assert release.wait(10), "never released"
            return "released"

    async def main():
        task = asyncio.ensure_future(_invoke(Blocking(), "wait", {"text": "x"}))
        # the loop keeps running while the sync operation blocks its thread
        deadline = time.monotonic() + 10
        while not started.is_set():
            assert time.monotonic() < deadline, "the sync operation never started"
            await asyncio.sleep(0.005)
        assert not task.done()
        release.set()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == "released"


def test_pydantic_results_are_dumped_as_json():
    result = asyncio.run(_invoke(Calculator(), "renamed", {"text": "hi"}))
    assert result == {"text": "hi", "at": "2024-01-02T03:04:05"}
    json.dumps(result)


def test_operation_exceptions_propagate_unchanged():
    class Failing(Service):
        mode, name = "m", "failing"

        @operation(Question)
        async def fail_async(self, ctx, data):
            raise ValueError(f"async {data.text}")

        @operation(Question)
        def fail_sync(self, ctx, data):
            raise KeyError(f"sync {data.text}")

    with pytest.raises(ValueError, match="async a"):
        asyncio.run(_invoke(Failing(), "fail_async", {"text": "a"}))
    with pytest.raises(KeyError, match="sync b"):
        asyncio.run(_invoke(Failing(), "fail_sync", {"text": "b"}))


# --- OperationContext ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "reported"),
    [(0.5, 0.5), (1.5, 1.0), (-0.2, 0.0), (0, 0.0), (1, 1.0), (None, None), ("0.25", 0.25)],
)
def test_progress_is_clamped(given, reported):
    ctx = _ctx()
    ctx.progress(given, "working")
    (event,) = ctx.events
    assert event.type == "progress" and event.progress == reported
    assert event.message == "working" and event.status is TaskStatus.RUNNING


def test_events_carry_the_request_identity():
    ctx = _ctx("inferred", user_id="alice", task_id="t-9", step=3)
    ctx.progress(message="only a message")
    (event,) = ctx.events
    assert (event.user_id, event.task_id, event.step, event.task_name) == (
        "alice", "t-9", 3, "inferred",
    )
    assert event.progress is None and event.message == "only a message"


def test_stream_records_deltas_and_skips_empty_ones():
    ctx = _ctx()
    assert not ctx.has_streamed and ctx.partial_output == ""
    for delta in ["Hel", "", "lo"]:
        ctx.stream(delta)
    assert [e.delta for e in ctx.events] == ["Hel", "lo"]
    assert all(e.type == "stream" for e in ctx.events)
    assert ctx.has_streamed and ctx.partial_output == "Hello"


def test_stream_and_usage_are_thread_safe():
    ctx = _ctx()
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        for j in range(200):
            ctx.stream(f"{i}.{j};")
            ctx.record_usage(Usage(provider="p", model="m", input_tokens=1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ctx.events) == len(ctx.usage) == 1600
    assert sorted(ctx.partial_output.split(";")[:-1]) == sorted(
        f"{i}.{j}" for i in range(8) for j in range(200)
    )


def test_record_usage():
    ctx = _ctx()
    first = Usage(provider="openai", model="a", input_tokens=1, output_tokens=2)
    second = Usage(provider="openai", model="b", input_tokens=3, output_tokens=4)
    ctx.record_usage(first)
    ctx.record_usage(second)
    assert ctx.usage == [first, second]
    assert ctx.events == []  # usage is reported with the terminal event, not on its own


def test_cancellation():
    ctx = _ctx()
    assert not ctx.cancelled
    ctx.raise_if_cancelled()  # no-op
    ctx.cancel()
    assert ctx.cancelled
    with pytest.raises(TaskCancelledError, match="task was cancelled"):
        ctx.raise_if_cancelled()


def test_sync_operation_sees_cancellation_from_another_thread():
    class Looping(Service):
        mode, name = "m", "looping"

        @operation(Question)
        def loop(self, ctx, data):
            ctx.progress(0.0, "started")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # bounded: a broken cancel fails, not hangs
                ctx.raise_if_cancelled()
                time.sleep(0.005)
            return "never cancelled"

    class CancelOnStart(RecordingContext):
        def emit(self, type_, **fields):
            super().emit(type_, **fields)
            threading.Thread(target=self.cancel).start()  # cancelled from elsewhere

    ctx = CancelOnStart(make_request("m", "looping", "loop"))
    with pytest.raises(TaskCancelledError):
        asyncio.run(asyncio.wait_for(_invoke(Looping(), "loop", {"text": "x"}, ctx), 10))
    assert ctx.cancelled


def test_time_remaining():
    request = make_request("chat", "calc", "explicit")
    assert OperationContext(request).time_remaining() is None
    ctx = RecordingContext(request, deadline=time.monotonic() + 30)
    remaining = ctx.time_remaining()
    assert 0 < remaining <= 30
    assert ctx.time_remaining() <= remaining  # only decreases
    expired = RecordingContext(request, deadline=time.monotonic() - 5)
    assert expired.time_remaining() == 0.0


def test_base_context_has_no_event_sink():
    ctx = OperationContext(make_request("chat", "calc", "explicit"))
    with pytest.raises(NotImplementedError):
        ctx.progress(0.5)


def test_make_event_validates():
    ctx = _ctx()
    event = ctx.make_event("status", status=TaskStatus.COMPLETED, result={"ok": True})
    assert event.terminal and event.result == {"ok": True}
