"""vertex/endpoint: the real google-cloud-aiplatform (REST transport, ``api_endpoint`` =
the local server) and google-auth (a service-account key whose token URI is the local
server) against a server speaking the REST protocol of Vertex AI endpoints
(tests/support/fake_vertex_endpoints.py)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import threading

import pytest
from aiecs_core import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from aiecs_providers_vertex.endpoint import EXTRA_HINT, EndpointService

from tests.providers._common import call, run, streamed
from tests.support.extras import installed
from tests.support.fake_openai import Error, Hang, Text, ToolCalls
from tests.support.fake_vertex_endpoints import GoogleError
from tests.support.redis_server import free_port

BASE = "/v1/projects/test-project/locations/us-central1/endpoints"



#: Most tests run the real google-cloud-aiplatform (the 'endpoints' extra); the import
#: tests at the end run with or without it.
needs_aiplatform = pytest.mark.skipif(
    not installed("google.cloud.aiplatform"),
    reason="the 'endpoints' extra (google-cloud-aiplatform) is not installed")
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def service(endpoints_env):
    if not installed("google.cloud.aiplatform"):
        pytest.skip("the 'endpoints' extra (google-cloud-aiplatform) is not installed")
    return EndpointService()


def op(service, name, data, **kw):
    return run(service, lambda: call(service, name, data, **kw))


# --- round trips ---------------------------------------------------------------------------


def test_predict_round_trip(service, endpoints):
    data = {"instances": [{"text": "a", "n": 2}, "b"], "parameters": {"temperature": 0.5}}
    result, _ = op(service, "predict", data)
    assert result == {
        "endpoint": "projects/test-project/locations/us-central1/endpoints/1234567890",
        # protobuf Value: numbers come back as floats
        "predictions": [{"echo": {"text": "a", "n": 2.0}, "parameters": {"temperature": 0.5}},
                        {"echo": "b", "parameters": {"temperature": 0.5}}],
        "deployed_model_id": "dm-111",
        "model": "projects/test-project/locations/us-central1/models/model-of-dm-111",
        "model_version_id": "1",
        "metadata": None,
    }
    (req,) = endpoints.api_requests()
    assert req.path.startswith(f"{BASE}/1234567890:predict")
    assert req.body == {"instances": [{"text": "a", "n": 2}, "b"],
                        "parameters": {"temperature": 0.5}}
    # aiplatform's client signs its own JWT with the service account's key (checked by
    # the server); no token exchange
    assert req.headers["authorization"].removeprefix("Bearer ").startswith("eyJ")
    assert endpoints.token_grants == 0


def test_the_input_names_another_endpoint(service, endpoints):
    result, _ = op(service, "predict", {"endpoint": "4242", "instances": [1]})
    assert result["deployed_model_id"] == "dm-vllm"
    assert endpoints.api_requests()[0].path.startswith(f"{BASE}/4242:predict")


def test_raw_predict_round_trip(service, endpoints):
    body = {"prompt": "hi", "max_tokens": 3, "nested": [1, {"x": None}]}
    result, _ = op(service, "raw_predict", {"body": body})
    assert result == {
        "endpoint": "projects/test-project/locations/us-central1/endpoints/1234567890",
        "response": {"echo": body},  # JSON as it is: no protobuf on this path
        "deployed_model_id": "dm-111",
        "model": "projects/test-project/locations/us-central1/models/model-of-dm-111",
        "model_version_id": None,
    }
    (req,) = endpoints.api_requests()
    assert req.path == f"{BASE}/1234567890:rawPredict"
    assert req.body == body and req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == f"Bearer {endpoints.access_token}"


def test_client_and_credentials_are_reused(service, endpoints):
    async def scenario():
        for name, data in [("predict", {"instances": [1]}), ("raw_predict", {"body": {}}),
                           ("predict", {"instances": [2]})]:
            result, _ = await call(service, name, data)
            assert not isinstance(result, Exception), result

    run(service, scenario)
    assert endpoints.token_grants == 1 and len(endpoints.api_requests()) == 3
    assert len({r.client_port for r in endpoints.api_requests()
                if ":predict" in r.path}) == 1  # one connection, kept alive


def test_chat_through_the_openai_compatible_route(service, endpoints):
    data = {"endpoint": "4242", "model": "llama", "messages": USER, "max_output_tokens": 20}
    result, ctx = op(service, "chat", data)
    assert result["text"] == "echo: hello there" and result["finish_reason"] == "stop"
    assert result["usage"]["provider"] == "vertex-endpoint"
    assert result["usage"]["estimated"] is False and ctx.usage
    (req,) = endpoints.api_requests()
    assert req.path == ("/v1beta1/projects/test-project/locations/us-central1/endpoints/4242"
                        "/chat/completions")
    assert req.body["max_tokens"] == 20 and req.body["model"] == "llama"
    assert req.headers["authorization"] == f"Bearer {endpoints.access_token}"


def test_chat_streams_and_returns_tool_calls(service, endpoints):
    endpoints.script(Text("streamed from vllm"), ToolCalls([("lookup", '{"q": 1}')]))
    data = {"endpoint": "4242", "model": "llama", "messages": USER, "stream": True}
    result, ctx = op(service, "chat", data)
    assert streamed(ctx) == "streamed from vllm" == result["text"]
    assert result["usage"]["estimated"] is False  # stream_options.include_usage honoured
    tools = [{"name": "lookup", "parameters": {"type": "object"}}]
    result, _ = op(service, "chat", {**data, "stream": False, "tools": tools})
    assert result["finish_reason"] == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in result["tool_calls"]] == [("lookup", '{"q": 1}')]


def test_chat_on_an_endpoint_without_the_route_is_not_found(service):
    error, _ = op(service, "chat", {"model": "m", "messages": USER})  # default endpoint
    assert isinstance(error, ModelNotFoundError) and not error.is_retryable


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["predict", "raw_predict"])
@pytest.mark.parametrize(
    ("reply", "error_type", "retryable"),
    [
        (GoogleError(404, "Endpoint not found."), ModelNotFoundError, False),
        (GoogleError(403, "Permission denied"), AuthenticationError, False),
        (GoogleError(429, "Quota exceeded", headers={"Retry-After": "2"}), RateLimitError, True),
        (GoogleError(500, "Internal error"), ProviderServerError, True),
        (GoogleError(503, "Bad instance", google_status="INVALID_ARGUMENT"),
         InvalidRequestError, False),
    ],
)
def test_errors_map_to_aiecs_errors(service, endpoints, operation, reply, error_type,
                                    retryable):
    endpoints.script(reply)
    data = {"instances": [1]} if operation == "predict" else {"body": {"x": 1}}
    error, _ = op(service, operation, data)
    assert type(error) is error_type, error
    assert error.is_retryable is retryable
    assert error.status_code == reply.status
    assert reply.message in str(error)
    if reply.status == 429:
        assert error.retry_after == 2.0
    assert len(endpoints.api_requests()) == 1  # the SDK retried nothing


def test_429_retry_info_gives_retry_after(service, endpoints):
    endpoints.script(GoogleError(429, "quota", retry_delay="3s"))
    error, _ = op(service, "predict", {"instances": [1]})
    assert isinstance(error, RateLimitError) and error.retry_after == 3.0


def test_unknown_endpoint_and_other_project(service, endpoints, monkeypatch):
    error, _ = op(service, "predict", {"endpoint": "999", "instances": [1]})
    assert isinstance(error, ModelNotFoundError) and "999" in str(error)
    monkeypatch.setenv("VERTEX_PROJECT_ID", "someone-elses")
    error, _ = op(EndpointService(), "raw_predict", {"body": {}})
    assert isinstance(error, AuthenticationError) and error.status_code == 403
    assert "aiplatform.endpoints.predict" in str(error)


def test_chat_errors_are_mapped_too(service, endpoints):
    endpoints.script(Error(429, "slow down", headers={"retry-after": "1"}))
    data = {"endpoint": "4242", "model": "m", "messages": USER, "stream": True}
    error, ctx = op(service, "chat", data)
    assert isinstance(error, RateLimitError) and error.retry_after == 1.0
    assert "slow down" in str(error) and streamed(ctx) == ""


def _host(endpoints):
    return endpoints.api_endpoint.split("://", 1)[1]


@pytest.mark.parametrize(("name", "data", "asked"), [
    ("predict", {"instances": [1]}, "endpoint '1234567890'"),
    ("raw_predict", {"body": {"x": 1}}, "endpoint '1234567890'"),
    ("chat", {"endpoint": "4242", "model": "llama", "messages": USER},
     "endpoint '4242', model 'llama'"),
    ("chat", {"endpoint": "4242", "model": "llama", "messages": USER, "stream": True},
     "endpoint '4242', model 'llama'"),
])
def test_an_endpoint_that_never_answers_is_reported_while_waiting(
        service, endpoints, monkeypatch, name, data, asked):
    """Issue 21: as for the other providers, an endpoint that accepts the request and never
    answers is reported every AIECS_WAIT_NOTICE seconds, naming provider, host and
    endpoint (and model), long before the request's timeout; the timeout error names
    them too."""
    monkeypatch.setenv("AIECS_WAIT_NOTICE", "0.3")
    monkeypatch.setenv("VERTEX_TIMEOUT", "1.5")
    endpoints.script(Hang())
    error, ctx = op(service, name, data)
    assert isinstance(error, ProviderTimeoutError) and error.is_retryable, error
    host = _host(endpoints)
    assert str(error).endswith(f"(at {host}, {asked})"), error
    assert error.details["endpoint"] == host
    notices = [e for e in ctx.events if e.type == "progress"]
    assert notices, ctx.events
    # the first after 0.3 s (measured, in the message): well before the 1.5 s timeout
    assert re.fullmatch(
        rf"vertex-endpoint: waiting for {re.escape(host)} \({asked}\): no answer yet after "
        r"0\.[3-6] s \(the request gives up after 1\.5 s\)", notices[0].message), notices
    assert 2 <= len(notices) <= 6, [n.message for n in notices]  # every 0.3 s until then


@pytest.mark.parametrize(("name", "data", "path", "asked"), [
    ("predict", {"endpoint": "999", "instances": [1]}, f"{BASE}/999:predict",
     "endpoint '999'"),
    ("raw_predict", {"endpoint": "999", "body": {}}, f"{BASE}/999:rawPredict",
     "endpoint '999'"),
    ("chat", {"model": "m", "messages": USER},
     "/v1beta1/projects/test-project/locations/us-central1/endpoints/1234567890"
     "/chat/completions", "endpoint '1234567890', model 'm'"),
    ("chat", {"model": "m", "messages": USER, "stream": True},
     "/v1beta1/projects/test-project/locations/us-central1/endpoints/1234567890"
     "/chat/completions", "endpoint '1234567890', model 'm'"),
])
def test_a_404_names_host_path_and_endpoint(service, endpoints, name, data, path, asked):
    """Issue 21: a 404 (an unknown endpoint, an endpoint without the chat route, a wrong
    base URL) names the request's method, host and path, and what was asked for."""
    error, _ = op(service, name, data)
    assert isinstance(error, ModelNotFoundError), error
    assert str(error).endswith(
        f"(at POST {_host(endpoints)}{path}, {asked}: a wrong VERTEX_ENDPOINT_BASE_URL, an "
        "endpoint this project and location do not have, or one without this route)"), error
    assert error.details["endpoint"] == _host(endpoints)
    assert error.details["endpoint_id"] == asked.split("'")[1]


