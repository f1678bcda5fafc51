"""google-genai, google-cloud-aiplatform (google.api_core, requests), google-auth and httpx2
exceptions, and error responses -> aiecs errors, by type and status code.

A 5xx whose google.rpc ``status`` says the request itself is invalid
(:data:`INVALID_STATUSES`) is an :class:`InvalidRequestError`, not retried. Connection
errors and timeouts name the server's ``host:port`` only.

The errors redact their messages and details when they are built (aiecs_core.redaction).
"""

from __future__ import annotations

import re
from typing import Any

from aiecs_core import (
    AiecsError,
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
)
from aiecs_core.llm import error_for_status, host_port, parse_retry_after

__all__ = [
    "INVALID_STATUSES",
    "convert_endpoint_error",
    "convert_error",
    "error_for_response",
    "retry_delay",
]

#: google.rpc codes saying the request itself is invalid: a 5xx carrying one is not retried.
INVALID_STATUSES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"})

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def retry_delay(details: Any) -> float | None:
    """``retryDelay`` of a google.rpc.RetryInfo in an error body, in seconds."""
    if isinstance(details, list) and len(details) == 1:
        details = details[0]
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("@type") == _RETRY_INFO:
            match = _DURATION.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _endpoint(exc: Any) -> str | None:
    """``host:port`` of the request an httpx2 or requests error belongs to (None when
    unknown)."""
    try:
        return host_port(exc.request.url)
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when unset
        return None


def _status_error(status: int | None, message: str, google_status: str | None,
                  retry_after: float | None, provider: str) -> AiecsError:
    """The error for an HTTP status; a 5xx whose google.rpc ``status`` is one of
    :data:`INVALID_STATUSES` is not retried."""
    if status is not None and status >= 500 and google_status in INVALID_STATUSES:
        return InvalidRequestError(
            f"{provider}: HTTP {status}: {message} (not retried: the server says the "
            f"request is invalid, status {google_status})",
            provider=provider,
            status_code=status,
            google_status=google_status,
        )
    return error_for_status(
        status,
        f"{provider}: HTTP {status}: {message}",
        provider=provider,
        retry_after=retry_after,
        google_status=google_status,
    )


def _unreachable(provider: str, where: str | None, timed_out: bool, name: str) -> AiecsError:
    """A timeout or connection error, naming the server's ``host:port`` only."""
    to = f" to {where}" if where else ""
    if timed_out:
        return ProviderTimeoutError(
            f"{provider}: request{to} timed out", provider=provider, endpoint=where
        )
    return ProviderConnectionError(
        f"{provider}: connection{to} failed ({name})", provider=provider, endpoint=where
    )


def convert_error(exc: BaseException, *, provider: str = "vertex") -> AiecsError | None:
    """The aiecs error for an exception raised while calling Vertex AI, or None."""
    from google.genai import errors as genai_errors

    if isinstance(exc, AiecsError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        status = exc.code if isinstance(exc.code, int) else None
        headers = getattr(getattr(exc, "response", None), "headers", None)
        retry_after = parse_retry_after(dict(headers) if headers is not None else None)
        if retry_after is None:
            retry_after = retry_delay(exc.details)
        return _status_error(status, exc.message or exc.status or "error", exc.status,
                             retry_after, provider)
    if isinstance(exc, genai_errors.UnknownApiResponseError):
        return ProviderServerError(f"{provider}: unreadable response", provider=provider)
    return _transport_or_auth_error(exc, provider)


def _transport_or_auth_error(exc: BaseException, provider: str) -> AiecsError | None:
    """httpx2 transport errors and google-auth errors, shared by both Vertex services."""
    import google.auth.exceptions as auth_errors
    import httpx2

    if isinstance(exc, httpx2.TransportError):  # TimeoutException included
        return _unreachable(provider, _endpoint(exc), isinstance(exc, httpx2.TimeoutException),
                            type(exc).__name__)
    if isinstance(exc, auth_errors.DefaultCredentialsError):
        return ConfigurationError(
            f"{provider}: no usable Google credentials ({exc})",
            env_var="GOOGLE_APPLICATION_CREDENTIALS",
            provider=provider,
        )
    if isinstance(exc, auth_errors.RefreshError):
        return AuthenticationError(
            f"{provider}: the Google credentials were rejected when refreshing the "
            f"access token ({exc})",
            provider=provider,
        )
    if isinstance(exc, auth_errors.TransportError):
        return ProviderConnectionError(
            f"{provider}: could not reach the Google token endpoint", provider=provider
        )
    return None


def _message(body: Any) -> tuple[str | None, str | None]:
    """``(message, google.rpc status)`` of an error body: Google's ``{"error": {"message",
    "status"}}``, an OpenAI-style ``{"error": {"message"}}`` or a ``{"detail": ...}``."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        return None, None
    error = body.get("error", body)
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message") or error.get("detail")
    status = error.get("status")
    return (
        message if isinstance(message, str) else None,
        status if isinstance(status, str) else None,
    )


def error_for_response(
    status: int, headers: Any, body: bytes, *, provider: str
) -> AiecsError:
    """The aiecs error for an HTTP error response (``status`` >= 400) of a Vertex AI
    endpoint, by its status code: a 5xx whose google.rpc ``status`` is one of
    :data:`INVALID_STATUSES` is not retried; a 429's ``retry_after`` comes from
    ``Retry-After`` or the body's google.rpc.RetryInfo."""
    import json

    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None
    message, google_status = _message(parsed)
    if message is None:
        message = body[:500].decode("utf-8", "replace").strip() or "error"
    retry_after = parse_retry_after(dict(headers) if headers is not None else None)
    if retry_after is None:
        retry_after = retry_delay(parsed)
    return _status_error(status, message, google_status, retry_after, provider)


def convert_endpoint_error(exc: BaseException, *, provider: str) -> AiecsError | None:
    """The aiecs error for an exception raised while calling a Vertex AI endpoint
    (google-cloud-aiplatform's REST transport: google.api_core and requests errors; our
    own requests: httpx2 and google-auth errors), or None.

    Only modules already imported are consulted: converting an error never imports
    google-cloud-aiplatform."""
    import sys

    if isinstance(exc, AiecsError):
        return exc
    api_errors = sys.modules.get("google.api_core.exceptions")
    if api_errors is not None and isinstance(exc, api_errors.GoogleAPICallError):
        response = getattr(exc, "response", None)
        status = int(exc.code) if isinstance(exc.code, int) else None  # an HTTPStatus
        if status is not None and response is not None and hasattr(response, "headers"):
            return error_for_response(
                status, response.headers, getattr(response, "content", b"") or b"",
                provider=provider,
            )
        return error_for_status(
            status, f"{provider}: HTTP {status}: {exc.message}", provider=provider
        )
    requests_errors = sys.modules.get("requests.exceptions")
    if requests_errors is not None and isinstance(exc, requests_errors.RequestException):
        return _unreachable(provider, _endpoint(exc),
                            isinstance(exc, requests_errors.Timeout), type(exc).__name__)
    return _transport_or_auth_error(exc, provider)
