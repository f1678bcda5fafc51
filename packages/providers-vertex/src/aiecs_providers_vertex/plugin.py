"""The ``vertex`` plugin: service ``llm/vertex`` (Gemini on Vertex AI) with ``chat`` and
``embed``, through google-genai in Vertex mode; and service ``vertex/endpoint`` (models
deployed on Vertex AI endpoints, google-cloud-aiplatform, the ``endpoints`` extra: see
:mod:`aiecs_providers_vertex.endpoint`).

Importing this module is cheap: google-genai and google-auth are imported when the client
is created, in a thread (:meth:`VertexService.warm` at worker start, or the first call),
never on the event loop. The client is created once per worker process and reused.

Retries are off (google-genai retries nothing unless told to, and we give it our own
HTTP client, so its aiohttp path and that path's implicit reconnects are never used):
the aiecs worker is the one retry owner. Every request gets an explicit timeout, the
smaller of ``VERTEX_TIMEOUT`` and the time left until the task's deadline plus one second
(google-genai has no timeout by default; at the deadline the worker cancels the call and
reports TIMED_OUT, rather than racing the SDK's timeout).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiecs_core import (
    AiecsError,
    ConfigurationError,
    InputValidationError,
    OperationContext,
    RateLimitKey,
    Service,
    Usage,
    hookimpl,
    operation,
)
from aiecs_core.llm import (
    ChatDelta,
    ChatInput,
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
    named,
    parse_json,
    raise_converted,
    rate_limit_key,
    request_timeout,
    stream_chat,
    timeout_setting,
    waiting,
)
from pydantic import BaseModel

from .auth import load_credentials
from .endpoint import EndpointService
from .errors import convert_error
from .warmup import load_http_stack

if TYPE_CHECKING:  # pragma: no cover
    from google.genai import Client

__all__ = ["EndpointService", "VertexService", "register_services", "vertex_model_id"]

PROJECT_ENV = "VERTEX_PROJECT_ID"
LOCATION_ENV = "VERTEX_LOCATION"
BASE_URL_ENV = "VERTEX_BASE_URL"
TIMEOUT_ENV = "VERTEX_TIMEOUT"
DEFAULT_LOCATION = "us-central1"
#: Seconds a request may outlive the task's deadline (the worker cancels it first).
DEADLINE_GRACE = 1.0

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MODEL_ARMOR": "content_filter",
}
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def vertex_model_id(model: str) -> str:
    """``model`` if it is a Gemini model id fit for the request path, else an
    :class:`InputValidationError`.

    google-genai puts ``model`` into the URL path: an id becomes
    ``projects/{VERTEX_PROJECT_ID}/locations/{VERTEX_LOCATION}/publishers/google/models/{id}``,
    but a name with a ``/`` is used as a resource path (``projects/other/.../endpoints/9``
    would carry the operator's token to another project's endpoint) and a ``#`` or ``?``
    would cut off the method suffix. So: one segment of the shared rule
    (:mod:`aiecs_core.llm.modelid`), and no ``:`` either (the separator of Google's
    method suffixes; no Gemini or embedding model id has one)."""
    check_model_id(model, namespaced=False)
    if ":" in model:
        raise InputValidationError(
            f"model: {model!r} is not a Vertex AI model id: ':' is refused (a Gemini model "
            "id is letters, digits and . _ @ -, e.g. gemini-2.0-flash-001)", field="model")
    return model


def _finish_reason(raw: Any, tool_calls: list[ToolCall]) -> str:
    name = getattr(raw, "value", raw)
    if tool_calls and name in (None, "STOP"):
        return "tool_calls"
    if name is None:
        return "stop"
    return _FINISH.get(str(name), str(name).lower())


def _args(arguments: str) -> dict[str, Any]:
    value = parse_json(arguments)
    return value if isinstance(value, dict) else {"arguments": arguments}


def _signature_out(raw: bytes | None) -> str | None:
    """A thought signature (bytes in google-genai) as ``ToolCall.signature`` (base64)."""
    return base64.b64encode(raw).decode() if raw else None


def _signature_in(signature: str | None) -> bytes | None:
    """``ToolCall.signature`` back to the bytes Gemini gave (None: none, or not base64)."""
    if not signature:
        return None
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None


class VertexService(Service):
    """Gemini on Vertex AI: chat and embeddings (VERTEX_PROJECT_ID, VERTEX_LOCATION, ADC)."""

    mode = "llm"
    name = "vertex"
    provider = "vertex"
    examples = {
        "chat": {"model": "gemini-2.5-flash", "stream": True,
                 "messages": [{"role": "user",
                               "content": "Say hello to a new aiecs user in one short sentence."}]},
        "embed": {"model": "text-embedding-005", "texts": ["hello", "world"]},
    }
    default_timeout = 120.0
    #: Texts per embeddings request: ``:predict`` models (text-embedding-005, ...) take
    #: 250 instances; Gemini embedding models (``batchEmbedContents``) take 100.
    embed_batch_size = 250
    gemini_embed_batch_size = 100
    #: Estimated tokens per embeddings request (Vertex allows 20,000 per request).
    embed_batch_tokens = 15_000

    def __init__(self) -> None:
        self._client: Client | None = None
        self._http: Any = None
        self._timeout = self.default_timeout
        self._client_lock = threading.Lock()

    # -- client ------------------------------------------------------------------------------
    @staticmethod
    def _setting(name: str) -> str | None:
        value = os.environ.get(name, "").strip()
        return value or None

    async def client(self) -> Client:
        """The process's client, created (SDK imported, credentials loaded) on first use,
        in a thread: importing google-genai takes seconds, and must not freeze the loop."""
        if self._client is not None:
            return self._client
        return await asyncio.to_thread(self._sync_client)

    def warm(self) -> None:
        """Import google-genai and build the client now, in the worker's warm-up thread,
        when ``VERTEX_PROJECT_ID`` is set (without it, the first call fails at once); then
        load what the first request loads: google-auth's token refresh transport (the
        refresh itself, a network call, is left to the first request, in a thread) and
        the HTTP client's async backend (a request to a refused local port)."""
        if self._setting(PROJECT_ENV) is None:
            return
        self._sync_client()
        load_http_stack()

    def _sync_client(self) -> Client:
        with self._client_lock:  # warm() in its thread and first calls, at once
            if self._client is None:
                self._client = self._create_client()
        return self._client

    def _create_client(self) -> Client:
        """Blocking: imports the SDK, reads the credentials (files, or the metadata
        server). Run in a thread."""
        project = self._setting(PROJECT_ENV)
        if project is None:
            raise ConfigurationError(
                f"vertex: {PROJECT_ENV} is not set; set it to your Google Cloud project id",
                env_var=PROJECT_ENV,
                provider=self.provider,
            )
        location = self._setting(LOCATION_ENV) or DEFAULT_LOCATION
        timeout = timeout_setting(self.provider, TIMEOUT_ENV, self.default_timeout)

        # Lazy imports: only processes that call Vertex pay for them.
        import httpx2
        from google import genai
        from google.genai import types

        credentials = load_credentials(self.provider)
        self._timeout = timeout
        # Our own HTTP client: explicit timeout, closed in aclose(), and google-genai's
        # aiohttp path (which reconnects on its own) is never taken.
        self._http = httpx2.AsyncClient(timeout=timeout)
        return genai.Client(
            vertexai=True,
            project=project,
            location=location,
            credentials=credentials,
            http_options=types.HttpOptions(
                base_url=self._setting(BASE_URL_ENV),
                timeout=int(timeout * 1000),
                httpx_async_client=self._http,
            ),
        )

    async def aclose(self) -> None:
        """Close the client and its HTTP stack."""
        client, self._client = self._client, None
        http, self._http = self._http, None
        if client is not None:
            await client.aio.aclose()
        if http is not None:
            await http.aclose()

    def _http_options(self, ctx: OperationContext) -> Any:
        from google.genai import types

        seconds = request_timeout(self._timeout, ctx.time_remaining(), DEADLINE_GRACE)
        return types.HttpOptions(timeout=max(1, int(seconds * 1000)))

    def _where(self) -> str:
        """``host:port`` the calls go to: VERTEX_BASE_URL's, else Google's endpoint of
        VERTEX_LOCATION."""
        base = self._setting(BASE_URL_ENV)
        if base:
            return host_port(base) or base
        location = self._setting(LOCATION_ENV) or DEFAULT_LOCATION
        host = ("aiplatform.googleapis.com" if location == "global"
                else f"{location}-aiplatform.googleapis.com")
        return f"{host}:443"

    def _error(self, exc: BaseException, model: str | None = None) -> AiecsError | None:
        error = convert_error(exc, provider=self.provider)
        # name where it went and the model asked for, as every provider's errors do
        return error if model is None else named(error, self._where(), model)

    def _wait_notice(self, ctx: OperationContext, model: str) -> WaitNotice:
        """Tells the user while Vertex has sent nothing yet (see WaitNotice)."""
        timeout = request_timeout(self._timeout, ctx.time_remaining(), DEADLINE_GRACE)
        return waiting(ctx, self.provider, self._where(), timeout, model=model)

    @classmethod
    def check_input(cls, operation: str, data: BaseModel) -> None:
        """A model id, not a resource path (:func:`vertex_model_id`), then the operator's
        policy."""
        model = getattr(data, "model", None)
        if isinstance(model, str):
            vertex_model_id(model)
        super().check_input(operation, data)

    # -- rate limits -------------------------------------------------------------------------
    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        """The rate-limit key of a call: provider and model."""
        return rate_limit_key(self.provider, data)

    # -- chat ----------------------------------------------------------------------------------
    def _contents_and_config(self, data: ChatInput,
                             ctx: OperationContext) -> tuple[list[Any], Any]:
        from google.genai import types

        system: list[str] = []
        contents: list[types.Content] = []
        names: dict[str, str] = {}
        results: types.Content | None = None  # the function responses of the open turn
        for message in data.messages:
            if message.role != "tool":
                results = None
            if message.role == "system":
                system.append(message.content or "")
            elif message.role == "user":
                contents.append(
                    types.Content(role="user", parts=[types.Part(text=message.content)])
                )
            elif message.role == "assistant":
                parts = [types.Part(text=message.content)] if message.content else []
                for call in message.tool_calls:
                    names[call.id] = call.name
                    parts.append(
                        types.Part(
                            function_call=types.FunctionCall(
                                name=call.name, args=_args(call.arguments)
                            ),
                            # Gemini 3 refuses a function call of an earlier turn without
                            # the thought signature it came with.
                            thought_signature=_signature_in(call.signature),
                        )
                    )
                contents.append(types.Content(role="model", parts=parts))
            else:  # tool result
                name = message.name or names.get(message.tool_call_id or "", "tool")
                response = parse_json(message.content or "")
                if not isinstance(response, dict):
                    response = {"result": message.content}
                part = types.Part(
                    function_response=types.FunctionResponse(name=name, response=response)
                )
                if results is None:  # the results of one turn's calls go in one content
                    results = types.Content(role="user", parts=[part])
                    contents.append(results)
                else:
                    results.parts = [*(results.parts or []), part]
        config: dict[str, Any] = {"http_options": self._http_options(ctx)}
        if system:
            config["system_instruction"] = "\n\n".join(system)
        if data.temperature is not None:
            config["temperature"] = data.temperature
        if data.max_output_tokens is not None:
            config["max_output_tokens"] = data.max_output_tokens
        if data.response_format is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = data.response_format.json_schema
        if data.tools:
            config["tools"] = [
                types.Tool(
                    function_declarations=[
                        types.FunctionDeclaration(
                            name=tool.name,
                            description=tool.description or None,
                            parameters_json_schema=tool.parameters,
                        )
                        for tool in data.tools
                    ]
                )
            ]
            # Tool calls are returned to the caller, never executed here.
            config["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(
                disable=True
            )
        if isinstance(data.tool_choice, str):
            config["tool_config"] = types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=_TOOL_CHOICE[data.tool_choice]
                )
            )
        elif data.tool_choice is not None:  # a named function: ANY, restricted to it
            config["tool_config"] = types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode="ANY", allowed_function_names=[data.tool_choice.function.name]
                )
            )
        return contents, types.GenerateContentConfig(**config)

    def _usage(self, data: ChatInput, model: str, meta: Any) -> Usage:
        thoughts = getattr(meta, "thoughts_token_count", 0) or 0
        output = (getattr(meta, "candidates_token_count", 0) or 0) + thoughts
        return make_usage(
            self.provider,
            model,
            getattr(meta, "prompt_token_count", 0) or 0,
            output,
            requested_model=data.model,
            # the history's cached and reasoning tokens (both within the counts above)
            cached_tokens=getattr(meta, "cached_content_token_count", 0) or 0,
            reasoning_tokens=thoughts,
        )

    @staticmethod
    def _parts(response: Any) -> tuple[list[Any], Any]:
        candidates = getattr(response, "candidates", None) or []
        if not candidates:
            return [], None
        candidate = candidates[0]
        content = getattr(candidate, "content", None)
        return list(getattr(content, "parts", None) or []), getattr(
            candidate, "finish_reason", None
        )

    @staticmethod
    def _tool_call(part: Any, number: int) -> ToolCall:
        call = part.function_call
        return ToolCall(
            id=call.id or f"call_{number}",
            name=call.name or "",
            arguments=json.dumps(call.args or {}),
            signature=_signature_out(part.thought_signature),
        )

    @staticmethod
    def _text(part: Any) -> str:
        """The reply text of a part ("" for thoughts and function calls)."""
        return part.text if part.text and not part.thought else ""

    @operation(description="Gemini chat: messages in; text, tool calls and usage out.")
    async def chat(self, ctx: OperationContext, data: ChatInput) -> ChatResult:
        """Gemini chat: messages in; text, tool calls and usage out."""
        vertex_model_id(data.model)  # again: a raw broker message skips submission
        client = await self.client()
        contents, config = self._contents_and_config(data, ctx)
        if data.stream:
            return await stream_chat(
                ctx,
                data,
                self._stream_deltas(ctx, client, data, contents, config),
                provider=self.provider,
                convert_error=functools.partial(self._error, model=data.model),
                usage=lambda model, meta: self._usage(data, model, meta),
                finish_reason=_finish_reason,
                usage_is_cumulative=True,
            )
        notice = self._wait_notice(ctx, data.model)
        try:
            response = await client.aio.models.generate_content(
                model=data.model, contents=contents, config=config
            )
        except asyncio.CancelledError:
            ctx.record_usage(estimated_chat_usage(self.provider, data, ""))
            raise
        except Exception as exc:  # noqa: BLE001 - converted or re-raised
            raise_converted(exc, self._error(exc, data.model))
        finally:
            notice.stop()
        parts, finish = self._parts(response)
        text = "".join(self._text(p) for p in parts)
        tool_calls = [
            self._tool_call(p, i)
            for i, p in enumerate(p for p in parts if p.function_call is not None)
        ]
        blocked = getattr(getattr(response, "prompt_feedback", None), "block_reason", None)
        if finish is None and blocked is not None:
            finish = "SAFETY"
        model = response.model_version or data.model
        return chat_result(
            ctx,
            data,
            provider=self.provider,
            text=text,
            finish_reason=_finish_reason(finish, tool_calls),
            tool_calls=tool_calls,
            model=model,
            usage=(
                None
                if response.usage_metadata is None
                else self._usage(data, model, response.usage_metadata)
            ),
        )

    async def _stream_deltas(
        self, ctx: OperationContext, client: Client, data: ChatInput, contents: list[Any],
        config: Any,
    ) -> AsyncIterator[ChatDelta]:
        """The streamed reply's chunks, for :func:`aiecs_core.llm.stream_chat` (which owns
        the rest: stream events, usage, cancellation, cut streams). Closes the stream.

        Usage metadata is cumulative: the last one, with the finish reason, is final."""
        notice = self._wait_notice(ctx, data.model)
        try:
            stream = await client.aio.models.generate_content_stream(
                model=data.model, contents=contents, config=config
            )
        except BaseException:
            notice.stop()
            raise
        calls = 0
        try:
            async for chunk in stream:
                notice.stop()  # the first byte came
                yield ChatDelta(model=chunk.model_version, usage=chunk.usage_metadata)
                parts, finish = self._parts(chunk)
                for part in parts:
                    if part.function_call is not None:
                        call = self._tool_call(part, calls)
                        yield ChatDelta(
                            text=self._text(part),
                            tool_calls=[
                                ToolCallDelta(
                                    calls, call.id, call.name, call.arguments, call.signature
                                )
                            ],
                        )
                        calls += 1
                    else:
                        yield ChatDelta(text=self._text(part))
                yield ChatDelta(finish=finish)
        finally:
            notice.stop()
            # an async generator (the SDK's annotation says only AsyncIterator)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- embeddings ----------------------------------------------------------------------------
    def _batches(self, model: str, texts: list[str]) -> Iterator[list[str]]:
        limit = (
            self.gemini_embed_batch_size
            if "gemini" in model.rsplit("/", 1)[-1]
            else self.embed_batch_size
        )
        return embed_batches(texts, limit, self.embed_batch_tokens)

    @operation(description="Embed texts: one vector per text, batched to the Vertex limit.")
    async def embed(self, ctx: OperationContext, data: EmbedInput) -> EmbedResult:
        """Embed texts: one vector per text, batched to the Vertex limit."""
        vertex_model_id(data.model)  # again: a raw broker message skips submission
        client = await self.client()  # imports the SDK off the loop, first
        from google.genai import types

        async def call(batch: list[str]) -> EmbedBatch:
            contents: list[types.ContentUnion] = list(batch)  # the SDK's list type
            config = types.EmbedContentConfig(
                output_dimensionality=data.dimensions, http_options=self._http_options(ctx)
            )
            with self._wait_notice(ctx, data.model):
                response = await client.aio.models.embed_content(
                    model=data.model, contents=contents, config=config
                )
            embeddings = response.embeddings or []
            counts = [
                e.statistics.token_count
                for e in embeddings
                if e.statistics is not None and e.statistics.token_count is not None
            ]
            tokens = getattr(response.usage_metadata, "prompt_token_count", None)
            if tokens is None and counts and len(counts) == len(batch):
                tokens = int(sum(counts))
            return EmbedBatch(
                vectors=[[float(x) for x in (e.values or [])] for e in embeddings],
                tokens=tokens,
            )

        return await embed_batched(ctx, data, list(self._batches(data.model, data.texts)), call,
                                   provider=self.provider,
                                   convert_error=functools.partial(self._error,
                                                                   model=data.model))


@hookimpl
def register_services(register: Callable[[type[Service]], None]) -> None:
    """Register the Vertex AI services."""
    register(VertexService)
    register(EndpointService)
