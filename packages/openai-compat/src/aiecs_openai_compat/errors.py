"""openai SDK exceptions -> aiecs errors, by exception type and HTTP status code.

One refinement of the status rule, for servers that answer an invalid request with a 5xx
(a request that is not worth retrying): a 5xx is an :class:`InvalidRequestError` (not
retried) when the error body says the request is invalid, decided in this order:

1. by structured fields of the body's ``error`` object (or the body itself): ``type`` is
   one of :data:`INVALID_TYPES`, or ``code`` is an HTTP 4xx status other than 408/429
   (as a number or a numeric string, the way some gateways pass the upstream status on);
2. failing those, by the message containing one of :data:`INVALID_PHRASES` (a short,
   fixed list, matched case-insensitively) for servers that put nothing structured in
   the body.

Every error names the provider, the server's host and port and the model asked for; a 404
names the request's method and path too (a wrong base URL answers 404 as an unknown model
does). Never the query string, user info or key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiecs_core import (
    AiecsError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    register_secret,
)
from aiecs_core.llm import about, error_for_status, host_port, parse_retry_after, request_line

__all__ = ["INVALID_PHRASES", "INVALID_TYPES", "convert_error", "endpoint", "invalid_reason"]

#: ``error.type`` values saying the request itself is invalid (OpenAI, llama.cpp; vLLM's
#: exception names; pydantic-style validation).
INVALID_TYPES = frozenset(
    {"invalid_request_error", "BadRequestError", "validation_error", "ValidationError"}
)
#: Message phrases saying so, for a 5xx body with no structured field (kept short).
INVALID_PHRASES = ("validation error", "response_format")


def _body_error(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):
            return {"message": inner}
    return {}


def _body_message(body: Any) -> str | None:
    message = _body_error(body).get("message")
    return message if isinstance(message, str) else None


def invalid_reason(status: int | None, body: Any) -> str | None:
    """Why a 5xx answer is really an invalid request (see the module doc), or None."""
    if status is None or status < 500:
        return None
    error = _body_error(body)
    kind = error.get("type")
    if isinstance(kind, str) and kind in INVALID_TYPES:
        return f"error.type={kind}"
    code = error.get("code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    is_status = isinstance(code, int) and not isinstance(code, bool)
    if is_status and isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
        return f"error.code={code}"
    message = (_body_message(body) or "").lower()
    phrase = next((p for p in INVALID_PHRASES if p in message), None)
    return None if phrase is None else f"message contains {phrase!r}"


def endpoint(request: Any) -> str | None:
    """``host:port`` of an httpx request (the port implied by the scheme when absent)."""
    return host_port(getattr(request, "url", None))


def _request_endpoint(exc: Any) -> str | None:
    try:
        return endpoint(exc.request)
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when unset
        return None


def _request_line(exc: Any) -> str | None:
    """``METHOD host:port/path`` of the request behind ``exc`` (no query string)."""
    try:
        request = exc.request
        return request_line(request.method, request.url)
    except (AttributeError, RuntimeError):
        return None


def _aiohttp_connection_error(exc: BaseException) -> BaseException | None:
    """The aiohttp connection error (refused, reset, disconnected: not a timeout) behind
    an SDK error, or None.

    The SDK's aiohttp transport (openai._vendor.httpx_aiohttp) maps every
    ``aiohttp.ClientConnectionError`` to ``httpx.ConnectTimeout``, so a refused connection
    would surface as a timeout; the original exception is still its cause.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if (type(cause).__module__.startswith("aiohttp")
                and not isinstance(cause, TimeoutError)):
            import aiohttp

            if isinstance(cause, aiohttp.ClientConnectionError):
                return cause
        cause = cause.__cause__ or cause.__context__
    return None


def convert_error(
    exc: BaseException, *, provider: str, secrets: Iterable[str | None] = (),
    model: str | None = None,
) -> AiecsError | None:
    """The aiecs error for an exception raised by the openai SDK, or None if it is not one.
    Its message names ``provider``, the server (host and port; method and path too for a
    404) and ``model``, the model the call asked for.

    Decided by type and status code only: the server's message and request id are
    carried along but never inspected. ``secrets`` (the API key) are registered for
    redaction; the error redacts its message and details when it is built.
    """
    import openai  # already imported by whoever raised exc

    if isinstance(exc, AiecsError):
        return exc
    for secret in secrets:
        register_secret(secret)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        where = _request_endpoint(exc)
        to = f" to {where}" if where else ""
        of = f" (model {model!r})" if model else ""
        refused = _aiohttp_connection_error(exc)
        if refused is not None:
            return ProviderConnectionError(
                f"{provider}: connection{to} failed ({type(refused).__name__}){of}",
                provider=provider, endpoint=where, model=model,
            )
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeoutError(
                f"{provider}: request{to} timed out{of}", provider=provider, endpoint=where,
                model=model,
            )
        cause = exc.__cause__ or exc.__context__
        why = f" ({type(cause).__name__})" if cause is not None else ""
        return ProviderConnectionError(
            f"{provider}: connection{to} failed{why}{of}", provider=provider,
            endpoint=where, model=model,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _body_message(exc.body) or exc.response.reason_phrase or "error"
        where = _request_endpoint(exc.response)
        if status == 404:
            suffix = about(_request_line(exc.response), model,
                           ": a wrong base URL, or a model this server does not have")
        else:
            suffix = about(where, model)
        reason = invalid_reason(status, exc.body)
        if reason is not None:
            return InvalidRequestError(
                f"{provider}: HTTP {status}: {message} (not retried: the server says the "
                f"request is invalid, {reason}){suffix}",
                provider=provider,
                status_code=status,
                request_id=exc.request_id,
                endpoint=where,
                model=model,
            )
        return error_for_status(
            status,
            f"{provider}: HTTP {status}: {message}{suffix}",
            provider=provider,
            retry_after=parse_retry_after(exc.response.headers),
            request_id=exc.request_id,
            endpoint=where,
            model=model,
        )
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: the provider failed mid-response.
        message = _body_message(exc.body) or exc.message
        where = _request_endpoint(exc)
        return ProviderServerError(
            f"{provider}: error during the response: {message}{about(where, model)}",
            provider=provider, endpoint=where, model=model,
        )
    return None
