"""Fixtures of the progress server tests: a real ``aiecs serve`` process."""

from __future__ import annotations

import os

import pytest

from tests.server.serverproc import ServerProcess


@pytest.fixture(scope="module")
def progress_server():
    """One server for a test module, on the session's Redis (tests use unique user ids)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("the session Redis is not running (is redis-server installed?)")
    server = ServerProcess(redis_url=url).start()
    yield server
    server.stop()
    print("--- server log (last 80 lines) ---")
    print("\n".join(server.log().splitlines()[-80:]))
    server.close()


@pytest.fixture
def start_server():
    """Factory for servers of a test's own (``start_server(redis_url, env={...})``)."""
    started: list[ServerProcess] = []

    def start(redis_url: str, **kwargs) -> ServerProcess:
        server = ServerProcess(redis_url=redis_url, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        print(f"--- log of server on port {server.port} (last 80 lines) ---")
        print("\n".join(server.log().splitlines()[-80:]))
        server.close()
