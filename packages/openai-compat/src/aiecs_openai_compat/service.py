"""A Service speaking the OpenAI chat-completions and embeddings wire protocol.

Subclasses only say which provider they are (name, environment variables, base URL,
limits); :class:`OpenAICompatService` does the rest. Retries are off in the SDK
(``max_retries=0``): the aiecs worker is the one retry owner. Every request gets an
explicit timeout: the smaller of the provider's configured timeout and the time left
until the task's deadline plus :data:`DEADLINE_GRACE` (so that at the deadline the
worker cancels the call and reports TIMED_OUT, rather than racing the SDK's timeout).

Servers that are not the provider's own (``OPENAI_BASE_URL`` pointed at vLLM, llama.cpp,
Ollama, LM Studio or a gateway) differ in two request fields, each with a setting:

- the output limit: ``max_completion_tokens`` on the official OpenAI endpoint,
  ``max_tokens`` on any other base URL (``<PREFIX>_MAX_TOKENS_FIELD`` overrides: ``auto``,
  ``max_tokens`` or ``max_completion_tokens``). In ``auto``, a 400 whose body names the
  field sent (``error.param``) is retried once with the other one, which is then kept
  for the process;
- streamed usage: ``stream_options.include_usage`` is sent with every stream
  (``<PREFIX>_STREAM_USAGE``: ``auto``, ``on`` or ``off``). In ``auto``, a stream request
  refused with a 400 that names ``stream_options`` (in ``error.param``, or failing that
  in its message) is retried once without it, which is then kept for the process.
  Without a usage report the usage is estimated (``estimated: true``, never priced).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from aiecs_core import (
    AiecsError,
    ConfigurationError,
    OperationContext,
    ProviderServerError,
    RateLimitKey,
    Service,
    Usage,
    operation,
    register_secret,
)
from aiecs_core.llm import (
    ChatDelta,
    ChatInput,
    ChatMessage,
    ChatResult,
    EmbedBatch,
    EmbedInput,
    EmbedResult,
    ToolCall,
    ToolCallDelta,
    WaitNotice,
    chat_result,
    check_model_id,
    embed_batched,
    embed_batches,
    estimated_chat_usage,
    host_port,
    make_usage,
    raise_converted,
    rate_limit_key,
    refused_url,
    request_timeout,
    stream_chat,
    timeout_setting,
    waiting,
)
from pydantic import BaseModel

from .errors import convert_error
from .http import http_client

if TYPE_CHECKING:  # pragma: no cover
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionMessageParam

__all__ = ["DEADLINE_GRACE", "LIMIT_FIELDS", "OpenAICompatService"]

#: The request fields that can carry ``max_output_tokens``.
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
_AUTO = "auto"

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


def _field(obj: Any, name: str) -> Any:
    """``obj``'s field ``name``: a JSON object's key or an SDK model's attribute (None
    when missing)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _tool_call_delta(call: Any) -> ToolCallDelta:
    """A streamed tool-call fragment (the openai SDK's ``ChoiceDeltaToolCall``)."""
    function = call.function
    if function is None:
        return ToolCallDelta(index=call.index, id=call.id)
    return ToolCallDelta(
        index=call.index, id=call.id, name=function.name or "", arguments=function.arguments or ""
    )


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


_dry_run_done = False


