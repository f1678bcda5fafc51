"""What both Vertex services load before their first request, in the warm-up thread."""

from __future__ import annotations

import asyncio
import contextlib

from aiecs_core.llm import refused_url

__all__ = ["load_http_stack"]


def load_http_stack() -> None:
    """Load google-auth's token-refresh transport and httpx2's async backend and streaming
    (one streamed request to a refused local port, on a throwaway loop): the modules a
    first request would otherwise import on the worker's loop. Nothing leaves the
    machine."""
    import google.auth.transport.requests  # noqa: F401 - used by every token refresh
    import httpx2

    async def request(url: str) -> None:
        async with httpx2.AsyncClient(timeout=2) as http:
            with contextlib.suppress(httpx2.HTTPError):
                async with http.stream("POST", url, json={}) as response:
                    async for _ in response.aiter_lines():
                        pass

    with refused_url() as url:
        asyncio.run(request(url))
