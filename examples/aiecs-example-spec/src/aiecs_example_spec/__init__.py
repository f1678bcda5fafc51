"""The specification's example services, as a plugin of their own.

``chat/text_analyzer`` with ``analyze_text`` and ``document/doc_generator`` with
``generate_document`` (heavy), exactly as the specification's example calls name them.
They compute their answer locally, so they run without any provider or API key: a way to
see the whole path (task, progress, streamed text, result) work before configuring one.

This distribution is not part of the aiecs workspace, so ``uv sync`` never installs it
into a development environment: a plugin of yours that serves ``chat/text_analyzer`` does
not collide with it unless you install both (and then both are refused, loudly).
"""

from __future__ import annotations

from typing import Any

from aiecs_core import OperationContext, Service, hookimpl, operation
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DocGenerator", "TextAnalyzer", "register_services"]


class AnalyzeInput(BaseModel):
    """Input of ``analyze_text``."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=1_000_000)


class DocumentInput(BaseModel):
    """Input of ``generate_document``."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=500)
    length: str = "1000 words"
    style: str = "plain"


_POSITIVE = {"good", "great", "love", "excellent", "happy", "positive"}
_NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "negative"}


class TextAnalyzer(Service):
    """Word-count sentiment of a text (the specification's ``analyze_text`` example)."""

    mode = "chat"
    name = "text_analyzer"

    @operation(description="Word-count sentiment of a text")
    async def analyze_text(self, ctx: OperationContext, data: AnalyzeInput) -> dict[str, Any]:
        words = [w.strip(".,!?").lower() for w in data.text.split()]
        score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
        ctx.progress(1.0, "analysed")
        sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"sentiment": sentiment, "words": len(words), "language": "en"}


class DocGenerator(Service):
    """A document outline, streamed section by section (the heavy-queue example)."""

    mode = "document"
    name = "doc_generator"

    @operation(heavy=True, description="Outline a document, section by section")
    async def generate_document(
        self, ctx: OperationContext, data: DocumentInput
    ) -> dict[str, Any]:
        sections = ["Introduction", "Background", "Analysis", "Conclusion"]
        body = []
        for i, title in enumerate(sections, 1):
            ctx.raise_if_cancelled()
            text = f"## {title}\n{title} of {data.topic} ({data.style}).\n"
            ctx.stream(text)
            ctx.progress(i / len(sections), title)
            body.append(text)
        return {"topic": data.topic, "document": "".join(body), "sections": len(sections)}


@hookimpl
def register_services(register):
    register(TextAnalyzer)
    register(DocGenerator)
