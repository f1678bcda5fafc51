"""The specification's example services, for the end-to-end tests.

``chat/text_analyzer`` with ``analyze_text`` and ``document/doc_generator`` with
``generate_document`` (heavy), exactly as the specification's example calls name them.
They compute their answer locally so the tests need no provider. ``test/buggy`` has an
operation that raises a plain exception, as a provider with a bug would.
"""

from __future__ import annotations

from typing import Any

from aiecs_core import OperationContext, Service, hookimpl, operation
from pydantic import BaseModel, ConfigDict


class AnalyzeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class DocumentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    length: str = "1000 words"
    style: str = "plain"


_POSITIVE = {"good", "great", "love", "excellent", "happy", "positive"}
_NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "negative"}


class TextAnalyzer(Service):
    mode = "chat"
    name = "text_analyzer"

    @operation(description="Word-count sentiment of a text")
    async def analyze_text(self, ctx: OperationContext, data: AnalyzeInput) -> dict[str, Any]:
        words = [w.strip(".,!?").lower() for w in data.text.split()]
        score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
        ctx.progress(1.0, "analysed")
        sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"sentiment": sentiment, "words": len(words), "language": "en"}


class BuggyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str = ""


class Buggy(Service):
    """A provider with a bug: its operation raises a plain exception whose text holds a
    credential, as a careless SDK wrapper might."""

    mode = "test"
    name = "buggy"

    @operation(description="Raise a KeyError that quotes a secret")
    async def explode(self, ctx: OperationContext, data: BuggyInput) -> dict[str, Any]:
        ctx.stream("partial ")
        raise KeyError(f"no route for api key {data.secret or 'sk-proj-CANARY0123456789'}")


class DocGenerator(Service):
    mode = "document"
    name = "doc_generator"

    @operation(heavy=True, description="Outline a document, section by section")
    async def generate_document(
        self, ctx: OperationContext, data: DocumentInput
    ) -> dict[str, Any]:
        sections = ["Introduction", "Background", "Analysis", "Conclusion"]
        body = []
        for i, title in enumerate(sections, 1):
            text = f"## {title}\n{title} of {data.topic} ({data.style}).\n"
            ctx.stream(text)
            ctx.progress(i / len(sections), title)
            body.append(text)
        return {"topic": data.topic, "document": "".join(body), "sections": len(sections)}


@hookimpl
def register_services(register):
    register(TextAnalyzer)
    register(DocGenerator)
    register(Buggy)
