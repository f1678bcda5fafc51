"""Warm-up: ``Service.warm`` builds a configured provider's client in the calling thread,
a first call builds it off the event loop when no warm-up did, and the worker's
``aiecs_worker.runner.warm`` warms every service in a thread and holds the first tasks until
it is done. (The behaviour through a real worker: tests/providers/test_first_use.py.)"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from aiecs_core import ServiceRegistry, hookimpl
from aiecs_core.testing import EchoService
from aiecs_providers_openai.plugin import OpenAIService
from aiecs_providers_vertex.plugin import VertexService

from tests.providers._common import call, run
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_vertex import FakeVertex

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def openai_service(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield OpenAIService()


@pytest.fixture
def vertex_service(monkeypatch, tmp_path):
    with FakeVertex() as server:
        monkeypatch.setenv("VERTEX_PROJECT_ID", server.project)
        monkeypatch.setenv("VERTEX_LOCATION", server.location)
        monkeypatch.setenv("VERTEX_BASE_URL", server.base_url)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", server.write_credentials(tmp_path))
        yield VertexService()


FACTORY = {OpenAIService: "_make_client", VertexService: "_create_client"}


def record_builds(service, monkeypatch, delay: float = 0.0) -> list[int]:
    """Make the service's client factory note the thread it runs in (and take ``delay``)."""
    threads: list[int] = []
    name = FACTORY[type(service)]
    build = getattr(service, name)

    def recording():
        threads.append(threading.get_ident())
        time.sleep(delay)
        return build()

    monkeypatch.setattr(service, name, recording)
    return threads


@pytest.fixture(params=["openai", "vertex"])
def service(request):
    return request.getfixturevalue(f"{request.param}_service")


def test_warm_does_nothing_without_configuration(monkeypatch):
    for service, var in ((OpenAIService(), "OPENAI_API_KEY"),
                         (VertexService(), "VERTEX_PROJECT_ID")):
        monkeypatch.delenv(var, raising=False)
        service.warm()
        assert service._client is None


def test_warm_builds_the_client_the_first_call_uses(service, monkeypatch):
    threads = record_builds(service, monkeypatch)
    service.warm()
    service.warm()  # idempotent
    assert threads == [threading.get_ident()] and service._client is not None
    client = service._client
    result, _ = run(service, lambda: call(service, "chat", {"model": "m", "messages": USER}))
    assert result["text"], result
    assert len(threads) == 1 and service._client is None  # closed by run(); was `client`
    assert client is not None


def test_a_first_call_without_warm_up_builds_the_client_off_the_loop(service, monkeypatch):
    threads = record_builds(service, monkeypatch)

    async def scenario():
        loop_thread = threading.get_ident()
        first, _ = await call(service, "chat", {"model": "m", "messages": USER})
        second, _ = await call(service, "chat", {"model": "m", "messages": USER})
        return loop_thread, first, second

    loop_thread, first, second = run(service, scenario)
    assert first["text"] and second["text"]
    assert len(threads) == 1 and threads[0] != loop_thread


def test_warm_up_and_first_calls_at_once_build_one_client(service, monkeypatch):
    threads = record_builds(service, monkeypatch, delay=0.3)

    async def scenario():
        import asyncio

        warming = threading.Thread(target=service.warm)
        warming.start()
        results = await asyncio.gather(
            *(call(service, "chat", {"model": "m", "messages": USER}) for _ in range(3))
        )
        warming.join()
        return [r for r, _ in results]

    results = run(service, scenario)
    assert all(r["text"] for r in results)
    assert len(threads) == 1


# --- the worker's warm-up ---------------------------------------------------------------------


class SlowWarm(EchoService):
    name = "slow_warm"
    warmed: list[float] = []

    def warm(self) -> None:
        time.sleep(0.3)
        SlowWarm.warmed.append(time.monotonic())


class BrokenWarm(EchoService):
    name = "broken_warm"

    def warm(self) -> None:
        raise RuntimeError("no SDK here")


class WarmPlugin:
    @hookimpl
    def register_services(self, register):
        register(BrokenWarm)
        register(SlowWarm)


@pytest.fixture
def registry():
    reg = ServiceRegistry()
    reg.register_plugin(WarmPlugin(), "warmtest")
    SlowWarm.warmed.clear()
    return reg


def test_warm_services_warms_each_service_and_survives_a_failure(registry, caplog):
    from aiecs_worker.runner.warm import warm_services

    with caplog.at_level(logging.INFO, logger="aiecs.worker"):
        took = warm_services(registry)
    assert set(took) == {"test/broken_warm", "test/slow_warm"}
    assert len(SlowWarm.warmed) == 1 and took["test/slow_warm"] >= 0.3
    assert "warming test/broken_warm failed" in caplog.text and "no SDK here" in caplog.text
    assert "providers warmed: test/slow_warm" in caplog.text


def test_first_tasks_wait_for_the_warm_up(registry):
    from aiecs_worker.runner import warm

    assert warm.wait_warm(0)  # none running: no wait
    thread = warm.start_warming(registry)
    assert not warm.wait_warm(0)
    warm._on_task_prerun()  # what Celery calls before each task, in its pool thread
    assert SlowWarm.warmed and SlowWarm.warmed[0] <= time.monotonic()
    assert warm.wait_warm(0)
    thread.join(5)
