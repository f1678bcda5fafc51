"""The reference provider: an echo service that needs no network and no credentials.

It streams its input back in chunks with progress, and can be told to sleep, to fail, or
to raise a retryable error a given number of times before succeeding. It is what the
worker's own tests, the demo page and the no-op benchmark run against. It is *not*
registered by installing aiecs-core: enable it with ``registry.register_plugin(echo_plugin,
"echo")`` or through an entry point of your own (``echo = "aiecs_core.testing.echo"``),
and served only with ``AIECS_TEST_SERVICES=1`` (its ``fail="crash"`` SIGKILLs the process:
see :mod:`aiecs_core.registry`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from ..hookspecs import hookimpl
from ..models import Usage
from ..service import OperationContext, Service, operation

FailKind = Literal["invalid", "auth", "rate_limit", "server", "timeout", "crash"]

_ERRORS = {
    "invalid": (InvalidRequestError, 400),
    "auth": (AuthenticationError, 401),
    "rate_limit": (RateLimitError, 429),
    "server": (ProviderServerError, 500),
    "timeout": (ProviderTimeoutError, None),
}

_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


class EchoInput(BaseModel):
    """Input of ``test/echo`` operations."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=100_000)
    """Text to stream back."""
    chunks: int = Field(default=4, ge=1, le=1000)
    """How many stream events to split ``text`` into."""
    delay: float = Field(default=0.0, ge=0.0, le=3600.0)
    """Seconds to wait before each chunk (cancellable; counts against the deadline)."""
    fail: FailKind | None = None
    """Raise this kind of provider error instead of answering."""
    fail_times: int | None = Field(default=None, ge=1)
    """Fail only on the first N attempts of this (task_id, step); None: always."""
    fail_after_chunks: int = Field(default=0, ge=0)
    """Stream this many chunks before failing (a stream cut mid-way)."""
    retry_after: float | None = Field(default=None, ge=0.0)
    """``retry_after`` of a ``rate_limit`` failure."""


class NoInput(BaseModel):
    """An operation that takes no input."""

    model_config = ConfigDict(extra="forbid")


def _attempt(ctx: OperationContext) -> int:
    with _attempts_lock:
        _attempts[ctx.request.key] = _attempts.get(ctx.request.key, 0) + 1
        return _attempts[ctx.request.key]


def _split(text: str, chunks: int) -> list[str]:
    size = max(1, -(-len(text) // chunks)) if text else 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _failure(data: EchoInput, ctx: OperationContext) -> Exception | None:
    if data.fail is None:
        return None
    if data.fail_times is not None and _attempt(ctx) > data.fail_times:
        return None
    if data.fail == "crash":
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    cls, status = _ERRORS[data.fail]
    return cls(
        f"echo was told to fail with {data.fail}",
        provider="echo",
        status_code=status,
        retry_after=data.retry_after if data.fail == "rate_limit" else None,
    )


def _usage(data: EchoInput) -> Usage:
    words = len(data.text.split())
    return Usage(provider="echo", model="echo-1", input_tokens=words, output_tokens=words)


class EchoService(Service):
    """Streams its input back; the reference implementation of the service contract."""

    mode = "test"
    name = "echo"
    provider = "echo"
    examples = {
        name: {"text": "Hello from the aiecs page! This text streams back in chunks.",
               "chunks": 8, "delay": 0.25}
        for name in ("echo", "echo_sync", "echo_heavy")
    }

    @operation(description="Stream the text back in chunks, with progress.")
    async def echo(self, ctx: OperationContext, data: EchoInput) -> dict[str, Any]:
        """Stream the text back in chunks, with progress."""
        error = None if data.fail_after_chunks else _failure(data, ctx)
        if error is not None:
            raise error
        parts = _split(data.text, data.chunks)
        for i, part in enumerate(parts, 1):
            if data.delay:
                await asyncio.sleep(data.delay)
            ctx.stream(part)
            ctx.progress(i / len(parts), f"chunk {i}/{len(parts)}")
            if data.fail_after_chunks and i == data.fail_after_chunks:
                error = _failure(data, ctx)
                if error is not None:
                    raise error
        ctx.record_usage(_usage(data))
        return {"text": data.text, "chunks": len(parts)}

    @operation(description="Same as echo, implemented synchronously (runs in a thread).")
    def echo_sync(self, ctx: OperationContext, data: EchoInput) -> dict[str, Any]:
        """Stream the text back, synchronously (runs in a thread)."""
        error = _failure(data, ctx)
        if error is not None:
            raise error
        parts = _split(data.text, data.chunks)
        for i, part in enumerate(parts, 1):
            end = time.monotonic() + data.delay
            while time.monotonic() < end:  # sleep in slices so cancellation is seen
                ctx.raise_if_cancelled()
                time.sleep(min(0.02, max(0.0, end - time.monotonic())))
            ctx.stream(part)
            ctx.progress(i / len(parts), f"chunk {i}/{len(parts)}")
        ctx.record_usage(_usage(data))
        return {"text": data.text, "chunks": len(parts)}

    @operation(heavy=True, description="Same as echo, routed to the heavy queue by default.")
    async def echo_heavy(self, ctx: OperationContext, data: EchoInput) -> dict[str, Any]:
        """Echo, on the heavy queue."""
        return await self.echo(ctx, data)

    @operation(NoInput, description="Do nothing; for overhead benchmarks.")
    async def noop(self, ctx: OperationContext, data: BaseModel) -> dict[str, Any]:
        """Do nothing."""
        return {}


@hookimpl
def register_services(register: Callable[[type[Service]], None]) -> None:
    """Register the test services."""
    register(EchoService)
