"""aiecs-providers-openai: the real openai SDK against a local OpenAI-wire server."""

from __future__ import annotations

import pytest
from aiecs_providers_openai import plugin
from aiecs_providers_openai.plugin import OpenAIService

from tests.providers._openai_wire import OpenAIWireCases, OpenAIWireConformance


@pytest.fixture
def service_cls():
    return OpenAIService


class TestOpenAIWire(OpenAIWireCases):
    provider = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    max_tokens_param = "max_completion_tokens"
    default_base_url = "https://api.openai.com/v1/"  # the SDK's


class TestOpenAIConformance(OpenAIWireConformance):
    cases = TestOpenAIWire
    plugin_module = plugin
    chat_model = "gpt-4o-mini"
    embed_model = "text-embedding-3-small"
