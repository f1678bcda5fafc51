"""Embedding in batches: split the texts (:func:`embed_batches`) and run the batches,
recording usage per batch (:func:`embed_batched`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AiecsError, InvalidRequestError, ProviderServerError
from ..models import Usage
from .models import EmbedInput, EmbedResult
from .pricing import make_usage
from .status import raise_converted
from .tokens import estimate_tokens

if TYPE_CHECKING:  # pragma: no cover
    from ..service import OperationContext

__all__ = ["EmbedBatch", "embed_batched", "embed_batches"]


def embed_batches(texts: Iterable[str], max_items: int, max_tokens: int) -> Iterator[list[str]]:
    """``texts`` in order, in batches of at most ``max_items`` texts and ``max_tokens``
    estimated tokens (a text over ``max_tokens`` alone is a batch of its own)."""
    batch: list[str] = []
    tokens = 0
    for text in texts:
        cost = estimate_tokens(text)
        if batch and (len(batch) >= max_items or tokens + cost > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(text)
        tokens += cost
    if batch:
        yield batch


@dataclass
class EmbedBatch:
    """What a provider's embedding call returned for one batch."""

    vectors: list[list[float]]
    """One vector per input text, in the inputs' order."""
    model: str | None = None
    """The model the provider reported, if it did."""
    tokens: int | None = None
    """Input tokens the provider reported; None: estimated here."""


async def embed_batched(
    ctx: OperationContext,
    data: EmbedInput,
    batches: Sequence[list[str]],
    call: Callable[[list[str]], Awaitable[EmbedBatch]],
    *,
    provider: str,
    convert_error: Callable[[Exception], AiecsError | None],
) -> EmbedResult:
    """Embed ``batches`` one after another with ``call`` (the provider's SDK request).

    The rest is here: a batch answered with the wrong number of vectors is a
    :class:`ProviderServerError`; each batch's usage is recorded as it completes (the
    provider's token count, else an estimate); cancelled mid-batch, that batch's input is
    recorded as estimated usage and ``CancelledError`` propagates; an exception is
    ``convert_error(exc)`` (None: not an SDK error, re-raised as it is); progress is
    reported per batch when there are several.
    """
    vectors: list[list[float]] = []
    total: Usage | None = None
    model = data.model
    for number, batch in enumerate(batches, 1):
        estimate = sum(map(estimate_tokens, batch))
        try:
            got = await call(batch)
        except asyncio.CancelledError:
            ctx.record_usage(make_usage(provider, model, estimate, 0, estimated=True))
            raise
        except Exception as exc:
            raise_converted(exc, convert_error(exc))
        if len(got.vectors) != len(batch):
            raise ProviderServerError(
                f"{provider}: asked for {len(batch)} embeddings, got {len(got.vectors)}",
                provider=provider,
            )
        vectors.extend(got.vectors)
        model = got.model or model
        usage = make_usage(
            provider, model, got.tokens if got.tokens is not None else estimate, 0,
            requested_model=data.model, estimated=got.tokens is None,
        )
        ctx.record_usage(usage)
        total = usage if total is None else total + usage
        if len(batches) > 1:
            ctx.progress(number / len(batches), f"embedded batch {number}/{len(batches)}")
    if total is None:
        raise InvalidRequestError(f"{provider}: nothing to embed", provider=provider)
    return EmbedResult(model=model, vectors=vectors, usage=total)
