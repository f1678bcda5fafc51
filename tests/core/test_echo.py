"""The echo reference provider, driven through aiecs_core.testing.run_operation."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from aiecs_core import (
    AuthenticationError,
    InputValidationError,
    InvalidRequestError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
    RecordingContext,
    ServiceRegistry,
    TaskCancelledError,
    Usage,
    invoke_operation,
    validate_input,
)
from aiecs_core.testing import EchoService, echo, make_request, run_operation

TEXT = "the quick brown fox jumps over the lazy dog"  # 43 characters, 9 words


@pytest.fixture
def registry():
    reg = ServiceRegistry()
    reg.register_plugin(echo, "echo")
    yield reg
    reg.drop_instances()


def _task_id() -> str:
    # fail_times counts attempts per (task_id, step) in the process: keep tests apart
    return f"t-{uuid.uuid4().hex[:12]}"


def _run_capturing(task_name: str, input_data: dict, ctx_cls=RecordingContext, **fields):
    """Run an echo operation; return (result or exception, context)."""
    request = make_request("test", "echo", task_name, input_data, **fields)
    spec = EchoService.operations[task_name]
    ctx = ctx_cls(request)

    async def main():
        return await asyncio.wait_for(
            invoke_operation(EchoService(), spec, ctx, validate_input(spec, input_data)), 30
        )

    try:
        return asyncio.run(main()), ctx
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, ctx


@pytest.mark.parametrize("task_name", ["echo", "echo_sync", "echo_heavy"])
def test_streams_chunks_with_progress(registry, task_name):
    result, ctx = run_operation(registry, "test", "echo", task_name, {"text": TEXT, "chunks": 3})
    assert result == {"text": TEXT, "chunks": 3}
    streams = [e for e in ctx.events if e.type == "stream"]
    progress = [e for e in ctx.events if e.type == "progress"]
    assert [e.delta for e in streams] == [TEXT[0:15], TEXT[15:30], TEXT[30:]]
    assert ctx.partial_output == TEXT
    assert [e.progress for e in progress] == [1 / 3, 2 / 3, 1.0]
    assert [e.message for e in progress] == ["chunk 1/3", "chunk 2/3", "chunk 3/3"]
    # each chunk is streamed before its progress is reported
    assert [e.type for e in ctx.events] == ["stream", "progress"] * 3
    assert all(e.task_name == task_name and e.user_id == "test-user" for e in ctx.events)
    assert ctx.usage == [Usage(provider="echo", model="echo-1", input_tokens=9, output_tokens=9)]
    assert registry.instances() == []  # run_operation closes and drops what it created


def test_default_is_four_chunks():
    result, ctx = run_operation(EchoService(), "test", "echo", "echo", {"text": TEXT})
    assert result["chunks"] == 4
    assert [e.progress for e in ctx.events if e.type == "progress"] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("text", "chunks", "deltas"),
    [
        ("ab", 5, ["a", "b"]),  # never more chunks than characters
        ("abcdef", 1, ["abcdef"]),
        ("", 3, []),  # nothing to stream, still completes
    ],
)
def test_chunking_edge_cases(text, chunks, deltas):
    result, ctx = run_operation(
        EchoService(), "test", "echo", "echo", {"text": text, "chunks": chunks}
    )
    assert [e.delta for e in ctx.events if e.type == "stream"] == deltas
    assert result == {"text": text, "chunks": max(1, len(deltas))}
    assert [e.progress for e in ctx.events if e.type == "progress"][-1] == 1.0


def test_sync_operation_runs_off_the_loop_thread():
    threads = []

    class Recording(RecordingContext):
        def emit(self, type_, **fields):
            threads.append(threading.get_ident())
            super().emit(type_, **fields)

    result, _ = _run_capturing("echo_sync", {"text": "abc", "chunks": 3}, Recording)
    assert result == {"text": "abc", "chunks": 3}
    assert threads and threading.get_ident() not in threads


def test_noop():
    result, ctx = run_operation(EchoService(), "test", "echo", "noop", {})
    assert result == {} and ctx.events == [] and ctx.usage == []


def test_declared_operations():
    ops = EchoService.operations
    assert set(ops) == {"echo", "echo_sync", "echo_heavy", "noop"}
    assert ops["echo_heavy"].heavy and not ops["echo"].heavy and not ops["echo_sync"].heavy
    assert ops["echo"].is_async and not ops["echo_sync"].is_async


@pytest.mark.parametrize(
    ("kind", "cls", "status"),
    [
        ("invalid", InvalidRequestError, 400),
        ("auth", AuthenticationError, 401),
        ("rate_limit", RateLimitError, 429),
        ("server", ProviderServerError, 500),
        ("timeout", ProviderTimeoutError, None),
    ],
)
@pytest.mark.parametrize("task_name", ["echo", "echo_sync"])
def test_fail_kinds_map_to_error_classes(kind, cls, status, task_name):
    exc, ctx = _run_capturing(task_name, {"text": TEXT, "fail": kind})
    assert type(exc) is cls
    assert str(exc) == f"echo was told to fail with {kind}"
    assert exc.provider == "echo" and exc.status_code == status
    assert exc.is_retryable is cls.retryable
    assert ctx.events == [] and ctx.usage == []  # failed before answering


def test_run_operation_propagates_the_error():
    with pytest.raises(AuthenticationError):
        run_operation(EchoService(), "test", "echo", "echo", {"text": "x", "fail": "auth"})


def test_rate_limit_carries_retry_after():
    exc, _ = _run_capturing("echo", {"text": "x", "fail": "rate_limit", "retry_after": 2.5})
    assert isinstance(exc, RateLimitError) and exc.retry_after == 2.5
    exc, _ = _run_capturing("echo", {"text": "x", "fail": "rate_limit"})
    assert exc.retry_after is None and "retry_after" not in exc.details
    exc, _ = _run_capturing("echo", {"text": "x", "fail": "server", "retry_after": 2.5})
    assert "retry_after" not in exc.details  # only rate limits carry it


@pytest.mark.parametrize("task_name", ["echo", "echo_sync"])
def test_fail_times_counts_attempts_per_execution(task_name):
    task_id = _task_id()
    data = {"text": "ok", "fail": "server", "fail_times": 2}
    for _ in range(2):
        exc, _ = _run_capturing(task_name, data, task_id=task_id)
        assert isinstance(exc, ProviderServerError)
    result, ctx = _run_capturing(task_name, data, task_id=task_id)
    assert result == {"text": "ok", "chunks": 2}
    assert ctx.partial_output == "ok"
    # another step of the same task is another execution, with its own count
    exc, _ = _run_capturing(task_name, data, task_id=task_id, step=2)
    assert isinstance(exc, ProviderServerError)


def test_fail_after_chunks_cuts_the_stream():
    data = {"text": "aaaabbbbccccdddd", "chunks": 4, "fail": "server", "fail_after_chunks": 2}
    exc, ctx = _run_capturing("echo", data, task_id=_task_id())
    assert isinstance(exc, ProviderServerError)
    assert ctx.partial_output == "aaaabbbb"
    assert [e.progress for e in ctx.events if e.type == "progress"] == [0.25, 0.5]
    assert ctx.usage == []


def test_fail_after_chunks_once_then_succeeds():
    task_id = _task_id()
    data = {"text": "aaaabbbb", "chunks": 2, "fail": "timeout", "fail_after_chunks": 1,
            "fail_times": 1}
    exc, ctx = _run_capturing("echo", data, task_id=task_id)
    assert isinstance(exc, ProviderTimeoutError) and ctx.partial_output == "aaaa"
    result, ctx = _run_capturing("echo", data, task_id=task_id)
    assert result == {"text": "aaaabbbb", "chunks": 2} and ctx.partial_output == "aaaabbbb"


def test_sync_echo_sees_cancellation_during_its_delay():
    class CancelAfterFirstChunk(RecordingContext):
        def emit(self, type_, **fields):
            super().emit(type_, **fields)
            if type_ == "stream":
                self.cancel()

    data = {"text": "abcd", "chunks": 4, "delay": 5}
    # delay applies before each chunk: cancel before the first one too
    ctx_first = CancelAfterFirstChunk(make_request("test", "echo", "echo_sync", data))
    ctx_first.cancel()
    spec = EchoService.operations["echo_sync"]

    async def run(ctx):
        return await asyncio.wait_for(
            invoke_operation(EchoService(), spec, ctx, validate_input(spec, data)), 10
        )

    with pytest.raises(TaskCancelledError):
        asyncio.run(run(ctx_first))
    assert ctx_first.events == []

    data = {"text": "abcd", "chunks": 4, "delay": 0.001}
    exc, ctx = _run_capturing("echo_sync", data, CancelAfterFirstChunk)
    assert isinstance(exc, TaskCancelledError)
    assert ctx.partial_output == "a"


def test_async_echo_delay_is_cancellable():
    # run_operation's timeout cancels the coroutine while it waits before a chunk
    with pytest.raises(TimeoutError):
        run_operation(
            EchoService(), "test", "echo", "echo", {"text": "abc", "delay": 60}, timeout=0.2
        )


@pytest.mark.parametrize(
    ("input_data", "field"),
    [
        ({}, "text"),
        ({"text": "x", "chunks": 0}, "chunks"),
        ({"text": "x", "fail": "explode"}, "fail"),
        ({"text": "x", "fail_times": 0}, "fail_times"),
        ({"text": "x", "delay": -1}, "delay"),
        ({"text": "x", "unknown": 1}, "unknown"),
    ],
)
def test_invalid_input_names_the_field(registry, input_data, field):
    with pytest.raises(InputValidationError) as info:
        run_operation(registry, "test", "echo", "echo", input_data)
    assert f"{field}: " in str(info.value)


def test_crash_kills_the_process():
    # ``fail: crash`` SIGKILLs its process (for worker-loss tests): only run it in a child.
    code = textwrap.dedent(
        """
        from aiecs_core.testing import EchoService, run_operation
        print("before", flush=True)
        run_operation(EchoService(), "test", "echo", "echo", {"text": "x", "fail": "crash"})
        print("after", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "before\n"
