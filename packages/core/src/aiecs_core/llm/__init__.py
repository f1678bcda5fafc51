"""The provider-neutral chat and embedding contract, and helpers LLM providers share.

Every LLM provider plugin (OpenAI, Vertex AI, xAI, or a third party's) takes the same
inputs and returns the same results, so a caller can switch provider by changing the
``service`` of a task and nothing else:

- ``chat``: :class:`ChatInput` -> :class:`ChatResult`
- ``embed``: :class:`EmbedInput` -> :class:`EmbedResult`

The helpers turn an HTTP status into the right :mod:`aiecs_core.errors` class, read
``Retry-After`` headers, price usage from configuration (never invented), and estimate
tokens for rate limiting. They are pure functions over pydantic models: no SDK, no I/O.

:func:`stream_chat` and :func:`chat_result` are the SDK-agnostic part of a chat call
(pushing stream deltas, recording usage on success, cancellation or a cut stream, and
building the :class:`ChatResult`). They import no SDK either: a provider hands them its
SDK's chunks normalised to :class:`ChatDelta`, and a function converting its SDK's errors.

One concept per module, all re-exported here (import from ``aiecs_core.llm``):

- :mod:`.models`: the chat and embedding inputs and results;
- :mod:`.modelid`: the one rule for model ids (never resource paths);
- :mod:`.status`: HTTP status -> error class, ``Retry-After``, raising converted errors;
- :mod:`.timeouts`: per-request timeouts under the task's deadline, and the notice while a
  provider has not answered yet (:func:`waiting`);
- :mod:`.where`: where a call went, as errors and wait notices name it (host and port,
  model or endpoint);
- :mod:`.pricing`: usage records priced from ``AIECS_PRICES``;
- :mod:`.tokens`: token estimates and rate-limit keys;
- :mod:`.stream`: the chat lifecycle (:func:`stream_chat`, :func:`chat_result`);
- :mod:`.embed`: embedding in batches;
- :mod:`.warmup`: helpers for a provider's ``warm()``.
"""

from __future__ import annotations

from ..redaction import redact  # kept importable from here
from .embed import EmbedBatch, embed_batched, embed_batches
from .modelid import (
    MODEL_ID_PATTERN,
    NAMESPACED_MODEL_ID_PATTERN,
    check_model_id,
    model_id_problem,
)
from .models import (
    ChatInput,
    ChatMessage,
    ChatResult,
    EmbedInput,
    EmbedResult,
    ModelId,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolDefinition,
)
from .pricing import PRICES_ENV, make_usage, price_for, price_version
from .status import error_for_status, parse_retry_after, raise_converted
from .stream import (
    ChatDelta,
    ToolCallDelta,
    chat_result,
    estimated_chat_usage,
    parse_json,
    stream_chat,
)
from .timeouts import WaitNotice, request_timeout, timeout_setting, waiting
from .tokens import chat_token_estimate, estimate_tokens, rate_limit_key
from .warmup import refused_url
from .where import about, host_port, named, request_line

__all__ = [
    "MODEL_ID_PATTERN",
    "NAMESPACED_MODEL_ID_PATTERN",
    "PRICES_ENV",
    "ChatDelta",
    "ChatInput",
    "ChatMessage",
    "ChatResult",
    "EmbedBatch",
    "EmbedInput",
    "EmbedResult",
    "ModelId",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "WaitNotice",
    "about",
    "chat_result",
    "chat_token_estimate",
    "check_model_id",
    "embed_batched",
    "embed_batches",
    "error_for_status",
    "estimate_tokens",
    "estimated_chat_usage",
    "host_port",
    "make_usage",
    "model_id_problem",
    "named",
    "parse_json",
    "parse_retry_after",
    "price_for",
    "price_version",
    "raise_converted",
    "rate_limit_key",
    "redact",
    "refused_url",
    "request_line",
    "request_timeout",
    "stream_chat",
    "timeout_setting",
    "waiting",
]
