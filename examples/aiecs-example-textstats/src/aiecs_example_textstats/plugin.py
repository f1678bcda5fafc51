"""A complete, self-contained aiecs provider plugin.

It registers one service, ``text/stats``, with two operations:

- ``analyze`` (sync): word and sentence counts, the most frequent words and a lexicon
  sentiment. Sync operations run in a worker thread; they poll ``ctx.raise_if_cancelled``.
- ``outline`` (async): streams a document outline section by section, with progress,
  and stops cleanly when cancelled.

It calls no remote API, so it runs anywhere; a provider that does would create its SDK
client lazily on the service instance (one per worker process), close it in ``aclose``,
convert the SDK's errors by type/status code (see :func:`aiecs_core.llm.error_for_status`)
and declare its quota with ``rate_limit_key``. Those places are marked below.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any, Literal

from aiecs_core import (
    InvalidRequestError,
    OperationContext,
    RateLimitKey,
    Service,
    Usage,
    hookimpl,
    operation,
)
from pydantic import BaseModel, ConfigDict, Field

_POSITIVE = {"good", "great", "love", "excellent", "happy", "positive", "wonderful"}
_NEGATIVE = {"bad", "terrible", "hate", "awful", "sad", "negative", "poor"}
_WORD = re.compile(r"[A-Za-z']+")


class AnalyzeInput(BaseModel):
    """Input of ``analyze``."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1_000_000)
    top: int = Field(default=5, ge=0, le=100)
    """How many of the most frequent words to return."""


class OutlineInput(BaseModel):
    """Input of ``outline``."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=500)
    sections: int = Field(default=4, ge=1, le=50)
    style: Literal["plain", "academic"] = "plain"
    delay: float = Field(default=0.0, ge=0.0, le=10.0)
    """Seconds to spend on each section (to watch progress and cancellation)."""


class TextStatsService(Service):
    """Text statistics and outlines, computed locally."""

    mode = "text"
    name = "stats"
    provider = "textstats"

    def __init__(self) -> None:
        # A real provider keeps its (lazily created) SDK client here: one instance per
        # worker process, reused by every call.
        self.calls = 0

    async def aclose(self) -> None:
        # A real provider closes its SDK client here.
        self.calls = 0

    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        # A real provider returns the (provider, model) quota the call draws on, so
        # AIECS_RATE_LIMITS can limit it across every worker.
        return RateLimitKey(provider=self.provider, model="local")

    @operation(description="Word and sentence counts, frequent words and sentiment.")
    def analyze(self, ctx: OperationContext, data: AnalyzeInput) -> dict[str, Any]:
        self.calls += 1
        words = [w.lower() for w in _WORD.findall(data.text)]
        if not words:
            # Errors are aiecs errors: the task ends FAILED with this message.
            raise InvalidRequestError("the text has no words", provider=self.provider)
        counts = Counter(words)
        ctx.raise_if_cancelled()
        score = sum(counts[w] for w in _POSITIVE) - sum(counts[w] for w in _NEGATIVE)
        ctx.progress(1.0, "analysed")
        ctx.record_usage(Usage(provider=self.provider, model="local",
                               input_tokens=len(words), output_tokens=0))
        return {
            "words": len(words),
            "sentences": max(1, len(re.findall(r"[.!?]+", data.text))),
            "top_words": [w for w, _ in counts.most_common(data.top)],
            "sentiment": "positive" if score > 0 else "negative" if score < 0 else "neutral",
        }

    @operation(heavy=True, description="Stream an outline of a document about a topic.")
    async def outline(self, ctx: OperationContext, data: OutlineInput) -> dict[str, Any]:
        self.calls += 1
        titles = ["Introduction", *(f"Part {i}" for i in range(1, data.sections - 1)),
                  "Conclusion"][: data.sections]
        produced: list[str] = []
        try:
            for i, title in enumerate(titles, 1):
                if data.delay:
                    await asyncio.sleep(data.delay)  # cancellation arrives here
                heading = "##" if data.style == "plain" else f"{i}."
                text = f"{heading} {title}: {data.topic}\n"
                ctx.stream(text)  # pushed to the user at once
                ctx.progress(i / len(titles), title)
                produced.append(text)
        finally:
            # Record what was produced even when cancelled (a real provider closes its
            # HTTP stream here and records the usage reported so far).
            ctx.record_usage(Usage(provider=self.provider, model="local", input_tokens=0,
                                   output_tokens=sum(len(t.split()) for t in produced)))
        return {"topic": data.topic, "outline": "".join(produced), "sections": len(produced)}


@hookimpl
def register_services(register):
    register(TextStatsService)
