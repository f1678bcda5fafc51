"""Where a provider call went, as its errors and wait notices name it: the server's
``host:port`` (for a 404 also the method and path), the model or endpoint asked for.
Never a URL's query string, user info or key.

Every provider names a call the same way: ``(at HOST:PORT, model 'M')`` after an error's
message, ``provider: waiting for HOST:PORT (model 'M')`` in a wait notice
(:func:`aiecs_core.llm.waiting`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import AiecsError, ProviderError

__all__ = ["about", "host_port", "named", "names", "request_line"]

_PORTS = {"https": 443, "http": 80}


def host_port(url: Any) -> str | None:
    """``host:port`` of a URL (a string, or an httpx-like URL with ``host``, ``port`` and
    ``scheme``), the port implied by the scheme when absent; None without a host."""
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            host, port, scheme = parts.hostname, parts.port, parts.scheme
        except ValueError:  # a port that is not a number
            return None
    else:
        host = getattr(url, "host", None)
        port = getattr(url, "port", None)
        scheme = getattr(url, "scheme", "")
    if not host:
        return None
    port = port or _PORTS.get(scheme)
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def request_line(method: str, url: Any) -> str | None:
    """``METHOD host:port/path`` of a request (no query string), None without a host."""
    where = host_port(url)
    if where is None:
        return None
    path = urlsplit(url).path if isinstance(url, str) else getattr(url, "path", "") or ""
    return f"{method} {where}{path}"


def names(model: str | None = None, endpoint_id: str | None = None) -> list[str]:
    """``["endpoint 'E'", "model 'M'"]``: what the call asked for, those given."""
    return ([f"endpoint {endpoint_id!r}"] if endpoint_id else []) + (
        [f"model {model!r}"] if model else [])


def about(where: str | None, model: str | None = None, hint: str = "", *,
          endpoint_id: str | None = None) -> str:
    """`` (at WHERE, model 'M'[: hint])``: what a reader needs to find the wrong setting
    ("" when nothing is known)."""
    parts = ([f"at {where}"] if where else []) + names(model, endpoint_id)
    return f" ({', '.join(parts)}{hint})" if parts else ""


def named(error: AiecsError | None, where: str | None, model: str | None = None, *,
          endpoint_id: str | None = None, line: str | None = None,
          hint: str = "") -> AiecsError | None:
    """``error`` (a converted provider error) naming where the call went and what it asked
    for: :func:`about` appended to its message (``line``, the request line, instead of
    ``where`` for a 404, with ``hint``), ``endpoint`` / ``model`` / ``endpoint_id`` in its
    details. Any other error, or one already named, is returned as it is."""
    if not isinstance(error, ProviderError) or "model" in error.details \
            or "endpoint_id" in error.details:
        return error
    if error.status_code == 404 and line:
        suffix = about(line, model, hint, endpoint_id=endpoint_id)
    else:
        suffix = about(where, model, endpoint_id=endpoint_id)
    extra = {"endpoint": error.details.get("endpoint") or where, "model": model,
             "endpoint_id": endpoint_id}
    return type(error)(f"{error.message}{suffix}",
                       {**error.details, **{k: v for k, v in extra.items() if v}})
