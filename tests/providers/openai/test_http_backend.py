"""AIECS_OPENAI_HTTP and AIECS_OPENAI_MAX_CONNECTIONS: the HTTP client under the openai SDK,
with the real SDK against local servers (tests.support.fake_openai, bench.fake_llm)."""

from __future__ import annotations

import asyncio

import pytest
from aiecs_core import AuthenticationError, ConfigurationError, ProviderConnectionError
from aiecs_providers_openai.plugin import OpenAIService

from bench import fake_llm
from bench.procs import stop
from tests.providers._common import call, run
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.redis_server import free_port

USER = [{"role": "user", "content": "hello there"}]


def _service(monkeypatch, base_url: str, api_key: str = "sk-test-backend",
             **env: str) -> OpenAIService:
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    for name in ("AIECS_OPENAI_HTTP", "AIECS_OPENAI_MAX_CONNECTIONS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OpenAIService()


def _transport(service: OpenAIService) -> str:
    """Which library carries the SDK's requests."""
    http = service.client()._client  # the SDK's http client (httpx API)
    names = " ".join(c.__name__ for c in type(http).__mro__)
    return "aiohttp" if "Aiohttp" in names else "httpx"


@pytest.mark.parametrize("backend", ["aiohttp", "httpx", None])
def test_chat_and_stream_on_each_backend(monkeypatch, backend):
    with FakeOpenAI() as fake:
        env = {} if backend is None else {"AIECS_OPENAI_HTTP": backend}
        service = _service(monkeypatch, fake.base_url, fake.api_key, **env)
        assert _transport(service) == (backend or "aiohttp")  # aiohttp is the default
        fake.script(Text("plain answer"), Text("streamed answer here"))

        async def scenario():
            plain = await call(service, "chat", {"model": "m", "messages": USER})
            streamed = await call(service, "chat",
                                  {"model": "m", "messages": USER, "stream": True})
            return plain, streamed

        (plain, _), (streamed, ctx) = run(service, scenario)
    assert plain["text"] == "plain answer"
    assert streamed["text"] == "streamed answer here"
    assert "".join(e.delta or "" for e in ctx.events if e.type == "stream") \
        == "streamed answer here"


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
def test_connection_refused_is_a_connection_error_on_each_backend(monkeypatch, backend):
    # The SDK's aiohttp transport maps a refused connection to httpx.ConnectTimeout;
    # convert_error still reports it as what it is.
    port = free_port()
    service = _service(monkeypatch, f"http://127.0.0.1:{port}/v1", AIECS_OPENAI_HTTP=backend)
    error, _ = run(service, lambda: call(service, "chat", {"model": "m", "messages": USER}))
    assert isinstance(error, ProviderConnectionError) and error.is_retryable
    assert f"127.0.0.1:{port}" in str(error)


@pytest.mark.parametrize(("name", "value"), [("AIECS_OPENAI_HTTP", "curl"),
                                             ("AIECS_OPENAI_MAX_CONNECTIONS", "0"),
                                             ("AIECS_OPENAI_MAX_CONNECTIONS", "lots")])
def test_invalid_settings_name_the_variable(monkeypatch, name, value):
    service = _service(monkeypatch, "http://127.0.0.1:9/v1", **{name: value})
    with pytest.raises(ConfigurationError) as info:
        service.client()
    assert name in str(info.value)


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
def test_max_connections_bounds_calls_in_flight(monkeypatch, backend):
    proc, port, base_url = fake_llm.start(latency=0.3)
    try:
        service = _service(monkeypatch, base_url, AIECS_OPENAI_HTTP=backend,
                           AIECS_OPENAI_MAX_CONNECTIONS="2")

        async def six():
            return await asyncio.gather(*[
                call(service, "chat", {"model": "m", "messages": USER}) for _ in range(6)])

        results = run(service, six)
        stats = fake_llm.stats(port)
    finally:
        stop(proc)
    assert all(isinstance(r, dict) for r, _ in results), results
    assert stats["requests"] == 6
    assert stats["max_in_flight"] == 2  # the other four waited for a connection


def test_credentials_in_the_base_url_go_through_httpx(monkeypatch):
    # aiohttp raises ValueError ("Cannot combine AUTHORIZATION header with ... credentials
    # encoded in URL") before sending anything; httpx sends the request (with the URL's
    # basic auth in place of the key, which this fake refuses with a 401).
    with FakeOpenAI() as fake:
        url = fake.base_url.replace("http://", "http://gw-user:gw-pass@")
        service = _service(monkeypatch, url, fake.api_key)
        assert _transport(service) == "httpx"
        error, _ = run(service, lambda: call(service, "chat",
                                             {"model": "m", "messages": USER}))
        sent = fake.requests_to("/chat/completions")
    assert isinstance(error, AuthenticationError)
    assert len(sent) == 1 and sent[0].headers["authorization"].startswith("Basic ")
