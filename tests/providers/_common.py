"""Helpers shared by the provider tests."""

from __future__ import annotations

import time
from typing import Any

from aiecs_core import AiecsError, RecordingContext
from aiecs_core.testing import make_request

__all__ = ["call", "streamed"]


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
