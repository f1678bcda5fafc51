"""The provider-neutral chat and embedding contract, and helpers LLM providers share.

Every LLM provider plugin (OpenAI, Vertex AI, xAI, or a third party's) takes the same
inputs and returns the same results, so a caller can switch provider by changing the
``service`` of a task and nothing else:

- ``chat``: :class:`ChatInput` -> :class:`ChatResult`
- ``embed``: :class:`EmbedInput` -> :class:`EmbedResult`

The helpers turn an HTTP status into the right :mod:`aiecs_core.errors` class, read
``Retry-After`` headers, price usage from configuration (never invented), and estimate
tokens for rate limiting. They are pure functions over pydantic models: no SDK, no I/O.

:func:`stream_chat` and :func:`chat_result` are the SDK-agnostic part of a chat call
(pushing stream deltas, recording usage on success, cancellation or a cut stream, and
building the :class:`ChatResult`). They import no SDK either: a provider hands them its
SDK's chunks normalised to :class:`ChatDelta`, and a function converting its SDK's errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import (
    AiecsError,
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    RateLimitError,
    StreamInterruptedError,
)
from .models import Usage
from .redaction import redact  # noqa: F401 - kept importable from here
from .service import RateLimitKey

if TYPE_CHECKING:  # pragma: no cover
    from .service import OperationContext

__all__ = [
    "PRICES_ENV",
    "ChatDelta",
    "ChatInput",
    "ChatMessage",
    "ChatResult",
    "EmbedBatch",
    "EmbedInput",
    "EmbedResult",
    "ResponseFormat",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "chat_result",
    "chat_token_estimate",
    "embed_batched",
    "embed_batches",
    "error_for_status",
    "estimate_tokens",
    "estimated_chat_usage",
    "make_usage",
    "parse_json",
    "parse_retry_after",
    "price_for",
    "raise_converted",
    "rate_limit_key",
    "redact",
    "request_timeout",
    "stream_chat",
    "timeout_setting",
]

_NAME = r"^[A-Za-z0-9_\-]{1,64}$"


class ToolCall(BaseModel):
    """A function call the model asked for. aiecs returns it; it never executes it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Call identifier, to answer with a ``tool`` message carrying the same id."""
    name: str
    """Function name (one of the request's ``tools``)."""
    arguments: str
    """The arguments as JSON text, exactly as the model produced them."""


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    """``system`` instructions, ``user`` turns, ``assistant`` turns, ``tool`` results."""
    content: str | None = Field(default=None, max_length=2_000_000)
    """Text of the message (may be empty for an assistant turn that only calls tools)."""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Assistant only: the calls the model made in this turn (to continue a conversation)."""
    tool_call_id: str | None = None
    """Tool only: the id of the call this message answers."""
    name: str | None = Field(default=None, pattern=_NAME)
    """Tool only: the function's name (required by providers that key results by name)."""

    @model_validator(mode="after")
    def _check_role(self) -> ChatMessage:
        if self.role in ("system", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.role == "tool" and (self.tool_call_id is None or self.content is None):
            raise ValueError("a tool message needs tool_call_id and content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class ToolDefinition(BaseModel):
    """A function the model may call."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments object."""


class ResponseFormat(BaseModel):
    """Structured output: the reply must be JSON matching ``json_schema``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="response", pattern=_NAME)
    """Name of the schema (OpenAI-style APIs require one)."""
    json_schema: dict[str, Any]
    """JSON Schema the reply must match."""
    strict: bool = True
    """Ask the provider to enforce the schema exactly (where it can)."""


class ChatInput(BaseModel):
    """Input of every provider's ``chat`` operation."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    """Model identifier, as the provider names it (``gpt-4o-mini``, ``gemini-2.5-flash``)."""
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    """The conversation, oldest first."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """Sampling temperature; provider default when unset."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Upper bound on generated tokens; provider default when unset."""
    response_format: ResponseFormat | None = None
    """Structured output: reply with JSON matching this schema (see ``ChatResult.parsed``)."""
    tools: list[ToolDefinition] = Field(default_factory=list, max_length=512)
    """Functions the model may call; calls are returned in ``ChatResult.tool_calls``."""
    tool_choice: Literal["auto", "none", "required"] | None = None
    """Whether the model may, must not, or must call a tool (provider default: auto)."""
    stream: bool = False
    """Push text to the user as stream events as it is generated."""


class ChatResult(BaseModel):
    """Result of every provider's ``chat`` operation."""

    text: str
    """The full reply text (empty when the model only called tools)."""
    finish_reason: str
    """``stop``, ``length``, ``tool_calls``, ``content_filter``, or the provider's own
    (lower-cased) reason for anything else."""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Function calls the model asked for (not executed)."""
    parsed: Any = None
    """With ``response_format``: the reply decoded from JSON (None if it is not JSON)."""
    model: str
    """Model as reported by the provider."""
    usage: Usage
    """Tokens used by this call (and cost, when a price is configured)."""


class EmbedInput(BaseModel):
    """Input of every provider's ``embed`` operation."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    """Embedding model identifier."""
    texts: list[str] = Field(min_length=1, max_length=100_000)
    """Texts to embed; sent in batches of the provider's per-request limit."""
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    """Output dimensionality, for models that can shorten their vectors."""


class EmbedResult(BaseModel):
    """Result of every provider's ``embed`` operation."""

    model: str
    vectors: list[list[float]]
    """One vector per input text, in input order."""
    usage: Usage
    """Tokens of all batches together."""


# --- timeouts --------------------------------------------------------------------------------


def timeout_setting(provider: str, env_var: str | None, default: float) -> float:
    """The per-request timeout in seconds set by the environment variable ``env_var``, or
    ``default`` when it is unset or blank (or ``env_var`` is None).

    Raises :class:`ConfigurationError` naming the variable when it is not a positive number.
    """
    raw = os.environ.get(env_var, "").strip() if env_var else ""
    if not raw:
        return default
    try:
        timeout = float(raw)
        if not timeout > 0:
            raise ValueError
    except ValueError:
        raise ConfigurationError(
            f"{provider}: {env_var} must be a positive number of seconds, got {raw!r}",
            env_var=env_var,
        ) from None
    return timeout


def request_timeout(timeout: float, remaining: float | None, grace: float) -> float:
    """The explicit timeout of one request: the configured ``timeout``, or, when the task
    has a deadline, the time ``remaining`` until it plus ``grace`` if that is less (at
    least 0.05 s). The worker cancels the call at the deadline, rather than racing the
    SDK's timeout."""
    if remaining is None:
        return timeout
    return max(0.05, min(timeout, remaining + grace))


# --- errors --------------------------------------------------------------------------------


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    Header names are matched case-insensitively. Returns None when absent or unreadable.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000.0
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_status(
    status: int | None,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    **details: Any,
) -> ProviderError:
    """The aiecs error for an HTTP error status (decided by the code, never the text).

    400/409/413/422 -> InvalidRequestError, 401/403 -> AuthenticationError,
    404 -> ModelNotFoundError, 429 -> RateLimitError, 408 and 5xx -> ProviderServerError
    (retried). Any other status is an InvalidRequestError (not retried).
    """
    fields: dict[str, Any] = {"provider": provider, "status_code": status, **details}
    if status in (401, 403):
        cls: type[ProviderError] = AuthenticationError
    elif status == 404:
        cls = ModelNotFoundError
    elif status == 429:
        cls = RateLimitError
        fields["retry_after"] = retry_after
    elif status is not None and (status >= 500 or status == 408):
        cls = ProviderServerError
    else:
        cls = InvalidRequestError
    return cls(message, **fields)


def raise_converted(exc: BaseException, error: AiecsError | None) -> NoReturn:
    """Raise ``error``, the aiecs error ``exc`` was converted to, from ``exc``; or ``exc``
    itself when ``error`` is None (not an SDK error: a bug, reported as such)."""
    if error is None:
        raise exc
    raise error from exc


# --- usage and prices --------------------------------------------------------------------

#: Environment variable with model prices: ``{"provider/model": {"input": USD per 1M
#: tokens, "output": USD per 1M tokens}}``. Models without an entry get ``cost=None``.
PRICES_ENV = "AIECS_PRICES"

_prices_cache: tuple[str, dict[str, tuple[float, float]]] | None = None


def _prices() -> dict[str, tuple[float, float]]:
    global _prices_cache
    raw = os.environ.get(PRICES_ENV, "").strip()
    if _prices_cache is not None and _prices_cache[0] == raw:
        return _prices_cache[1]
    table: dict[str, tuple[float, float]] = {}
    if raw:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("must be a JSON object")
            for key, entry in data.items():
                if "/" not in key or not isinstance(entry, dict):
                    raise ValueError(f"entry {key!r} must be 'provider/model': {{...}}")
                unknown = set(entry) - {"input", "output"}
                if unknown:
                    raise ValueError(f"entry {key!r} has unknown fields {sorted(unknown)}")
                prices = (float(entry.get("input", 0.0)), float(entry.get("output", 0.0)))
                if min(prices) < 0 or not all(math.isfinite(p) for p in prices):
                    raise ValueError(f"entry {key!r} must have finite, non-negative prices")
                table[key] = prices
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{PRICES_ENV} is invalid: {exc} (expected "
                '{"provider/model": {"input": <USD per 1M tokens>, "output": <...>}})',
                env_var=PRICES_ENV,
            ) from None
    _prices_cache = (raw, table)
    return table


def price_for(provider: str, *models: str | None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for the first of ``models`` with a price."""
    table = _prices()
    for model in models:
        if model and f"{provider}/{model}" in table:
            return table[f"{provider}/{model}"]
    return None


def make_usage(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    requested_model: str | None = None,
    estimated: bool = False,
) -> Usage:
    """A Usage record, priced when ``AIECS_PRICES`` has the model (reported or requested).

    ``estimated`` usage (counted locally because the provider never reported it, e.g. a
    cancelled stream) is never priced.
    """
    cost = None
    price = None if estimated else price_for(provider, model, requested_model)
    if price is not None:
        cost = round((input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, 10)
    return Usage(
        provider=provider,
        model=model,
        input_tokens=max(0, int(input_tokens)),
        output_tokens=max(0, int(output_tokens)),
        cost=cost,
    )


# --- token estimates (for rate limiting, never for billing) ---------------------------------


def estimate_tokens(text: str | None) -> int:
    """A rough token count: one token per four characters (rounded up)."""
    return -(-len(text) // 4) if text else 0


def rate_limit_key(provider: str, data: BaseModel) -> RateLimitKey | None:
    """The quota a ``chat`` or ``embed`` call draws on: its model, and its estimated tokens
    (a chat's input plus its maximum output, an embedding's texts). None for other input."""
    if isinstance(data, ChatInput):
        return RateLimitKey(provider=provider, model=data.model, tokens=chat_token_estimate(data))
    if isinstance(data, EmbedInput):
        return RateLimitKey(
            provider=provider,
            model=data.model,
            tokens=sum(estimate_tokens(t) for t in data.texts),
        )
    return None


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


def chat_token_estimate(data: ChatInput, default_output: int = 1024) -> int:
    """Tokens a chat call may consume: its input, estimated, plus its maximum output."""
    total = 0
    for message in data.messages:
        total += 4 + estimate_tokens(message.content)
        for call in message.tool_calls:
            total += estimate_tokens(call.name) + estimate_tokens(call.arguments)
    for tool in data.tools:
        total += estimate_tokens(tool.name + tool.description + json.dumps(tool.parameters))
    if data.response_format is not None:
        total += estimate_tokens(json.dumps(data.response_format.json_schema))
    return total + (data.max_output_tokens or default_output)


# --- chat results and streams ----------------------------------------------------------------


def estimated_chat_usage(
    provider: str, data: ChatInput, output: str, model: str | None = None
) -> Usage:
    """Usage of a chat call counted locally, when the provider never reported it (a
    cancelled or cut call): the input estimated from ``data``, the output from the text
    ``output`` produced so far. Never priced."""
    input_tokens = chat_token_estimate(data, default_output=0) - (data.max_output_tokens or 0)
    return make_usage(
        provider, model or data.model, input_tokens, estimate_tokens(output), estimated=True
    )


def parse_json(text: str) -> Any:
    """``text`` decoded from JSON, or None when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def chat_result(
    ctx: OperationContext,
    data: ChatInput,
    *,
    provider: str,
    text: str,
    finish_reason: str,
    tool_calls: list[ToolCall],
    model: str,
    usage: Usage | None,
) -> ChatResult:
    """Record a finished chat call's usage and return its :class:`ChatResult`.

    ``usage`` is what the provider reported; None (it reported nothing) records an
    estimate instead (:func:`estimated_chat_usage`). With ``data.response_format``,
    ``parsed`` is ``text`` decoded from JSON (None if it is not JSON).
    """
    if usage is None:
        usage = estimated_chat_usage(provider, data, text, model)
    ctx.record_usage(usage)
    return ChatResult(
        text=text,
        finish_reason=finish_reason,
        tool_calls=tool_calls,
        parsed=parse_json(text) if data.response_format is not None else None,
        model=model,
        usage=usage,
    )


@dataclass(frozen=True)
class ToolCallDelta:
    """A tool call of a streamed reply, or a fragment of one.

    Fragments with the same ``index`` are joined: the last non-empty ``id`` wins, ``name``
    and ``arguments`` are concatenated. A provider whose SDK streams whole calls sends each
    with an index of its own.
    """

    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class ChatDelta:
    """One piece of a streamed chat reply, normalised from a provider SDK's chunk for
    :func:`stream_chat`. Every field is optional; one SDK chunk may give several."""

    model: str | None = None
    """The model as the provider reports it (the last one given wins)."""
    text: str = ""
    """Reply text, pushed to the user at once (thoughts and the like are left out)."""
    tool_calls: Sequence[ToolCallDelta] = ()
    """Tool calls, or fragments of them."""
    usage: Any = None
    """The provider's usage report, handed to ``stream_chat``'s ``usage`` (the last wins)."""
    finish: Any = None
    """The provider's finish reason: the response is complete (the last one given wins)."""


async def stream_chat(
    ctx: OperationContext,
    data: ChatInput,
    deltas: AsyncIterator[ChatDelta],
    *,
    provider: str,
    convert_error: Callable[[Exception], AiecsError | None],
    usage: Callable[[str, Any], Usage],
    finish_reason: Callable[[Any, list[ToolCall]], str],
    usage_is_cumulative: bool = False,
) -> ChatResult:
    """Consume a streamed chat reply: push its text to the user, record usage, return the
    :class:`ChatResult`, or raise the right error.

    ``deltas`` is the provider's part: best an async generator that opens the SDK's
    stream, yields its chunks as :class:`ChatDelta` and closes the stream in a ``finally``
    (it is closed, with ``aclose()``, however this call ends). The rest is here:

    - text is pushed with ``ctx.stream`` as it arrives;
    - cancelled (by the user or the deadline): the usage so far is recorded, the
      provider's report if it sent one, else an estimate (never priced), and
      ``CancelledError`` propagates. With ``usage_is_cumulative`` (running totals in every
      chunk), a report counts only once the response has finished;
    - an exception: ``convert_error(exc)`` (None: not an SDK error, re-raised as it is).
      Before any output the converted error is raised (retried if retryable); after
      output, a :class:`StreamInterruptedError` carrying ``partial_output`` (never
      retried), with the usage estimated;
    - a stream that ends without a finish reason is cut too, even if the connection closed
      cleanly: :class:`StreamInterruptedError` after output, else
      :class:`ProviderConnectionError`;
    - otherwise the result, with ``finish_reason(finish, tool_calls)`` and
      ``usage(model, report)`` (an estimate when the provider reported none).
    """
    parts: list[str] = []
    calls: dict[int, list[str]] = {}
    finish: Any = None
    reported: Any = None
    model = data.model
    try:
        async for delta in deltas:
            if delta.model:
                model = delta.model
            if delta.usage is not None:
                reported = delta.usage
            if delta.text:
                parts.append(delta.text)
                ctx.stream(delta.text)
            for call in delta.tool_calls:
                acc = calls.setdefault(call.index, ["", "", ""])
                if call.id:
                    acc[0] = call.id
                acc[1] += call.name
                acc[2] += call.arguments
            if delta.finish is not None:
                finish = delta.finish
    except asyncio.CancelledError:
        # Cancelled by the user or the deadline: record what was consumed so far (the
        # stream is closed by the generator's finally, or below).
        final = reported is not None and (finish is not None or not usage_is_cumulative)
        ctx.record_usage(
            usage(model, reported)
            if final
            else estimated_chat_usage(provider, data, "".join(parts), model)
        )
        raise
    except Exception as exc:
        error = convert_error(exc)
        if error is None:
            raise
        if parts:
            ctx.record_usage(estimated_chat_usage(provider, data, "".join(parts), model))
            raise StreamInterruptedError(
                f"{provider}: the stream was cut after output was sent "
                f"({type(error).__name__}: {error.message})",
                provider=provider,
                partial_output="".join(parts),
                cause=type(error).__name__,
            ) from exc
        raise error from exc
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    text = "".join(parts)
    if finish is None:
        # The server closed the stream cleanly but never finished the response.
        ctx.record_usage(estimated_chat_usage(provider, data, text, model))
        if parts:
            raise StreamInterruptedError(
                f"{provider}: the stream ended before the response was complete",
                provider=provider,
                partial_output=text,
            )
        raise ProviderConnectionError(
            f"{provider}: the stream ended before any output", provider=provider
        )
    tool_calls = [
        ToolCall(id=id_, name=name, arguments=arguments)
        for _, (id_, name, arguments) in sorted(calls.items())
    ]
    return chat_result(
        ctx,
        data,
        provider=provider,
        text=text,
        finish_reason=finish_reason(finish, tool_calls),
        tool_calls=tool_calls,
        model=model,
        usage=None if reported is None else usage(model, reported),
    )


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
