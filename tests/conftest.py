"""Fixtures shared by every test package.

Redis, two ways:

- ``aiecs_redis``: the session's private redis-server, started before any test module
  imports ``aiecs_worker``; ``CELERY_BROKER_URL`` and ``REDIS_URL`` point at it for the
  whole session, so the test process's Celery app, ``aiecs_worker.producer.control`` and every
  worker started by ``start_worker`` share it. It is flushed before each test that uses
  it. Tests that kill or restart it must leave it running (``RedisServer.restart()``).
- ``redis_server``: a private redis-server of its own for one test (fault tests,
  components configured by URL).

Workers: ``start_worker(pool=..., concurrency=..., queues=..., env={...})`` starts a real
``celery -A aiecs_worker worker`` against ``aiecs_redis`` and stops it after the test;
``start_beat()`` a ``celery -A aiecs_worker beat`` (tests/support/beat.py).

RabbitMQ: ``rabbit_vhost`` is a private vhost of the machine's RabbitMQ for one test
(``.url``: an amqp:// broker URL), skipped when there is none (tests/support/rabbitmq.py).
"""

from __future__ import annotations

import os
import tempfile

import pytest

from tests.support.examples import spec_examples_site  # noqa: F401 - fixture
from tests.support.postgres import database_url, postgres_server  # noqa: F401 - fixtures
from tests.support.processes import (  # noqa: F401 - fixtures
    start_beat,
    start_recorder,
    start_server,
    start_worker,
    worker,
    worker_pool,
)
from tests.support.rabbitmq import rabbit_vhost  # noqa: F401 - fixture
from tests.support.redis_server import RedisServer

#: Provider credentials and settings never leak from the developer's shell into tests.
_STRIP = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "XAI_API_KEY", "XAI_BASE_URL", "VERTEX_PROJECT_ID",
    "VERTEX_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_API_KEY", "GEMINI_API_KEY", "AIECS_PLUGINS", "CELERY_RESULT_BACKEND",
    "AIECS_SECRET_KEY", "AIECS_RATE_LIMITS", "AIECS_PRICES", "OPENAI_TIMEOUT", "XAI_TIMEOUT",
    "VERTEX_TIMEOUT", "VERTEX_BASE_URL", "OPENAI_MAX_TOKENS_FIELD", "OPENAI_STREAM_USAGE",
    "XAI_MAX_TOKENS_FIELD", "XAI_STREAM_USAGE", "AIECS_MODELS", "AIECS_MAX_OUTPUT_TOKENS",
)

#: The test plugin's services (mode ``test``: test/echo, test/buggy) load only with this;
#: every process the suite starts inherits it (tests of its absence remove it).
os.environ["AIECS_TEST_SERVICES"] = "1"
#: The default history database (SQLite in AIECS_DATA_DIR) of every process the suite
#: starts lives in a temporary folder, never in the user's home.
os.environ["AIECS_DATA_DIR"] = tempfile.mkdtemp(prefix="aiecs-data-")
os.environ.pop("AIECS_DATABASE_URL", None)

_session_redis: RedisServer | None = None
_session_redis_error: str | None = None


def _start_session_redis() -> None:
    """Start the session's Redis and point the environment at it.

    Runs when this (root) conftest is imported: pytest imports the conftest files of the
    command line's directories (``tests/server/conftest.py`` imports ``aiecs_worker``,
    whose Celery app reads its URLs once) before any ``pytest_configure`` hook runs.
    """
    global _session_redis, _session_redis_error
    try:
        _session_redis = RedisServer().start()
    except RuntimeError as exc:  # no redis-server: tests that need it will fail clearly
        _session_redis_error = str(exc)
        return
    os.environ["CELERY_BROKER_URL"] = _session_redis.url
    os.environ["REDIS_URL"] = _session_redis.url
    os.environ.pop("CELERY_RESULT_BACKEND", None)


_start_session_redis()


def pytest_configure(config):
    if _session_redis_error is not None:
        config.issue_config_time_warning(pytest.PytestWarning(_session_redis_error),
                                         stacklevel=2)


def pytest_unconfigure(config):
    import gc
    import sys

    gc.collect()  # pending AsyncResults unsubscribe while Redis still answers
    if "aiecs_worker.app" in sys.modules:
        sys.modules["aiecs_worker.app"].app.close()
    if _session_redis is not None:
        _session_redis.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _STRIP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


@pytest.fixture
def aiecs_redis():
    """The session's redis-server (what aiecs_worker in this process talks to), flushed."""
    if _session_redis is None:
        pytest.fail("redis-server is not installed")
    if _session_redis.proc is None or _session_redis.proc.poll() is not None:
        _session_redis.start()
    client = _session_redis.client()
    client.flushall()
    client.close()
    return _session_redis


@pytest.fixture
def redis_server():
    """A private redis-server on a free port, killed after the test."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def submitter_env(monkeypatch):
    """Settings of this (submitting) process, as the workers have them."""
    from aiecs_worker.settings import get_settings

    def set_env(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()
