"""The example provider's own tests: aiecs's conformance suite plus its behaviour."""

from __future__ import annotations

import pytest
from aiecs_core import InvalidRequestError, ServiceRegistry
from aiecs_core.testing import ServiceConformance, run_operation
from aiecs_example_textstats import plugin


class TestConformance(ServiceConformance):
    """Every aiecs provider package runs this suite against its plugin."""

    @pytest.fixture
    def plugin(self):
        return plugin

    @pytest.fixture
    def examples(self):
        return {
            ("text", "stats", "analyze"): {"text": "A good day. A great day!"},
            ("text", "stats", "outline"): {"topic": "AI trends", "sections": 3},
        }


@pytest.fixture
def registry():
    registry = ServiceRegistry()
    registry.register_plugin(plugin, "textstats")
    return registry


def test_analyze(registry):
    result, ctx = run_operation(registry, "text", "stats", "analyze",
                                {"text": "Good good. Bad!", "top": 1})
    assert result == {"words": 3, "sentences": 2, "top_words": ["good"],
                      "sentiment": "positive"}
    assert ctx.usage[0].input_tokens == 3


def test_outline_streams_sections(registry):
    result, ctx = run_operation(registry, "text", "stats", "outline",
                                {"topic": "AI", "sections": 3})
    deltas = [e.delta for e in ctx.events if e.type == "stream"]
    assert deltas == ["## Introduction: AI\n", "## Part 1: AI\n", "## Conclusion: AI\n"]
    assert "".join(deltas) == result["outline"]


def test_text_without_words_is_an_invalid_request(registry):
    with pytest.raises(InvalidRequestError):
        run_operation(registry, "text", "stats", "analyze", {"text": "123 456"})
