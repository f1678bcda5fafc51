"""A Service speaking the OpenAI chat-completions and embeddings wire protocol.

Subclasses only say which provider they are (name, environment variables, base URL,
limits); :class:`OpenAICompatService` does the rest. Retries are off in the SDK
(``max_retries=0``): the aiecs worker is the one retry owner. Every request gets an
explicit timeout: the smaller of the provider's configured timeout and the time left
until the task's deadline plus :data:`DEADLINE_GRACE` (so that at the deadline the
worker cancels the call and reports TIMED_OUT, rather than racing the SDK's timeout).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from aiecs_core import (
    AiecsError,
    ConfigurationError,
    OperationContext,
    ProviderConnectionError,
    ProviderServerError,
    RateLimitKey,
    Service,
    StreamInterruptedError,
    Usage,
    operation,
)
from aiecs_core.llm import (
    ChatInput,
    ChatMessage,
    ChatResult,
    EmbedInput,
    EmbedResult,
    ToolCall,
    chat_token_estimate,
    estimate_tokens,
    make_usage,
)
from pydantic import BaseModel

from .errors import convert_error

if TYPE_CHECKING:  # pragma: no cover
    from openai import AsyncOpenAI

__all__ = ["DEADLINE_GRACE", "OpenAICompatService"]

#: Seconds a request may outlive the task's deadline (the worker cancels it first).
DEADLINE_GRACE = 1.0

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _finish_reason(raw: str | None, tool_calls: list[ToolCall]) -> str:
    if raw is None:
        return "tool_calls" if tool_calls else "stop"
    return _FINISH.get(raw, str(raw).lower())


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
        out["content"] = message.content
        return out
    if message.content is not None or message.role != "assistant":
        out["content"] = message.content
    if message.tool_calls:
        out["content"] = message.content
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return out


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class OpenAICompatService(Service):
    """Chat and embeddings over an OpenAI-compatible HTTP API (base class; not registered)."""

    mode = "llm"
    #: Provider name in usage records, errors and rate-limit keys.
    provider: ClassVar[str]
    #: Environment variable holding the API key (required).
    api_key_env: ClassVar[str]
    #: Environment variable overriding the base URL (optional).
    base_url_env: ClassVar[str | None] = None
    #: Base URL when the variable is unset (None: the openai SDK's default).
    default_base_url: ClassVar[str | None] = None
    #: Environment variable with the per-request timeout in seconds.
    timeout_env: ClassVar[str | None] = None
    default_timeout: ClassVar[float] = 120.0
    #: Request parameter carrying ``max_output_tokens``.
    max_tokens_param: ClassVar[str] = "max_completion_tokens"
    #: Most texts, and most estimated tokens, sent in one embeddings request.
    embed_batch_size: ClassVar[int] = 2048
    embed_batch_tokens: ClassVar[int] = 250_000

    def __init__(self) -> None:
        self._client: AsyncOpenAI | None = None
        self._api_key: str | None = None
        self._timeout: float = self.default_timeout

    # -- client --------------------------------------------------------------------------
    def _setting(self, name: str | None) -> str | None:
        if name is None:
            return None
        value = os.environ.get(name, "").strip()
        return value or None

    def client(self) -> AsyncOpenAI:
        """The process's client, created (and the SDK imported) on first use."""
        if self._client is not None:
            return self._client
        api_key = self._setting(self.api_key_env)
        if api_key is None:
            raise ConfigurationError(
                f"{self.provider}: {self.api_key_env} is not set; set it to your "
                f"{self.provider} API key",
                env_var=self.api_key_env,
                provider=self.provider,
            )
        timeout = self.default_timeout
        raw_timeout = self._setting(self.timeout_env)
        if raw_timeout is not None:
            try:
                timeout = float(raw_timeout)
                if not timeout > 0:
                    raise ValueError
            except ValueError:
                raise ConfigurationError(
                    f"{self.provider}: {self.timeout_env} must be a positive number of "
                    f"seconds, got {raw_timeout!r}",
                    env_var=self.timeout_env,
                ) from None
        base_url = self._setting(self.base_url_env) or self.default_base_url

        from openai import AsyncOpenAI  # lazy: only processes that call this provider pay

        self._api_key = api_key
        self._timeout = timeout
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,  # the worker owns retries
        )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _request_timeout(self, ctx: OperationContext) -> float:
        remaining = ctx.time_remaining()
        if remaining is None:
            return self._timeout
        return max(0.05, min(self._timeout, remaining + DEADLINE_GRACE))

    def _error(self, exc: BaseException) -> AiecsError | None:
        return convert_error(exc, provider=self.provider, secrets=[self._api_key])

    # -- rate limits ---------------------------------------------------------------------
    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        if isinstance(data, ChatInput):
            return RateLimitKey(
                provider=self.provider, model=data.model, tokens=chat_token_estimate(data)
            )
        if isinstance(data, EmbedInput):
            return RateLimitKey(
                provider=self.provider,
                model=data.model,
                tokens=sum(estimate_tokens(t) for t in data.texts),
            )
        return None

    # -- chat ------------------------------------------------------------------------------
    def _chat_params(self, data: ChatInput) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": data.model,
            "messages": [_wire_message(m) for m in data.messages],
        }
        if data.temperature is not None:
            params["temperature"] = data.temperature
        if data.max_output_tokens is not None:
            params[self.max_tokens_param] = data.max_output_tokens
        if data.response_format is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": data.response_format.name,
                    "schema": data.response_format.json_schema,
                    "strict": data.response_format.strict,
                },
            }
        if data.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in data.tools
            ]
        if data.tool_choice is not None:
            params["tool_choice"] = data.tool_choice
        return params

    def _estimated_usage(self, data: ChatInput, output: str, model: str | None = None) -> Usage:
        """Usage counted locally when the provider never reported it (never priced)."""
        input_tokens = chat_token_estimate(data, default_output=0) - (data.max_output_tokens or 0)
        return make_usage(
            self.provider,
            model or data.model,
            input_tokens,
            estimate_tokens(output),
            estimated=True,
        )

    def _usage(self, data: ChatInput, model: str, usage: Any) -> Usage:
        return make_usage(
            self.provider,
            model,
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
            requested_model=data.model,
        )

    @operation(description="Chat completion: messages in; text, tool calls and usage out.")
    async def chat(self, ctx: OperationContext, data: ChatInput) -> ChatResult:
        client = self.client()
        params = self._chat_params(data)
        if data.stream:
            return await self._chat_stream(ctx, client, data, params)
        try:
            response = await client.chat.completions.create(
                **params, timeout=self._request_timeout(ctx)
            )
        except asyncio.CancelledError:
            ctx.record_usage(self._estimated_usage(data, ""))
            raise
        except Exception as exc:
            error = self._error(exc)
            if error is None:
                raise
            raise error from exc
        if not response.choices:
            raise ProviderServerError(
                f"{self.provider}: the response has no choices", provider=self.provider
            )
        choice = response.choices[0]
        message = choice.message
        tool_calls = [
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in (message.tool_calls or [])
            if getattr(call, "function", None) is not None
        ]
        text = message.content or ""
        model = response.model or data.model
        usage = (
            self._usage(data, model, response.usage)
            if response.usage is not None
            else self._estimated_usage(data, text, model)
        )
        ctx.record_usage(usage)
        return ChatResult(
            text=text,
            finish_reason=_finish_reason(choice.finish_reason, tool_calls),
            tool_calls=tool_calls,
            parsed=_parse_json(text) if data.response_format is not None else None,
            model=model,
            usage=usage,
        )

    async def _chat_stream(
        self, ctx: OperationContext, client: AsyncOpenAI, data: ChatInput, params: dict
    ) -> ChatResult:
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        reported: Any = None
        model = data.model
        stream = None
        try:
            stream = await client.chat.completions.create(
                **params,
                stream=True,
                stream_options={"include_usage": True},
                timeout=self._request_timeout(ctx),
            )
            async for chunk in stream:
                if chunk.model:
                    model = chunk.model
                if chunk.usage is not None:
                    reported = chunk.usage
                for choice in chunk.choices[:1] if chunk.choices else ():
                    delta = choice.delta
                    if delta is not None and delta.content:
                        parts.append(delta.content)
                        ctx.stream(delta.content)
                    for call in (delta.tool_calls or []) if delta is not None else ():
                        acc = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        if call.id:
                            acc["id"] = call.id
                        if call.function is not None:
                            acc["name"] += call.function.name or ""
                            acc["args"] += call.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except asyncio.CancelledError:
            # Cancelled by the user or the deadline: close the HTTP stream (finally) and
            # record what was consumed so far.
            ctx.record_usage(
                self._usage(data, model, reported)
                if reported is not None
                else self._estimated_usage(data, "".join(parts), model)
            )
            raise
        except Exception as exc:
            error = self._error(exc)
            if error is None:
                raise
            if parts:
                ctx.record_usage(self._estimated_usage(data, "".join(parts), model))
                raise StreamInterruptedError(
                    f"{self.provider}: the stream was cut after output was sent "
                    f"({type(error).__name__}: {error.message})",
                    provider=self.provider,
                    partial_output="".join(parts),
                    cause=type(error).__name__,
                ) from exc
            raise error from exc
        finally:
            if stream is not None:
                await stream.close()
        text = "".join(parts)
        if finish is None:
            # The server closed the stream cleanly but never finished the response.
            ctx.record_usage(self._estimated_usage(data, text, model))
            if parts:
                raise StreamInterruptedError(
                    f"{self.provider}: the stream ended before the response was complete",
                    provider=self.provider,
                    partial_output=text,
                )
            raise ProviderConnectionError(
                f"{self.provider}: the stream ended before any output", provider=self.provider
            )
        tool_calls = [
            ToolCall(id=acc["id"], name=acc["name"], arguments=acc["args"])
            for _, acc in sorted(calls.items())
        ]
        usage = (
            self._usage(data, model, reported)
            if reported is not None
            else self._estimated_usage(data, text, model)
        )
        ctx.record_usage(usage)
        return ChatResult(
            text=text,
            finish_reason=_finish_reason(finish, tool_calls),
            tool_calls=tool_calls,
            parsed=_parse_json(text) if data.response_format is not None else None,
            model=model,
            usage=usage,
        )

    # -- embeddings ------------------------------------------------------------------------
    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        batch: list[str] = []
        tokens = 0
        for text in texts:
            cost = estimate_tokens(text)
            if batch and (
                len(batch) >= self.embed_batch_size or tokens + cost > self.embed_batch_tokens
            ):
                yield batch
                batch, tokens = [], 0
            batch.append(text)
            tokens += cost
        if batch:
            yield batch

    @operation(description="Embed texts: one vector per text, batched to the provider limit.")
    async def embed(self, ctx: OperationContext, data: EmbedInput) -> EmbedResult:
        client = self.client()
        batches = list(self._batches(data.texts))
        vectors: list[list[float]] = []
        total: Usage | None = None
        model = data.model
        for number, batch in enumerate(batches, 1):
            extra: dict[str, Any] = {}
            if data.dimensions is not None:
                extra["dimensions"] = data.dimensions
            try:
                response = await client.embeddings.create(
                    model=data.model,
                    input=batch,
                    encoding_format="float",
                    timeout=self._request_timeout(ctx),
                    **extra,
                )
            except asyncio.CancelledError:
                ctx.record_usage(
                    make_usage(
                        self.provider, model, sum(map(estimate_tokens, batch)), 0, estimated=True
                    )
                )
                raise
            except Exception as exc:
                error = self._error(exc)
                if error is None:
                    raise
                raise error from exc
            items = sorted(response.data, key=lambda item: item.index)
            if len(items) != len(batch):
                raise ProviderServerError(
                    f"{self.provider}: asked for {len(batch)} embeddings, got {len(items)}",
                    provider=self.provider,
                )
            vectors.extend([float(x) for x in item.embedding] for item in items)
            model = response.model or model
            prompt_tokens = getattr(response.usage, "prompt_tokens", None)
            usage = make_usage(
                self.provider,
                model,
                prompt_tokens if prompt_tokens is not None else sum(map(estimate_tokens, batch)),
                0,
                requested_model=data.model,
                estimated=prompt_tokens is None,
            )
            ctx.record_usage(usage)
            total = usage if total is None else total + usage
            if len(batches) > 1:
                ctx.progress(number / len(batches), f"embedded batch {number}/{len(batches)}")
        assert total is not None
        return EmbedResult(model=model, vectors=vectors, usage=total)
