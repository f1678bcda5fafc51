"""HTTP status to aiecs error (by the code, never the text), and ``Retry-After``."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from ..errors import (
    AiecsError,
    AuthenticationError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderError,
    ProviderServerError,
    RateLimitError,
)

__all__ = ["error_for_status", "parse_retry_after", "raise_converted"]


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
