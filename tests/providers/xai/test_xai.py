"""aiecs-providers-xai: the real openai SDK against a local server speaking xAI's
OpenAI-compatible wire protocol."""

from __future__ import annotations

import importlib.metadata

import pytest
from aiecs_core.testing import ServiceConformance
from aiecs_providers_xai import plugin
from aiecs_providers_xai.plugin import XAIService

from tests.providers._openai_wire import USER, OpenAIWireCases
from tests.support.fake_openai import FakeOpenAI


@pytest.fixture
def service_cls():
    return XAIService


class TestXAIWire(OpenAIWireCases):
    provider = "xai"
    api_key_env = "XAI_API_KEY"
    base_url_env = "XAI_BASE_URL"
    max_tokens_param = "max_tokens"


class TestXAIConformance(ServiceConformance):
    @pytest.fixture
    def plugin(self):
        return plugin

    @pytest.fixture
    def examples(self, monkeypatch):
        with FakeOpenAI() as fake:
            monkeypatch.setenv("XAI_API_KEY", fake.api_key)
            monkeypatch.setenv("XAI_BASE_URL", fake.base_url)
            yield {
                ("llm", "xai", "chat"): {"model": "grok-3-mini", "messages": USER},
                ("llm", "xai", "embed"): {"model": "v1", "texts": ["a", "b"]},
            }


def test_entry_point_and_service_names():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="aiecs") if ep.name == "xai"]
    assert ep.value == "aiecs_providers_xai.plugin"
    assert (XAIService.mode, XAIService.name) == ("llm", "xai")
    assert sorted(XAIService.operations) == ["chat", "embed"]


def test_default_base_url_is_xais(monkeypatch):
    monkeypatch.setenv("XAI_API_KEY", "xai-test")
    client = XAIService().client()
    assert str(client.base_url) == "https://api.x.ai/v1/"
    assert client.max_retries == 0


def test_the_shared_package_exposes_no_service():
    dist = importlib.metadata.distribution("aiecs-openai-compat")
    assert not [ep for ep in dist.entry_points if ep.group == "aiecs"]
