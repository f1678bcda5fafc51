"""Service ``vertex/endpoint``: models deployed on Vertex AI endpoints (fine-tuned models,
Model Garden deployments), through google-cloud-aiplatform, installed with the optional
extra ``endpoints`` (``pip install 'aiecs-providers-vertex[endpoints]'``).

- ``predict``: ``aiplatform.Endpoint.predict`` (REST transport): instances and
  parameters in, predictions and the deployed model's ID out;
- ``raw_predict``: ``POST .../endpoints/{id}:rawPredict``, any JSON body in, the
  container's JSON out;
- ``chat``: ``POST .../v1beta1/.../endpoints/{id}/chat/completions``, the OpenAI-compatible
  chat route of Model Garden and vLLM deployments (:class:`aiecs_core.llm.ChatInput` in,
  :class:`aiecs_core.llm.ChatResult` out, streamed or not).

``raw_predict`` and ``chat`` are sent with httpx2 and the same Google credentials, not
with ``Endpoint.raw_predict``: that method always posts to
``https://{location}-aiplatform.googleapis.com`` (it ignores ``api_endpoint``, so it
could reach neither a Private Service Connect / dedicated endpoint nor a local test
server) and blocks a thread; aiplatform has no chat method.

Importing google-cloud-aiplatform takes seconds (12.5 s of CPU from source, 4.4 s with
compiled bytecode, on the project's 2-core machine): this module never imports it at
module level. It is imported, and ``aiplatform.init`` called, in a thread: by
:meth:`EndpointService.warm` when the worker starts and ``VERTEX_ENDPOINT_ID`` is set,
else by the first call. Without the extra
the service is still registered (so ``aiecs plugins`` shows it) and every call fails at
once with a :class:`ConfigurationError` naming the ``pip install`` command.

``aiplatform.init`` is process-wide: this service sets the project, location,
credentials, ``api_endpoint`` (when ``VERTEX_ENDPOINT_BASE_URL`` / ``VERTEX_BASE_URL`` is
set) and ``api_transport="rest"`` of the worker process's aiplatform configuration.
Blocking SDK calls run in this service's own thread pool (:attr:`EndpointService.threads`);
a cancelled ``predict`` stops waiting at once, its thread at the request's timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiecs_core import (
    AiecsError,
    ConfigurationError,
    InputValidationError,
    OperationContext,
    ProviderError,
    ProviderServerError,
    RateLimitKey,
    Service,
    Usage,
    operation,
)
from aiecs_core.llm import (
    ChatResult,
    WaitNotice,
    chat_result,
    chat_token_estimate,
    check_model_id,
    estimated_chat_usage,
    host_port,
    make_usage,
    named,
    raise_converted,
    request_line,
    request_timeout,
    stream_chat,
    timeout_setting,
    waiting,
)
from pydantic import BaseModel

from . import endpoint_chat
from .auth import authorization, load_credentials
from .endpoint_models import (
    ENDPOINT_ID_PATTERN,
    EndpointChatInput,
    PredictInput,
    PredictResult,
    RawPredictInput,
    RawPredictResult,
)
from .errors import convert_endpoint_error, error_for_response
from .warmup import load_http_stack

__all__ = ["EXTRA_HINT", "EndpointService"]

PROJECT_ENV = "VERTEX_PROJECT_ID"
LOCATION_ENV = "VERTEX_LOCATION"
ENDPOINT_ENV = "VERTEX_ENDPOINT_ID"
ENDPOINT_BASE_URL_ENV = "VERTEX_ENDPOINT_BASE_URL"
BASE_URL_ENV = "VERTEX_BASE_URL"
TIMEOUT_ENV = "VERTEX_TIMEOUT"
DEFAULT_LOCATION = "us-central1"
DEADLINE_GRACE = 1.0
EXTRA_HINT = "pip install 'aiecs-providers-vertex[endpoints]'"
_HEADERS = {"deployed_model_id": "x-vertex-ai-deployed-model-id",
            "model": "x-vertex-ai-model", "model_version_id": "x-vertex-ai-model-version-id"}

#: After a 404's request line: what is wrong.
NOT_FOUND_HINT = (": a wrong VERTEX_ENDPOINT_BASE_URL, an endpoint this project and location "
                  "do not have, or one without this route")

T = TypeVar("T")
_ENDPOINT_ID = re.compile(ENDPOINT_ID_PATTERN.strip("^$"))


def _setting(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _sdk_request_line(exc: BaseException) -> str | None:
    """``METHOD host:port/path`` of the request behind a google.api_core error of the
    REST transport (its ``response`` is a requests response), or None."""
    request = getattr(getattr(exc, "response", None), "request", None)
    method, url = getattr(request, "method", None), getattr(request, "url", None)
    if isinstance(method, str) and isinstance(url, str):
        return request_line(method, url)
    return None


def _import_aiplatform() -> Any:
    """``google.cloud.aiplatform`` (seconds: call in a thread), or a ConfigurationError
    saying how to install it."""
    try:
        from google.cloud import aiplatform
    except ImportError as exc:
        raise ConfigurationError(
            "vertex-endpoint: google-cloud-aiplatform is not installed; the vertex/endpoint "
            f"service needs the 'endpoints' extra: {EXTRA_HINT} ({exc})",
            provider="vertex-endpoint",
        ) from None
    return aiplatform


@dataclass
class _Setup:
    """What every call of a process uses: built once, in a thread."""

    project: str
    location: str
    base_url: str
    timeout: float
    credentials: Any
    http: Any  # httpx2.AsyncClient
    aiplatform: Any

    def name(self, endpoint: str) -> str:
        """The endpoint's resource name."""
        return f"projects/{self.project}/locations/{self.location}/endpoints/{endpoint}"

    def url(self, endpoint: str, suffix: str, version: str = "v1") -> str:
        return f"{self.base_url}/{version}/{self.name(endpoint)}{suffix}"


