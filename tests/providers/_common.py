"""Helpers and cases shared by the provider tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiecs_core import (
    AiecsError,
    ProviderConnectionError,
    RecordingContext,
    StreamInterruptedError,
)
from aiecs_core.testing import make_request

__all__ = ["StreamCases", "call", "run", "streamed"]


def run(service: Any, scenario: Any) -> Any:
    """``await scenario()`` in one ``asyncio.run``, as in a worker (one loop per process, the
    client reused), then close the service's client."""

    async def main():
        try:
            return await scenario()
        finally:
            await service.aclose()

    return asyncio.run(main())


async def call(
    service: Any, op: str, input_data: dict, *, deadline: float | None = None
) -> tuple[Any, RecordingContext]:
    """Validate and run one operation; return (result or the aiecs error raised, ctx)."""
    spec = type(service).operations[op]
    request = make_request(service.mode, service.name, op, input_data)
    ctx = RecordingContext(
        request, deadline=None if deadline is None else time.monotonic() + deadline
    )
    data = spec.input_model.model_validate(input_data)
    try:
        result = await spec.func(service, ctx, data)
    except AiecsError as exc:
        return exc, ctx
    return result.model_dump(mode="json"), ctx


def streamed(ctx: RecordingContext) -> str:
    return "".join(e.delta or "" for e in ctx.events if e.type == "stream")


class StreamCases:
    """How every LLM provider's streamed chat ends when it is cut or cancelled (the
    lifecycle of ``aiecs_core.llm.stream_chat``), against the provider's fake server.

    Subclasses set ``model`` and the fake's ``Cut`` and ``Hang`` replies; the ``service``
    and ``fake`` fixtures come from the provider's test module.
    """

    model: str
    Cut: type
    Hang: type

    def stream_input(self) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": "hello there"}],
                "stream": True}

    def test_stream_cut_after_output_is_interrupted_with_partial_output(self, service, fake):
        fake.script(self.Cut(after_chunks=3, text="alpha beta gamma delta epsilon"))
        error, ctx = run(service, lambda: call(service, "chat", self.stream_input()))
        assert isinstance(error, StreamInterruptedError) and not error.is_retryable
        assert error.partial_output == "alpha beta gamma" == streamed(ctx)
        assert len(ctx.usage) == 1  # what was consumed is still recorded
        assert ctx.usage[0].cost is None

    def test_stream_cut_before_output_is_retryable(self, service, fake):
        fake.script(self.Cut(after_chunks=0))
        error, ctx = run(service, lambda: call(service, "chat", self.stream_input()))
        assert isinstance(error, ProviderConnectionError) and error.is_retryable
        assert streamed(ctx) == ""

    def test_cancelling_closes_the_stream_and_records_usage(self, service, fake):
        fake.script(self.Hang(after_chunks=2))
        data = self.stream_input()
        spec = type(service).operations["chat"]
        ctx = RecordingContext(make_request(service.mode, service.name, "chat", data))

        async def scenario():
            task = asyncio.ensure_future(
                spec.func(service, ctx, spec.input_model.model_validate(data))
            )
            while len([e for e in ctx.events if e.type == "stream"]) < 2:
                assert not task.done(), task
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run(service, scenario)
        assert streamed(ctx) == "this stream"
        assert len(ctx.usage) == 1 and ctx.usage[0].output_tokens > 0
        deadline = time.monotonic() + 5
        while fake.hangups < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.hangups == 1, "the upstream HTTP stream was not closed"
