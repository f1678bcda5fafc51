"""The SDK-agnostic part of a chat call: consume a stream (:func:`stream_chat`) or a whole
reply (:func:`chat_result`), record usage and build the :class:`ChatResult`.

A provider hands :func:`stream_chat` its SDK's chunks normalised to :class:`ChatDelta`, and
a function converting its SDK's errors; nothing here imports an SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AiecsError, ProviderConnectionError, StreamInterruptedError
from ..models import Usage
from .models import ChatInput, ChatResult, ToolCall
from .pricing import make_usage
from .tokens import chat_token_estimate, estimate_tokens

if TYPE_CHECKING:  # pragma: no cover
    from ..service import OperationContext

__all__ = [
    "ChatDelta",
    "ToolCallDelta",
    "chat_result",
    "estimated_chat_usage",
    "parse_json",
    "stream_chat",
]


def estimated_chat_usage(
    provider: str, data: ChatInput, output: str, model: str | None = None
) -> Usage:
    """Usage of a chat call counted locally, when the provider never reported it (a
    cancelled or cut call): the input estimated from ``data``, the output from the text
    ``output`` produced so far. Never priced."""
    input_tokens = chat_token_estimate(data, default_output=0) - (data.max_output_tokens or 0)
    return make_usage(
        provider, model or data.model, input_tokens, estimate_tokens(output), estimated=True
    )


def parse_json(text: str) -> Any:
    """``text`` decoded from JSON, or None when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def chat_result(
    ctx: OperationContext,
    data: ChatInput,
    *,
    provider: str,
    text: str,
    finish_reason: str,
    tool_calls: list[ToolCall],
    model: str,
    usage: Usage | None,
) -> ChatResult:
    """Record a finished chat call's usage and return its :class:`ChatResult`.

    ``usage`` is what the provider reported; None (it reported nothing) records an
    estimate instead (:func:`estimated_chat_usage`). With ``data.response_format``,
    ``parsed`` is ``text`` decoded from JSON (None if it is not JSON).
    """
    if usage is None:
        usage = estimated_chat_usage(provider, data, text, model)
    ctx.record_usage(usage)
    return ChatResult(
        text=text,
        finish_reason=finish_reason,
        tool_calls=tool_calls,
        parsed=parse_json(text) if data.response_format is not None else None,
        model=model,
        usage=usage,
    )


@dataclass(frozen=True)
class ToolCallDelta:
    """A tool call of a streamed reply, or a fragment of one.

    Fragments with the same ``index`` are joined: the last non-empty ``id`` and
    ``signature`` win, ``name`` and ``arguments`` are concatenated. A provider whose SDK
    streams whole calls sends each with an index of its own.
    """

    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""
    signature: str | None = None


@dataclass(frozen=True)
class ChatDelta:
    """One piece of a streamed chat reply, normalised from a provider SDK's chunk for
    :func:`stream_chat`. Every field is optional; one SDK chunk may give several."""

    model: str | None = None
    """The model as the provider reports it (the last one given wins)."""
    text: str = ""
    """Reply text, pushed to the user at once (thoughts and the like are left out)."""
    tool_calls: Sequence[ToolCallDelta] = ()
    """Tool calls, or fragments of them."""
    usage: Any = None
    """The provider's usage report, handed to ``stream_chat``'s ``usage`` (the last wins)."""
    finish: Any = None
    """The provider's finish reason: the response is complete (the last one given wins)."""


async def stream_chat(
    ctx: OperationContext,
    data: ChatInput,
    deltas: AsyncIterator[ChatDelta],
    *,
    provider: str,
    convert_error: Callable[[Exception], AiecsError | None],
    usage: Callable[[str, Any], Usage],
    finish_reason: Callable[[Any, list[ToolCall]], str],
    usage_is_cumulative: bool = False,
) -> ChatResult:
    """Consume a streamed chat reply: push its text to the user, record usage, return the
    :class:`ChatResult`, or raise the right error.

    ``deltas`` is the provider's part: best an async generator that opens the SDK's
    stream, yields its chunks as :class:`ChatDelta` and closes the stream in a ``finally``
    (it is closed, with ``aclose()``, however this call ends). The rest is here:

    - text is pushed with ``ctx.stream`` as it arrives;
    - cancelled (by the user or the deadline): the usage so far is recorded, the
      provider's report if it sent one, else an estimate (never priced), and
      ``CancelledError`` propagates. With ``usage_is_cumulative`` (running totals in every
      chunk), a report counts only once the response has finished;
    - an exception: ``convert_error(exc)`` (None: not an SDK error, re-raised as it is).
      Before any output the converted error is raised (retried if retryable); after
      output, a :class:`StreamInterruptedError` carrying ``partial_output`` (never
      retried), with the usage estimated;
    - a stream that ends without a finish reason is cut too, even if the connection closed
      cleanly: :class:`StreamInterruptedError` after output, else
      :class:`ProviderConnectionError`;
    - otherwise the result, with ``finish_reason(finish, tool_calls)`` and
      ``usage(model, report)`` (an estimate when the provider reported none).
    """
    parts: list[str] = []
    calls: dict[int, list[Any]] = {}
    finish: Any = None
    reported: Any = None
    model = data.model
    try:
        async for delta in deltas:
            if delta.model:
                model = delta.model
            if delta.usage is not None:
                reported = delta.usage
            if delta.text:
                parts.append(delta.text)
                ctx.stream(delta.text)
            for call in delta.tool_calls:
                acc = calls.setdefault(call.index, ["", "", "", None])
                if call.id:
                    acc[0] = call.id
                acc[1] += call.name
                acc[2] += call.arguments
                if call.signature:
                    acc[3] = call.signature
            if delta.finish is not None:
                finish = delta.finish
    except asyncio.CancelledError:
        # Cancelled by the user or the deadline: record what was consumed so far (the
        # stream is closed by the generator's finally, or below).
        final = reported is not None and (finish is not None or not usage_is_cumulative)
        ctx.record_usage(
            usage(model, reported)
            if final
            else estimated_chat_usage(provider, data, "".join(parts), model)
        )
        raise
    except Exception as exc:
        error = convert_error(exc)
        if error is None:
            raise
        if parts:
            ctx.record_usage(estimated_chat_usage(provider, data, "".join(parts), model))
            raise StreamInterruptedError(
                f"{provider}: the stream was cut after output was sent "
                f"({type(error).__name__}: {error.message})",
                provider=provider,
                partial_output="".join(parts),
                cause=type(error).__name__,
            ) from exc
        raise error from exc
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    text = "".join(parts)
    if finish is None:
        # The server closed the stream cleanly but never finished the response.
        ctx.record_usage(estimated_chat_usage(provider, data, text, model))
        if parts:
            raise StreamInterruptedError(
                f"{provider}: the stream ended before the response was complete",
                provider=provider,
                partial_output=text,
            )
        raise ProviderConnectionError(
            f"{provider}: the stream ended before any output", provider=provider
        )
    tool_calls = [
        ToolCall(id=id_, name=name, arguments=arguments, signature=signature)
        for _, (id_, name, arguments, signature) in sorted(calls.items())
    ]
    return chat_result(
        ctx,
        data,
        provider=provider,
        text=text,
        finish_reason=finish_reason(finish, tool_calls),
        tool_calls=tool_calls,
        model=model,
        usage=None if reported is None else usage(model, reported),
    )
