"""Fixtures of the history tests: a real ``aiecs serve`` on a history database of each
kind (a SQLite file, a database of the session's PostgreSQL), and a recorder of this
process on the session's Redis."""

from __future__ import annotations

import os
import threading
import uuid
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
def make_recorder(aiecs_redis):
    """Factory: ``make_recorder(database_url, **settings)`` -> a Recorder (this process)
    on the session's Redis, schema upgraded and consumer group made; ``.start()`` runs
    it in a thread. All are stopped after the test."""
    from aiecs_worker.history.recorder import Recorder
    from aiecs_worker.settings import load_settings

    made = []

    def make(database_url: str, consumer: str | None = None, retention: bool = True,
             **overrides):
        settings = load_settings(**{"aiecs_recorder_wait_ms": 20, **overrides})
        rec = Recorder(settings, database_url=database_url, redis_url=aiecs_redis.url,
                       consumer=consumer or f"test:{uuid.uuid4().hex[:6]}",
                       retention=retention)
        rec.prepare()
        rec.thread = None

        def start():
            rec.thread = threading.Thread(target=rec.run, daemon=True)
            rec.thread.start()
            return rec

        rec.start = start
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.stop()
        if rec.thread is not None:
            rec.thread.join(20)
        rec.engine.dispose()
        rec.redis.close()