@needs_aiplatform
def test_a_base_url_with_a_wrong_path_names_it(endpoints_env, endpoints, monkeypatch):
    monkeypatch.setenv("VERTEX_ENDPOINT_BASE_URL", endpoints.api_endpoint + "/proxy")
    service = EndpointService()
    error, _ = op(service, "raw_predict", {"body": {}})
    assert isinstance(error, ModelNotFoundError), error
    assert f"(at POST {_host(endpoints)}/proxy{BASE}/1234567890:rawPredict, " in str(error)


@needs_aiplatform
def test_connection_refused_names_host_and_port(service, monkeypatch):
    port = free_port()
    monkeypatch.setenv("VERTEX_ENDPOINT_BASE_URL", f"http://127.0.0.1:{port}")
    for name, data in [("predict", {"instances": [1]}), ("raw_predict", {"body": {}})]:
        error, _ = op(EndpointService(), name, data)
        assert isinstance(error, ProviderConnectionError) and error.is_retryable, error
        assert f"127.0.0.1:{port}" in str(error)


@needs_aiplatform
def test_missing_configuration_names_the_variable(endpoints_env, monkeypatch):
    monkeypatch.delenv("VERTEX_ENDPOINT_ID")
    error, _ = op(EndpointService(), "predict", {"instances": [1]})
    assert isinstance(error, ConfigurationError)
    assert error.details["env_var"] == "VERTEX_ENDPOINT_ID"
    monkeypatch.delenv("VERTEX_PROJECT_ID")
    error, _ = op(EndpointService(), "predict", {"endpoint": "1", "instances": [1]})
    assert isinstance(error, ConfigurationError)
    assert error.details["env_var"] == "VERTEX_PROJECT_ID"


