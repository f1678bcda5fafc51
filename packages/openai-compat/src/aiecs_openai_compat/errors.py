"""openai SDK exceptions -> aiecs errors, by exception type and HTTP status code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiecs_core import (
    AiecsError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    register_secret,
)
from aiecs_core.llm import error_for_status, parse_retry_after

__all__ = ["convert_error"]


def _body_message(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return None


def convert_error(
    exc: BaseException, *, provider: str, secrets: Iterable[str | None] = ()
) -> AiecsError | None:
    """The aiecs error for an exception raised by the openai SDK, or None if it is not one.

    Decided by type and status code only: the server's message and request id are
    carried along but never inspected. ``secrets`` (the API key) are registered for
    redaction; the error redacts its message and details when it is built.
    """
    import openai  # already imported by whoever raised exc

    if isinstance(exc, AiecsError):
        return exc
    for secret in secrets:
        register_secret(secret)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f" ({type(cause).__name__})" if cause is not None else ""
        return ProviderConnectionError(f"{provider}: connection failed{why}", provider=provider)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _body_message(exc.body) or exc.response.reason_phrase or "error"
        return error_for_status(
            status,
            f"{provider}: HTTP {status}: {message}",
            provider=provider,
            retry_after=parse_retry_after(exc.response.headers),
            request_id=exc.request_id,
        )
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: the provider failed mid-response.
        message = _body_message(exc.body) or exc.message
        return ProviderServerError(
            f"{provider}: error during the response: {message}",
            provider=provider,
        )
    return None
