"""aiecs-providers-xai: the real openai SDK against a local server speaking xAI's
OpenAI-compatible wire protocol."""

from __future__ import annotations

import importlib.metadata

import pytest
from aiecs_providers_xai import plugin
from aiecs_providers_xai.plugin import XAIService

from tests.providers._openai_wire import OpenAIWireCases, OpenAIWireConformance


@pytest.fixture
def service_cls():
    return XAIService


class TestXAIWire(OpenAIWireCases):
    provider = "xai"
    api_key_env = "XAI_API_KEY"
    base_url_env = "XAI_BASE_URL"
    max_tokens_param = "max_tokens"
    default_base_url = "https://api.x.ai/v1/"


class TestXAIConformance(OpenAIWireConformance):
    cases = TestXAIWire
    plugin_module = plugin
    chat_model = "grok-3-mini"
    embed_model = "v1"


def test_the_shared_package_exposes_no_service():
    dist = importlib.metadata.distribution("aiecs-openai-compat")
    assert not [ep for ep in dist.entry_points if ep.group == "aiecs"]
