"""Token estimates and the rate-limit key of a call (for rate limiting, never for billing)."""

from __future__ import annotations

import json

from pydantic import BaseModel

from ..service import RateLimitKey
from .models import ChatInput, EmbedInput

__all__ = ["chat_token_estimate", "estimate_tokens", "rate_limit_key"]


def estimate_tokens(text: str | None) -> int:
    """A rough token count: one token per four characters (rounded up)."""
    return -(-len(text) // 4) if text else 0


def rate_limit_key(provider: str, data: BaseModel) -> RateLimitKey | None:
    """The quota a ``chat`` or ``embed`` call draws on: its model, and its estimated tokens
    (a chat's input plus its maximum output, an embedding's texts). None for other input."""
    if isinstance(data, ChatInput):
        return RateLimitKey(provider=provider, model=data.model, tokens=chat_token_estimate(data))
    if isinstance(data, EmbedInput):
        return RateLimitKey(
            provider=provider,
            model=data.model,
            tokens=sum(estimate_tokens(t) for t in data.texts),
        )
    return None


def chat_token_estimate(data: ChatInput, default_output: int = 1024) -> int:
    """Tokens a chat call may consume: its input, estimated, plus its maximum output."""
    total = 0
    for message in data.messages:
        total += 4 + estimate_tokens(message.content)
        for call in message.tool_calls:
            total += estimate_tokens(call.name) + estimate_tokens(call.arguments)
    for tool in data.tools:
        total += estimate_tokens(tool.name + tool.description + json.dumps(tool.parameters))
    if data.response_format is not None:
        total += estimate_tokens(json.dumps(data.response_format.json_schema))
    return total + (data.max_output_tokens or default_output)
