"""The ``xai`` plugin: service ``llm/xai`` with operations ``chat`` and ``embed``.

xAI's REST API speaks the OpenAI wire protocol, so the service is the shared
:class:`aiecs_openai_compat.OpenAICompatService` pointed at ``https://api.x.ai/v1``.
"""

from __future__ import annotations

from collections.abc import Callable

from aiecs_core import Service, hookimpl
from aiecs_openai_compat import OpenAICompatService

__all__ = ["XAIService", "register_services"]


class XAIService(OpenAICompatService):
    """xAI Grok chat completions and embeddings (XAI_API_KEY, optional XAI_BASE_URL)."""

    name = "xai"
    provider = "xai"
    api_key_env = "XAI_API_KEY"
    base_url_env = "XAI_BASE_URL"
    default_base_url = "https://api.x.ai/v1"
    timeout_env = "XAI_TIMEOUT"
    max_tokens_param = "max_tokens"
    official_hosts = frozenset({"api.x.ai"})
    max_tokens_field_env = "XAI_MAX_TOKENS_FIELD"
    stream_usage_env = "XAI_STREAM_USAGE"
    embed_batch_size = 128
    embed_batch_tokens = 100_000
    examples = {
        "chat": {"model": "grok-3-mini", "stream": True,
                 "messages": [{"role": "user",
                               "content": "Say hello to a new aiecs user in one short sentence."}]},
        # the embedding models a team may use: GET /v1/embedding-models (see the README)
        "embed": {"model": "v1", "texts": ["hello", "world"]},
    }


@hookimpl
def register_services(register: Callable[[type[Service]], None]) -> None:
    """Register the xAI service."""
    register(XAIService)
