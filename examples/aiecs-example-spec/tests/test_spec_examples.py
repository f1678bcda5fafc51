"""The example's own tests: aiecs's conformance suite (entry point included) plus the
specification's two calls, in-process."""

from __future__ import annotations

import aiecs_example_spec
import pytest
from aiecs_core import ServiceRegistry
from aiecs_core.testing import ServiceConformance, run_operation


class TestConformance(ServiceConformance):
    @pytest.fixture
    def plugin(self):
        return aiecs_example_spec

    @pytest.fixture
    def examples(self):
        return {
            ("chat", "text_analyzer", "analyze_text"): {"text": "A good day"},
            ("document", "doc_generator", "generate_document"): {"topic": "AI"},
        }


@pytest.fixture
def registry():
    registry = ServiceRegistry()
    registry.register_plugin(aiecs_example_spec, "spec_examples")
    return registry


def test_analyze_text(registry):
    result, _ = run_operation(registry, "chat", "text_analyzer", "analyze_text",
                              {"text": "Analyze the sentiment tendency of this text"})
    assert result == {"sentiment": "neutral", "words": 7, "language": "en"}


def test_generate_document_streams_four_sections(registry):
    assert registry.operation("document", "doc_generator", "generate_document").heavy
    result, ctx = run_operation(registry, "document", "doc_generator", "generate_document",
                                {"topic": "AI development trends", "style": "academic paper"})
    deltas = [e.delta for e in ctx.events if e.type == "stream"]
    assert len(deltas) == result["sections"] == 4
    assert "".join(deltas) == result["document"]