class EndpointService(Service):
    """Models deployed on Vertex AI endpoints (VERTEX_PROJECT_ID, VERTEX_LOCATION,
    VERTEX_ENDPOINT_ID, ADC), through google-cloud-aiplatform: predict, raw_predict and
    the OpenAI-compatible chat route. Needs the 'endpoints' extra."""

    mode = "vertex"
    name = "endpoint"
    provider = "vertex-endpoint"
    examples = {
        "chat": {"model": "default",
                 "messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
        "predict": {"instances": [{"prompt": "Say hello in one short sentence."}]},
        "raw_predict": {"body": {"prompt": "Say hello in one short sentence."}},
    }
    default_timeout = 120.0
    #: Threads running blocking SDK calls (``predict``, token refreshes) at once.
    threads = 32

    def __init__(self) -> None:
        self._setup: _Setup | None = None
        self._lock = threading.Lock()
        self._endpoints: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="vertex-endpoint")

    # -- set-up ----------------------------------------------------------------------------
    def warm(self) -> None:
        """Import google-cloud-aiplatform, load the credentials and call
        ``aiplatform.init`` now, in the worker's warm-up thread, when ``VERTEX_ENDPOINT_ID``
        and ``VERTEX_PROJECT_ID`` are set and the extra is installed; then load what the
        first requests load (the prediction client's REST transport, httpx2's async
        backend). Nothing leaves the machine."""
        if _setting(ENDPOINT_ENV) is None or _setting(PROJECT_ENV) is None:
            return
        import importlib.util

        if importlib.util.find_spec("google.cloud.aiplatform") is None:
            return  # not installed: the first call says how to install it
        setup = self._sync_setup()
        self._endpoint(setup, _setting(ENDPOINT_ENV) or "")
        import google.cloud.aiplatform_v1.services.prediction_service.transports.rest  # noqa: F401

        load_http_stack()

    def _sync_setup(self) -> _Setup:
        with self._lock:  # warm() in its thread and first calls, at once
            if self._setup is None:
                self._setup = self._create()
        return self._setup

    def _create(self) -> _Setup:
        """Blocking: imports aiplatform, reads the credentials. Run in a thread."""
        project = _setting(PROJECT_ENV)
        if project is None:
            raise ConfigurationError(
                f"{self.provider}: {PROJECT_ENV} is not set; set it to your Google Cloud "
                "project id", env_var=PROJECT_ENV, provider=self.provider)
        location = _setting(LOCATION_ENV) or DEFAULT_LOCATION
        timeout = timeout_setting(self.provider, TIMEOUT_ENV, self.default_timeout)
        base_url = _setting(ENDPOINT_BASE_URL_ENV) or _setting(BASE_URL_ENV)
        aiplatform = _import_aiplatform()
        import httpx2

        credentials = load_credentials(self.provider)
        # REST, not gRPC: one transport for every call, and api_endpoint may be an
        # http(s) URL (a proxy, a dedicated endpoint's DNS name, a local test server).
        aiplatform.init(project=project, location=location, credentials=credentials,
                        api_endpoint=base_url.rstrip("/") if base_url else None,
                        api_transport="rest")
        host = "aiplatform.googleapis.com"
        default = f"https://{host}" if location == "global" else f"https://{location}-{host}"
        return _Setup(project=project, location=location,
                      base_url=(base_url or default).rstrip("/"), timeout=timeout,
                      credentials=credentials, http=httpx2.AsyncClient(timeout=timeout),
                      aiplatform=aiplatform)

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def setup(self) -> _Setup:
        """The process's set-up, built off the event loop on first use."""
        if self._setup is not None:
            return self._setup
        return await self._in_thread(self._sync_setup)

    def _endpoint_id(self, given: str | None) -> str:
        endpoint = given or _setting(ENDPOINT_ENV)
        if endpoint is None:
            raise ConfigurationError(
                f"{self.provider}: no endpoint: give 'endpoint' in the input or set "
                f"{ENDPOINT_ENV}", env_var=ENDPOINT_ENV, provider=self.provider)
        # Again here (the input model checks it at submission and in the worker): the
        # endpoint goes into the URL path under the operator's project and location, so
        # an ID, never a path, a '#' or a '?'.
        if not _ENDPOINT_ID.fullmatch(endpoint):
            raise InputValidationError(
                f"endpoint: {endpoint!r} is not a Vertex AI endpoint ID (letters, digits, "
                "_ and -, up to 128, e.g. 1234567890); the project and location come from "
                f"{PROJECT_ENV} and {LOCATION_ENV}", field="endpoint")
        return endpoint

    def _endpoint(self, setup: _Setup, endpoint_id: str) -> Any:
        """The ``aiplatform.Endpoint`` of an ID (cached; creating one sends nothing)."""
        with self._lock:
            endpoint = self._endpoints.get(endpoint_id)
            if endpoint is None:
                endpoint = setup.aiplatform.Endpoint(
                    endpoint_id, project=setup.project, location=setup.location,
                    credentials=setup.credentials)
                self._endpoints[endpoint_id] = endpoint
        return endpoint

    async def aclose(self) -> None:
        """Close the HTTP client and forget the endpoints."""
        with self._lock:
            setup, self._setup = self._setup, None
            self._endpoints.clear()
            executor, self._executor = self._executor, ThreadPoolExecutor(
                self.threads, thread_name_prefix="vertex-endpoint")
        executor.shutdown(wait=False, cancel_futures=True)
        if setup is not None:
            await setup.http.aclose()

    def _error(self, exc: BaseException, *, setup: _Setup | None = None,
               endpoint_id: str | None = None, model: str | None = None,
               url: str | None = None) -> AiecsError | None:
        """The aiecs error for ``exc``; once set up, naming where the call went (host and
        port; a 404 the method and path of ``url``, or of the SDK's request), the
        endpoint and the model asked for, as every provider's errors do."""
        error = convert_endpoint_error(exc, provider=self.provider)
        if setup is None:
            return error
        line = _sdk_request_line(exc) or (request_line("POST", url) if url else None)
        return named(error, host_port(setup.base_url), model, endpoint_id=endpoint_id,
                     line=line, hint=NOT_FOUND_HINT)

    def _waiting(self, ctx: OperationContext, setup: _Setup, endpoint_id: str,
                 model: str | None = None) -> WaitNotice:
        """Tells the user while the endpoint has sent nothing yet (see WaitNotice)."""
        return waiting(ctx, self.provider, host_port(setup.base_url),
                       self._timeout(setup, ctx), model=model, endpoint_id=endpoint_id)

    def _timeout(self, setup: _Setup, ctx: OperationContext) -> float:
        return request_timeout(setup.timeout, ctx.time_remaining(), DEADLINE_GRACE)

    def rate_limit_key(self, operation: str, data: BaseModel) -> RateLimitKey | None:
        """``vertex-endpoint/<endpoint id>``: an endpoint's quota is per endpoint."""
        endpoint = getattr(data, "endpoint", None) or _setting(ENDPOINT_ENV)
        if endpoint is None:
            return None
        tokens = chat_token_estimate(data) if isinstance(data, EndpointChatInput) else 0
        return RateLimitKey(provider=self.provider, model=endpoint, tokens=tokens)

    # -- HTTP (raw_predict, chat) ----------------------------------------------------------
    async def _headers(self, setup: _Setup) -> dict[str, str]:
        """The credentials' ``Authorization`` header; a refresh (network) in a thread."""
        credentials = setup.credentials
        if getattr(credentials, "valid", False):
            headers: dict[str, str] = {}
            credentials.apply(headers)
            return headers
        return await self._in_thread(authorization, credentials)

    async def _post(self, ctx: OperationContext, setup: _Setup, url: str, body: Any,
                    endpoint_id: str, model: str | None = None) -> Any:
        """POST ``body`` as JSON; the response (an error status raised as an aiecs error).
        Notices while the endpoint has not answered."""
        headers = await self._headers(setup)
        with self._waiting(ctx, setup, endpoint_id, model):
            response = await setup.http.post(url, content=json.dumps(body).encode(),
                                             headers={**headers,
                                                      "content-type": "application/json"},
                                             timeout=self._timeout(setup, ctx))
        if response.status_code >= 400:
            raise error_for_response(response.status_code, response.headers,
                                     response.content, provider=self.provider)
        return response

    # -- operations ------------------------------------------------------------------------
    @operation(description="Endpoint.predict: instances (and parameters) in; predictions "
                           "and the deployed model's ID out.")
    async def predict(self, ctx: OperationContext, data: PredictInput) -> PredictResult:
        """Predict on a Vertex AI endpoint."""
        endpoint_id = self._endpoint_id(data.endpoint)
        setup: _Setup | None = None
        try:
            setup = await self.setup()
            timeout = self._timeout(setup, ctx)

            def call() -> Any:  # in a thread: the SDK blocks (requests)
                # (not Endpoint.resource_name: it would GET the endpoint resource first)
                return self._endpoint(setup, endpoint_id).predict(
                    instances=data.instances, parameters=data.parameters, timeout=timeout)

            with self._waiting(ctx, setup, endpoint_id):
                prediction = await self._in_thread(call)
        except Exception as exc:  # noqa: BLE001 - converted or re-raised
            raise_converted(exc, self._error(
                exc, setup=setup, endpoint_id=endpoint_id,
                url=None if setup is None else setup.url(endpoint_id, ":predict")))
        return PredictResult(
            endpoint=setup.name(endpoint_id),
            predictions=list(prediction.predictions),
            deployed_model_id=prediction.deployed_model_id,
            model=prediction.model_resource_name or None,
            model_version_id=prediction.model_version_id or None,
            metadata=prediction.metadata,
        )

    @operation(description=":rawPredict: any JSON body in; the deployed container's JSON "
                           "response out.")
    async def raw_predict(self, ctx: OperationContext, data: RawPredictInput) -> RawPredictResult:
        """Raw predict on a Vertex AI endpoint."""
        endpoint_id = self._endpoint_id(data.endpoint)
        setup: _Setup | None = None
        try:
            setup = await self.setup()
            url = setup.url(endpoint_id, ":rawPredict")
            response = await self._post(ctx, setup, url, data.body, endpoint_id)
        except Exception as exc:  # noqa: BLE001 - converted or re-raised
            raise_converted(exc, self._error(exc, setup=setup, endpoint_id=endpoint_id,
                                             url=None if setup is None else url))
        try:
            body = json.loads(response.content)
        except ValueError:
            raise ProviderError(
                f"{self.provider}: the rawPredict response is not JSON "
                f"({response.headers.get('content-type') or 'no content type'})",
                provider=self.provider, status_code=response.status_code) from None
        return RawPredictResult(
            endpoint=setup.name(endpoint_id),
            response=body,
            **{key: response.headers.get(header) for key, header in _HEADERS.items()},
        )

    def _usage(self, data: EndpointChatInput, model: str, usage: Any) -> Usage:
        prompt, completion = endpoint_chat.usage_counts(usage) or (0, 0)
        return make_usage(self.provider, model, prompt, completion, requested_model=data.model)

    @operation(description="Chat through the endpoint's OpenAI-compatible route (Model "
                           "Garden, vLLM): messages in; text, tool calls and usage out.")
    async def chat(self, ctx: OperationContext, data: EndpointChatInput) -> ChatResult:
        """Chat with a model deployed on a Vertex AI endpoint."""
        endpoint_id = self._endpoint_id(data.endpoint)
        check_model_id(data.model)  # sent in the JSON body: a (namespaced) model id
        try:
            setup = await self.setup()
        except Exception as exc:  # noqa: BLE001 - converted or re-raised
            raise_converted(exc, self._error(exc))
        url = setup.url(endpoint_id, "/chat/completions", version="v1beta1")
        body = endpoint_chat.chat_body(data)
        error = functools.partial(self._error, setup=setup, endpoint_id=endpoint_id,
                                  model=data.model, url=url)
        if data.stream:
            return await stream_chat(
                ctx, data, self._stream(ctx, setup, url, body, endpoint_id, data.model),
                provider=self.provider, convert_error=error,
                usage=lambda m, u: self._usage(data, m, u),
                finish_reason=endpoint_chat.finish_reason)
        try:
            response = await self._post(ctx, setup, url, body, endpoint_id, data.model)
        except asyncio.CancelledError:
            ctx.record_usage(estimated_chat_usage(self.provider, data, ""))
            raise
        except Exception as exc:  # noqa: BLE001 - converted or re-raised
            raise_converted(exc, error(exc))
        try:
            parsed = endpoint_chat.reply(json.loads(response.content))
        except ValueError:
            parsed = None
        if parsed is None:
            raise ProviderServerError(
                f"{self.provider}: the chat response has no choices", provider=self.provider)
        text, calls, finish, model, usage = parsed
        model = model or data.model
        return chat_result(
            ctx, data, provider=self.provider, text=text,
            finish_reason=endpoint_chat.finish_reason(finish, calls), tool_calls=calls,
            model=model,
            usage=None if endpoint_chat.usage_counts(usage) is None
            else self._usage(data, model, usage))

    async def _stream(self, ctx: OperationContext, setup: _Setup, url: str,
                      body: dict[str, Any], endpoint_id: str,
                      model: str) -> AsyncIterator[Any]:
        """The streamed reply's deltas; notices until the first one (or an error) came."""
        headers = await self._headers(setup)
        notice = self._waiting(ctx, setup, endpoint_id, model)
        try:
            async with setup.http.stream(
                "POST", url, content=json.dumps(body).encode(),
                headers={**headers, "content-type": "application/json",
                         "accept": "text/event-stream"},
                timeout=self._timeout(setup, ctx),
            ) as response:
                if response.status_code >= 400:
                    notice.stop()
                    raise error_for_response(response.status_code, response.headers,
                                             await response.aread(), provider=self.provider)
                async for delta in endpoint_chat.sse_deltas(response.aiter_lines()):
                    notice.stop()  # the first byte came
                    yield delta
        finally:
            notice.stop()
