"""The ``openai`` plugin: service ``llm/openai`` with operations ``chat`` and ``embed``.

Importing this module is cheap: the openai SDK is imported when the first call creates
the client.
"""

from __future__ import annotations

from collections.abc import Callable

from aiecs_core import Service, hookimpl
from aiecs_openai_compat import OpenAICompatService

__all__ = ["OpenAIService", "register_services"]


class OpenAIService(OpenAICompatService):
    """OpenAI chat completions and embeddings (OPENAI_API_KEY, optional OPENAI_BASE_URL)."""

    name = "openai"
    provider = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    timeout_env = "OPENAI_TIMEOUT"
    max_tokens_param = "max_completion_tokens"  # on api.openai.com; max_tokens elsewhere
    official_hosts = frozenset({"api.openai.com"})
    max_tokens_field_env = "OPENAI_MAX_TOKENS_FIELD"
    stream_usage_env = "OPENAI_STREAM_USAGE"
    embed_batch_size = 2048  # OpenAI's per-request input limit
    embed_batch_tokens = 250_000  # below its 300k tokens-per-request limit
    examples = {
        "chat": {"model": "gpt-4o-mini", "stream": True,
                 "messages": [{"role": "user",
                               "content": "Say hello to a new aiecs user in one short sentence."}]},
        "embed": {"model": "text-embedding-3-small", "texts": ["hello", "world"]},
    }


@hookimpl
def register_services(register: Callable[[type[Service]], None]) -> None:
    """Register the OpenAI service."""
    register(OpenAIService)