def test_bad_input_is_refused_before_any_request():
    spec = EndpointService.operations["predict"]
    for bad in ({"instances": []}, {"instances": [1], "endpoint": "../x"},
                {"instances": [1], "extra": 1}):
        with pytest.raises(ValueError):
            spec.input_model.model_validate(bad)


# --- warm-up and first use ----------------------------------------------------------------


@needs_aiplatform
def test_warm_sets_up_only_when_an_endpoint_is_configured(endpoints_env, endpoints,
                                                           monkeypatch):
    service = EndpointService()
    monkeypatch.delenv("VERTEX_ENDPOINT_ID")
    service.warm()
    assert service._setup is None  # not configured: nothing imported, nothing built
    monkeypatch.setenv("VERTEX_ENDPOINT_ID", "1234567890")
    service.warm()
    setup = service._setup
    assert setup is not None and endpoints.requests == []  # nothing left the machine

    async def scenario():
        result, _ = await call(service, "predict", {"instances": [1]})
        assert result["deployed_model_id"] == "dm-111"
        return service._setup

    assert run(service, scenario) is setup  # the first call used what warm() built


@needs_aiplatform
def test_a_first_call_without_warm_up_sets_up_off_the_loop(service, monkeypatch):
    threads = []
    create = service._create

    def recording():
        threads.append(threading.get_ident())
        return create()

    monkeypatch.setattr(service, "_create", recording)

    async def scenario():
        loop_thread = threading.get_ident()
        results = await asyncio.gather(*(call(service, "raw_predict", {"body": {"n": i}})
                                         for i in range(3)))
        assert all(r["response"] == {"echo": {"n": i}} for i, (r, _) in enumerate(results))
        return loop_thread

    loop_thread = run(service, scenario)
    assert len(threads) == 1 and threads[0] != loop_thread  # once, in a thread