def _dry_run() -> None:
    """A streamed chat, a chat and an embeddings request through the SDK to a refused local
    port, on a throwaway loop in this (warm-up) thread: the modules the SDK and httpx load
    on a first request (anyio's backend, streaming, parsing) are loaded here rather than
    on the worker's loop. Once per process; nothing leaves the machine."""
    global _dry_run_done
    if _dry_run_done:
        return
    from openai import APIConnectionError, AsyncOpenAI

    async def requests(base_url: str) -> None:
        client = AsyncOpenAI(api_key="warm-up", base_url=base_url, max_retries=0, timeout=2)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "warm-up"}]
        try:
            for call in (
                lambda: client.chat.completions.create(model="m", messages=messages, stream=True),
                lambda: client.chat.completions.create(model="m", messages=messages),
                lambda: client.embeddings.create(model="m", input=["warm-up"]),
            ):
                with contextlib.suppress(APIConnectionError):
                    await call()
        finally:
            await client.close()

    with refused_url() as url:
        asyncio.run(requests(url))
    _dry_run_done = True


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
    #: Request field carrying ``max_output_tokens`` on the provider's own endpoint.
    max_tokens_param: ClassVar[str] = "max_completion_tokens"
    #: Hosts of the provider's own endpoint (any other base URL gets ``max_tokens``).
    official_hosts: ClassVar[frozenset[str]] = frozenset()
    #: Environment variable choosing the limit field (``auto``, or one of LIMIT_FIELDS).
    max_tokens_field_env: ClassVar[str | None] = None
    #: Environment variable: ask for usage in streams (``auto``, ``on``, ``off``).
    stream_usage_env: ClassVar[str | None] = None
    #: Most texts, and most estimated tokens, sent in one embeddings request.
    embed_batch_size: ClassVar[int] = 2048
    embed_batch_tokens: ClassVar[int] = 250_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        api_key_env = getattr(cls, "api_key_env", None)
        if api_key_env and api_key_env not in cls.secret_env:
            cls.secret_env = (*cls.secret_env, api_key_env)  # redacted everywhere

    def __init__(self) -> None:
        self._client: AsyncOpenAI | None = None
        self._api_key: str | None = None
        self._timeout: float = self.default_timeout
        self._client_lock = threading.Lock()
        self._base_url: str | None = None
        #: What this process learned from 400s in ``auto`` mode (see the module doc).
        self._learned_limit_field: str | None = None
        self._stream_options_refused = False

    # -- client --------------------------------------------------------------------------
    def _setting(self, name: str | None) -> str | None:
        if name is None:
            return None
        value = os.environ.get(name, "").strip()
        return value or None

    def client(self) -> AsyncOpenAI:
        """The process's client, created (and the SDK imported) on first use.

        Blocking the first time (importing openai takes about a second): the operations
        get it with :meth:`aclient`, which builds it in a thread.
        """
        if self._client is not None:
            return self._client
        with self._client_lock:  # warm() in its thread and a first call, at once
            if self._client is None:
                self._client = self._make_client()
        return self._client

    async def aclient(self) -> AsyncOpenAI:
        """:meth:`client`, built off the event loop if it is not built yet."""
        if self._client is not None:
            return self._client
        return await asyncio.to_thread(self.client)

    def warm(self) -> None:
        """Import the SDK and build the client now, in the worker's warm-up thread, when
        the API key is set (without it, the first call fails at once anyway); then load
        what the SDK loads on its first requests (see :func:`_dry_run`)."""
        if self._setting(self.api_key_env) is None:
            return
        client = self.client()
        client.chat.completions, client.embeddings  # noqa: B018 - resources load lazily
        _dry_run()

    def _make_client(self) -> AsyncOpenAI:
        api_key = self._setting(self.api_key_env)
        if api_key is None:
            raise ConfigurationError(
                f"{self.provider}: {self.api_key_env} is not set; set it to your "
                f"{self.provider} API key",
                env_var=self.api_key_env,
                provider=self.provider,
            )
        timeout = timeout_setting(self.provider, self.timeout_env, self.default_timeout)
        base_url = self._setting(self.base_url_env) or self.default_base_url

        from openai import AsyncOpenAI  # lazy: only processes that call this provider pay

        register_secret(api_key)  # whatever the key's shape, it never leaves the worker
        self._api_key = api_key
        self._timeout = timeout
        self._base_url = base_url
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,  # the worker owns retries
            http_client=http_client(timeout, base_url),
        )

    async def aclose(self) -> None:
        """Close the client (its connections)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _request_timeout(self, ctx: OperationContext) -> float:
        return request_timeout(self._timeout, ctx.time_remaining(), DEADLINE_GRACE)

    def _wait_notice(self, ctx: OperationContext, client: AsyncOpenAI, model: str,
                     timeout: float) -> WaitNotice:
        """Tells the user while the server has sent nothing yet (see WaitNotice)."""
        return waiting(ctx, self.provider, host_port(client.base_url), timeout, model=model)

    def _error(self, exc: BaseException, model: str | None = None) -> AiecsError | None:
        return convert_error(exc, provider=self.provider, secrets=[self._api_key],
                             model=model)

    # -- rate limits ---------------------------------------------------------------------
    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        """The rate-limit key of a call: provider and model."""
        return rate_limit_key(self.provider, data)

    # -- server differences ------------------------------------------------------------------
    def _choice(self, env: str | None, allowed: tuple[str, ...]) -> str:
        value = (self._setting(env) or _AUTO).lower()
        if value not in (_AUTO, *allowed):
            raise ConfigurationError(
                f"{self.provider}: {env} must be one of {', '.join((_AUTO, *allowed))}, "
                f"got {value!r}",
                env_var=env,
                provider=self.provider,
            )
        return value

    def is_official_endpoint(self) -> bool:
        """Whether the base URL is the provider's own endpoint (unset: the default one)."""
        base_url = self._base_url or self._setting(self.base_url_env) or self.default_base_url
        if base_url is None:
            return True  # the SDK's default, api.openai.com
        from urllib.parse import urlsplit

        return (urlsplit(base_url).hostname or "").lower() in self.official_hosts

    def limit_field(self) -> str:
        """The request field carrying ``max_output_tokens``: the setting, else
        ``max_tokens_param`` on the provider's own endpoint and ``max_tokens`` elsewhere
        (or what a 400 taught this process, in ``auto``)."""
        chosen = self._choice(self.max_tokens_field_env, LIMIT_FIELDS)
        if chosen != _AUTO:
            return chosen
        if self._learned_limit_field is not None:
            return self._learned_limit_field
        return self.max_tokens_param if self.is_official_endpoint() else "max_tokens"

    def stream_usage(self) -> str:
        """``on``, ``off`` or ``auto`` (ask; a 400 means: not again, in this process)."""
        return self._choice(self.stream_usage_env, ("on", "off"))

    def _retry_params(self, params: dict[str, Any], exc: BaseException) -> dict[str, Any] | None:
        """The request to send instead after a 400 (``exc``) that a server difference
        explains, in ``auto`` mode; None: no retry. Decided by the body's ``error.param``
        naming the field sent (for ``stream_options``, servers that put no ``param``
        are recognised by the name in the message: the one text match here)."""
        import openai

        if not isinstance(exc, openai.BadRequestError):
            return None
        body = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error", body)
        param = inner.get("param") if isinstance(inner, dict) else None
        sent = next((f for f in LIMIT_FIELDS if f in params), None)
        if (
            sent is not None
            and param == sent
            and self._choice(self.max_tokens_field_env, LIMIT_FIELDS) == _AUTO
        ):
            other = next(f for f in LIMIT_FIELDS if f != sent)
            retry = {k: v for k, v in params.items() if k != sent}
            retry[other] = params[sent]
            return retry
        message = inner.get("message") if isinstance(inner, dict) else None
        names_it = param == "stream_options" or (
            param is None and isinstance(message, str) and "stream_options" in message
        )
        if "stream_options" in params and names_it and self.stream_usage() == _AUTO:
            return {k: v for k, v in params.items() if k != "stream_options"}
        return None

    def _learn(self, sent: dict[str, Any], retried: dict[str, Any]) -> None:
        """A retry of ``sent`` as ``retried`` succeeded: keep the difference."""
        if "stream_options" in sent and "stream_options" not in retried:
            self._stream_options_refused = True
        field = next((f for f in LIMIT_FIELDS if f in retried and f not in sent), None)
        if field is not None:
            self._learned_limit_field = field

    async def _create(self, client: AsyncOpenAI, params: dict[str, Any], **kw: Any) -> Any:
        """``chat.completions.create`` (a streamed reply) or :meth:`_post_chat` (the whole
        reply, as JSON), retried once when a 400 is explained by a server difference
        (:meth:`_retry_params`)."""
        send = client.chat.completions.create if kw.get("stream") else self._post_chat(client)
        try:
            return await send(**params, **kw)
        except Exception as exc:
            retry = self._retry_params(params, exc)
            if retry is None:
                raise
        response = await send(**retry, **kw)
        self._learn(params, retry)
        return response

    def _post_chat(self, client: AsyncOpenAI) -> Callable[..., Awaitable[dict[str, Any]]]:
        """A non-streamed chat completion through the SDK's own request path (its client,
        headers, auth, retries, timeouts and errors), less two per-call costs that buy
        nothing here: the SDK's transform of the parameters (``_chat_params`` builds them
        JSON-ready; the body sent is the same, tests/providers/test_openai_wire.py) and the
        reply's models (the reply is read as JSON). About a third of the SDK's CPU per
        call (docs/performance.md, "The SDK's per-call cost")."""

        async def post(*, timeout: Any = None, **params: Any) -> dict[str, Any]:
            options = {} if timeout is None else {"timeout": timeout}
            reply = await client.post("/chat/completions", body=params, cast_to=object,
                                      options=options)  # type: ignore[call-overload]
            if isinstance(reply, str | bytes):  # not labelled JSON: the SDK gave the text
                try:
                    reply = json.loads(reply)
                except ValueError:
                    reply = None
            if not isinstance(reply, dict):
                raise ProviderServerError(
                    f"{self.provider}: the chat completion reply is not a JSON object",
                    provider=self.provider)
            return reply

        return post

    # -- chat ------------------------------------------------------------------------------
    def _chat_params(self, data: ChatInput) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": data.model,
            "messages": [_wire_message(m) for m in data.messages],
        }
        if data.temperature is not None:
            params["temperature"] = data.temperature
        if data.max_output_tokens is not None:
            params[self.limit_field()] = data.max_output_tokens
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
                        **({} if tool.strict is None else {"strict": tool.strict}),
                    },
                }
                for tool in data.tools
            ]
        if isinstance(data.tool_choice, BaseModel):  # {"type": "function", "function": ...}
            params["tool_choice"] = data.tool_choice.model_dump()
        elif data.tool_choice is not None:
            params["tool_choice"] = data.tool_choice
        if data.stream and self.stream_usage() != "off" and not (
            self._stream_options_refused and self.stream_usage() == _AUTO
        ):
            params["stream_options"] = {"include_usage": True}  # usage in a last chunk
        return params

    def _usage(self, data: ChatInput, model: str, usage: Any) -> Usage:
        # the usage details, where the server sends them (OpenAI, xAI): cached prompt
        # tokens and reasoning tokens; ``usage`` is the SDK's model (a stream's last chunk)
        # or the reply's JSON object
        prompt_details = _field(usage, "prompt_tokens_details")
        completion_details = _field(usage, "completion_tokens_details")
        return make_usage(
            self.provider,
            model,
            _field(usage, "prompt_tokens") or 0,
            _field(usage, "completion_tokens") or 0,
            requested_model=data.model,
            cached_tokens=_field(prompt_details, "cached_tokens") or 0,
            reasoning_tokens=_field(completion_details, "reasoning_tokens") or 0,
        )

    @operation(description="Chat completion: messages in; text, tool calls and usage out.")
    async def chat(self, ctx: OperationContext, data: ChatInput) -> ChatResult:
        """Chat completion: messages in; text, tool calls and usage out."""
        # Again here (validated at submission and by the worker): a model id, never
        # anything else, leaves this process. It travels in the JSON body, so a
        # namespaced id (``org/model``, on OpenAI-compatible servers) is one.
        check_model_id(data.model)
        client = await self.aclient()
        params = self._chat_params(data)
        if data.stream:
            return await stream_chat(
                ctx,
                data,
                self._stream_deltas(ctx, client, params),
                provider=self.provider,
                convert_error=functools.partial(self._error, model=data.model),
                usage=lambda model, usage: self._usage(data, model, usage),
                finish_reason=_finish_reason,
            )
        timeout = self._request_timeout(ctx)
        notice = self._wait_notice(ctx, client, data.model, timeout)
        try:
            response = await self._create(client, params, timeout=timeout)
        except asyncio.CancelledError:
            ctx.record_usage(estimated_chat_usage(self.provider, data, ""))
            raise
        except Exception as exc:
            raise_converted(exc, self._error(exc, data.model))
        finally:
            notice.stop()
        choices = response.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise ProviderServerError(
                f"{self.provider}: the response has no choices", provider=self.provider
            )
        choice = choices[0]
        message = choice.get("message") or {}
        tool_calls = [
            ToolCall(id=call.get("id"), name=function.get("name"),
                     arguments=function.get("arguments"))
            for call in (message.get("tool_calls") or [])
            if isinstance(call, dict) and isinstance(function := call.get("function"), dict)
        ]
        text = message.get("content") or ""
        model = response.get("model") or data.model
        usage = response.get("usage")
        return chat_result(
            ctx,
            data,
            provider=self.provider,
            text=text,
            finish_reason=_finish_reason(choice.get("finish_reason"), tool_calls),
            tool_calls=tool_calls,
            model=model,
            usage=None if not isinstance(usage, dict) else self._usage(data, model, usage),
        )

    async def _stream_deltas(
        self, ctx: OperationContext, client: AsyncOpenAI, params: dict[str, Any]
    ) -> AsyncIterator[ChatDelta]:
        """The streamed reply's chunks, for :func:`aiecs_core.llm.stream_chat` (which owns
        the rest: stream events, usage, cancellation, cut streams). Closes the stream."""
        timeout = self._request_timeout(ctx)
        notice = self._wait_notice(ctx, client, params["model"], timeout)
        try:
            stream = await self._create(client, params, stream=True, timeout=timeout)
        except BaseException:
            notice.stop()
            raise
        try:
            async for chunk in stream:
                notice.stop()  # the first byte came

                choice = chunk.choices[0] if chunk.choices else None
                if choice is None:
                    yield ChatDelta(model=chunk.model, usage=chunk.usage)
                    continue
                delta = choice.delta
                yield ChatDelta(
                    model=chunk.model,
                    usage=chunk.usage,
                    text=(delta.content if delta is not None else None) or "",
                    tool_calls=[
                        _tool_call_delta(call)
                        for call in ((delta.tool_calls if delta is not None else None) or [])
                    ],
                    finish=choice.finish_reason or None,
                )
        finally:
            notice.stop()
            await stream.close()

    # -- embeddings ------------------------------------------------------------------------
    @operation(description="Embed texts: one vector per text, batched to the provider limit.")
    async def embed(self, ctx: OperationContext, data: EmbedInput) -> EmbedResult:
        """Embed texts: one vector per text, batched to the provider limit."""
        check_model_id(data.model)
        client = await self.aclient()
        extra: dict[str, Any] = {}
        if data.dimensions is not None:
            extra["dimensions"] = data.dimensions

        async def call(batch: list[str]) -> EmbedBatch:
            timeout = self._request_timeout(ctx)
            with self._wait_notice(ctx, client, data.model, timeout):
                response = await client.embeddings.create(
                    model=data.model,
                    input=batch,
                    encoding_format="float",
                    timeout=timeout,
                    **extra,
                )
            items = sorted(response.data, key=lambda item: item.index)
            return EmbedBatch(
                vectors=[[float(x) for x in item.embedding] for item in items],
                model=response.model,
                tokens=getattr(response.usage, "prompt_tokens", None),
            )

        batches = list(embed_batches(data.texts, self.embed_batch_size, self.embed_batch_tokens))
        return await embed_batched(ctx, data, batches, call, provider=self.provider,
                                   convert_error=functools.partial(self._error,
                                                                   model=data.model))
