"""Fixtures of the history tests: a real ``aiecs serve`` on a history database of each
kind (a SQLite file, a database of the session's PostgreSQL)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.support.processes import ServerProcess, report


@dataclass
class HistoryServer:
    """A server and the URL of its history database (the test writes rows there)."""

    server: ServerProcess
    database_url: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def history_server(request, tmp_path_factory):
    """One server per test module and kind of database, on the session's Redis (tests
    use unique user ids)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("the session Redis is not running (is redis-server installed?)")
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path_factory.mktemp('history')}/history.db"
    else:
        database_url = request.getfixturevalue("postgres_server").create_database()
    server = ServerProcess(redis_url=url, env={"AIECS_DATABASE_URL": database_url}).start()
    yield HistoryServer(server, database_url)
    server.stop()
    report(server, 60)
    server.close()


@pytest.fixture
def start_server():
    """Factory for servers of a test's own (``start_server(redis_url, env={...})``)."""
    from tests.support.processes import process_factory

    yield from process_factory(
        lambda redis_url, **kwargs: ServerProcess(redis_url=redis_url, **kwargs), 80)
