"""The HTTP client under the openai SDK: its backend and its connection limits.

``AIECS_OPENAI_HTTP`` picks the backend of every OpenAI-wire provider (OpenAI, xAI):

- ``aiohttp`` (default): the SDK's ``DefaultAioHttpClient`` (``openai[aiohttp]``, a
  dependency of this package).
- ``httpx``: the SDK's own httpx client.

Measured on this project's 2-core machine with ``uv run python -m bench.sdk_backends``
(2,000 non-streamed chat calls, 100 in flight, one reused client, against
bench/fake_llm.py): the client's CPU per call is 2.6-3.3 ms with aiohttp against
4.5-6.0 ms with httpx (3 runs each, asyncio and uvloop alike). CPU per call is what
bounds a worker process's calls per second (one loop, one core), so aiohttp is the
default.

A base URL carrying credentials (``https://user:pass@gateway/v1``) always goes through
httpx: aiohttp refuses to send them along with the SDK's ``Authorization`` header.

``AIECS_OPENAI_MAX_CONNECTIONS`` bounds the connections a worker process opens to one
provider (default: the SDK's 1000, keep-alive 100); calls beyond it wait for a connection
instead of opening one more socket.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from aiecs_core import ConfigurationError

BACKENDS = ("httpx", "aiohttp")


def _backend() -> str:
    raw = os.environ.get("AIECS_OPENAI_HTTP", "").strip().lower() or "aiohttp"
    if raw not in BACKENDS:
        raise ConfigurationError(
            f"AIECS_OPENAI_HTTP must be one of {', '.join(BACKENDS)}, got {raw!r}",
            env_var="AIECS_OPENAI_HTTP",
        )
    return raw


def _max_connections() -> int | None:
    raw = os.environ.get("AIECS_OPENAI_MAX_CONNECTIONS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
        if n < 1:
            raise ValueError
    except ValueError:
        raise ConfigurationError(
            f"AIECS_OPENAI_MAX_CONNECTIONS must be a positive integer, got {raw!r}",
            env_var="AIECS_OPENAI_MAX_CONNECTIONS",
        ) from None
    return n


def http_client(timeout: float, base_url: str | None = None) -> Any | None:
    """An ``http_client`` for ``AsyncOpenAI``, or None for the SDK's default one."""
    backend, limit = _backend(), _max_connections()
    if backend == "aiohttp" and base_url and "@" in urlsplit(base_url).netloc:
        backend = "httpx"  # aiohttp: "Cannot combine AUTHORIZATION header with ... URL"
    if backend == "httpx" and limit is None:
        return None
    import openai

    kwargs: dict[str, Any] = {"timeout": timeout}
    if limit is not None:
        from openai._constants import DEFAULT_CONNECTION_LIMITS

        limits_type = type(DEFAULT_CONNECTION_LIMITS)
        kwargs["limits"] = limits_type(max_connections=limit,
                                       max_keepalive_connections=min(limit, 100))
    if backend == "aiohttp":
        try:
            return openai.DefaultAioHttpClient(**kwargs)
        except RuntimeError as exc:  # the SDK's "install the aiohttp extra"
            raise ConfigurationError(
                "AIECS_OPENAI_HTTP=aiohttp needs the SDK's aiohttp extra: "
                "pip install 'openai[aiohttp]'",
                env_var="AIECS_OPENAI_HTTP",
            ) from exc
    return openai.DefaultAsyncHttpxClient(**kwargs)
