"""Helpers for a provider's :meth:`~aiecs_core.Service.warm`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

__all__ = ["refused_url"]


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>``, a local port bound but not listening: a connection to
    it is refused at once, and nothing leaves the machine.

    For a provider's ``warm()``: a request through its SDK to this URL, on a throwaway
    event loop in the warm-up thread (``asyncio.run``), imports what the SDK and its HTTP
    stack import on their first request (the async backend, streaming and parsing
    modules), so that the first real call does not import them on the worker's loop.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
