"""aiecs-providers-openai: the real openai SDK against a local OpenAI-wire server."""

from __future__ import annotations

import importlib.metadata

import pytest
from aiecs_core.testing import ServiceConformance
from aiecs_providers_openai import plugin
from aiecs_providers_openai.plugin import OpenAIService

from tests.providers._openai_wire import USER, OpenAIWireCases
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
def service_cls():
    return OpenAIService


class TestOpenAIWire(OpenAIWireCases):
    provider = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    max_tokens_param = "max_completion_tokens"


class TestOpenAIConformance(ServiceConformance):
    @pytest.fixture
    def plugin(self):
        return plugin

    @pytest.fixture
    def examples(self, monkeypatch):
        with FakeOpenAI() as fake:
            monkeypatch.setenv("OPENAI_API_KEY", fake.api_key)
            monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
            yield {
                ("llm", "openai", "chat"): {"model": "gpt-4o-mini", "messages": USER},
                ("llm", "openai", "embed"): {
                    "model": "text-embedding-3-small",
                    "texts": ["a", "b"],
                },
            }


def test_entry_point_and_service_names():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="aiecs") if ep.name == "openai"]
    assert ep.value == "aiecs_providers_openai.plugin"
    assert (OpenAIService.mode, OpenAIService.name) == ("llm", "openai")
    assert sorted(OpenAIService.operations) == ["chat", "embed"]


def test_default_base_url_is_the_sdks(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    client = OpenAIService().client()
    assert str(client.base_url) == "https://api.openai.com/v1/"
    assert client.max_retries == 0
