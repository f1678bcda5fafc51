"""Fixtures of the progress server tests: a real ``aiecs serve`` process."""

from __future__ import annotations

import os

import pytest

from tests.support.processes import ServerProcess, report


@pytest.fixture(scope="module")
def progress_server():
    """One server for a test module, on the session's Redis (tests use unique user ids)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("the session Redis is not running (is redis-server installed?)")
    server = ServerProcess(redis_url=url).start()
    yield server
    server.stop()
    report(server, 80)
    server.close()
