"""The OpenAI chat-completions wire format of a Vertex AI endpoint's chat route
(``POST .../v1beta1/projects/{p}/locations/{l}/endpoints/{e}/chat/completions``, offered
by Model Garden and vLLM deployments): the request body for a
:class:`aiecs_core.llm.ChatInput`, and the reply (JSON, or server-sent events) read back.

No SDK: the body is built here and sent with httpx2 (see ``endpoint.EndpointService``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiecs_core.llm import ChatDelta, ChatInput, ChatMessage, ToolCall, ToolCallDelta
from pydantic import BaseModel

__all__ = ["chat_body", "finish_reason", "reply", "sse_deltas", "usage_counts"]

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "function_call": "tool_calls", "content_filter": "content_filter"}


def finish_reason(raw: Any, tool_calls: list[ToolCall]) -> str:
    """The OpenAI-style finish reason of an endpoint's raw one."""
    if not raw:
        return "tool_calls" if tool_calls else "stop"
    return _FINISH.get(str(raw), str(raw).lower())


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return out


def chat_body(data: ChatInput) -> dict[str, Any]:
    """The request body. The output limit is sent as ``max_tokens`` (what vLLM and Model
    Garden containers read); a stream asks for usage (``stream_options.include_usage``)."""
    body: dict[str, Any] = {"model": data.model,
                            "messages": [_message(m) for m in data.messages]}
    if data.temperature is not None:
        body["temperature"] = data.temperature
    if data.max_output_tokens is not None:
        body["max_tokens"] = data.max_output_tokens
    if data.response_format is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": data.response_format.name, "schema": data.response_format.json_schema,
            "strict": data.response_format.strict}}
    if data.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters,
            **({} if t.strict is None else {"strict": t.strict})}}
            for t in data.tools]
    if isinstance(data.tool_choice, BaseModel):
        body["tool_choice"] = data.tool_choice.model_dump()
    elif data.tool_choice is not None:
        body["tool_choice"] = data.tool_choice
    if data.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def usage_counts(usage: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a usage block (None: none reported)."""
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def reply(body: Any) -> tuple[str, list[ToolCall], Any, str | None, Any] | None:
    """``(text, tool_calls, finish_reason, model, usage)`` of a JSON reply (None when it
    has no choices)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message") or {}
    calls = [
        ToolCall(id=c.get("id") or f"call_{i}", name=(c.get("function") or {}).get("name", ""),
                 arguments=(c.get("function") or {}).get("arguments") or "{}")
        for i, c in enumerate(message.get("tool_calls") or [])
    ]
    return (message.get("content") or "", calls, choices[0].get("finish_reason"),
            body.get("model"), body.get("usage"))


async def sse_deltas(lines: AsyncIterator[str]) -> AsyncIterator[ChatDelta]:
    """The :class:`ChatDelta` of each ``data:`` event of a chat-completions stream, until
    ``data: [DONE]``. An event that is not JSON is skipped."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        choices = chunk.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        yield ChatDelta(
            model=chunk.get("model"),
            usage=chunk.get("usage"),
            text=delta.get("content") or "",
            tool_calls=[
                ToolCallDelta(index=c.get("index", i), id=c.get("id"),
                              name=(c.get("function") or {}).get("name") or "",
                              arguments=(c.get("function") or {}).get("arguments") or "")
                for i, c in enumerate(delta.get("tool_calls") or [])
            ],
            finish=choice.get("finish_reason") or None,
        )