# --- imports ---------------------------------------------------------------------------------


def _run(code: str, **env: str) -> str:
    import os

    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_plugin_started_without_the_endpoint_service_does_not_import_aiplatform(
        tmp_path, endpoints):
    """Load the plugin as a worker does and warm its services as the worker's warm-up
    does (Gemini configured, no VERTEX_ENDPOINT_ID): google.cloud.aiplatform is never
    imported."""
    env = endpoints.env(endpoints.write_credentials(tmp_path))
    del env["VERTEX_ENDPOINT_ID"]
    out = _run("""
        import sys
        from aiecs_core import ServiceRegistry
        from aiecs_providers_vertex import plugin
        registry = ServiceRegistry()
        registry.register_plugin(plugin, "vertex")
        for mode, service in registry.keys():  # as aiecs_worker.runner.warm.warm_services
            registry.instance(mode, service).warm()
        assert "google.genai" in sys.modules  # the Gemini service did warm
        print(sorted(m for m in sys.modules if m.startswith("google.cloud.aiplatform")))
    """, **env)
    assert out == "[]"


def test_without_the_extra_calls_say_how_to_install_it(tmp_path, endpoints):
    """google-cloud-aiplatform made unimportable (as when the extra is not installed): the
    service is still registered, warm() does nothing, a call fails at once, not retried,
    with the pip command."""
    out = _run("""
        import json, sys
        sys.modules["google.cloud.aiplatform"] = None  # its import fails: not installed
        from aiecs_core import ServiceRegistry
        from aiecs_core.testing import run_operation
        from aiecs_providers_vertex import plugin
        registry = ServiceRegistry()
        registry.register_plugin(plugin, "vertex")
        registry.instance("vertex", "endpoint").warm()
        try:
            run_operation(registry, "vertex", "endpoint", "predict", {"instances": [1]})
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc), exc.is_retryable]))
    """, **endpoints.env(endpoints.write_credentials(tmp_path)))
    name, message, retryable = json.loads(out)
    assert name == "ConfigurationError" and not retryable
    assert EXTRA_HINT in message
    assert endpoints.api_requests() == []
