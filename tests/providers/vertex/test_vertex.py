"""aiecs-providers-vertex: the real google-genai SDK (Vertex mode) and google-auth against
a local server speaking Vertex AI's Gemini wire protocol and Google's token endpoint."""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import time

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
from aiecs_core.testing import ServiceConformance
from aiecs_providers_vertex import plugin
from aiecs_providers_vertex.plugin import VertexService

from tests.providers._common import StreamCases, call, run
from tests.support.extras import installed
from tests.support.fake_openai import vector_for
from tests.support.fake_vertex import (
    Cut,
    FakeVertex,
    GoogleError,
    Hang,
    Text,
    ToolCalls,
    Vectors,
)
from tests.support.redis_server import free_port

MODEL = "gemini-2.5-flash"
USER = [{"role": "user", "content": "hello there"}]
API = "/v1beta1/projects/test-project/locations/us-central1/publishers/google/models"


@pytest.fixture
def fake():
    with FakeVertex() as server:
        yield server


@pytest.fixture
def vertex_env(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("VERTEX_PROJECT_ID", fake.project)
    monkeypatch.setenv("VERTEX_LOCATION", fake.location)
    monkeypatch.setenv("VERTEX_BASE_URL", fake.base_url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", fake.write_credentials(tmp_path))


@pytest.fixture
def service(vertex_env):
    return VertexService()


def chat(service, data, **kw):
    return run(service, lambda: call(service, "chat", data, **kw))


# --- chat ------------------------------------------------------------------------------------


def test_thinking_and_cached_tokens_are_recorded(service, fake):
    """Gemini's thoughts count as output (they are billed so) and as reasoning tokens;
    its cached input tokens are recorded (history rows keep both)."""
    fake.usage_extra = {"thoughtsTokenCount": 5, "cachedContentTokenCount": 3}
    result, _ = chat(service, {"model": MODEL,
                               "messages": [{"role": "user", "content": "how are you"}]})
    usage = result["usage"]
    assert (usage["output_tokens"], usage["reasoning_tokens"], usage["cached_tokens"]) == (
        4 + 5, 5, 3)


def test_chat_request_shape_auth_and_result(service, fake):
    data = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "how are you"},
        ],
        "temperature": 0.3,
        "max_output_tokens": 50,
    }
    result, ctx = chat(service, data)
    assert result["text"] == "echo: how are you"
    assert result["finish_reason"] == "stop"
    assert result["usage"] == {
        "provider": "vertex",
        "model": f"{MODEL}-001",
        "input_tokens": 8,
        "output_tokens": 4,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost": None,
        "estimated": False,
    }
    assert [u.model_dump() for u in ctx.usage] == [result["usage"]]
    # google-auth exchanged a signed JWT for a token at the fake's /token, once.
    assert fake.token_grants == 1
    (req,) = fake.api_requests()
    assert req.path == f"{API}/{MODEL}:generateContent"
    assert req.headers["authorization"] == f"Bearer {fake.access_token}"
    assert req.body["systemInstruction"]["parts"] == [{"text": "be brief"}]
    assert [(c["role"], c["parts"]) for c in req.body["contents"]] == [
        ("user", [{"text": "hello there"}]),
        ("model", [{"text": "hi"}]),
        ("user", [{"text": "how are you"}]),
    ]
    assert req.body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50}
    # An explicit timeout reaches the server too (google-genai has none by default).
    assert int(req.headers["x-server-timeout"]) <= 120


def test_client_credentials_and_connection_are_reused(service, fake):
    async def scenario():
        first = await service.client()
        for _ in range(3):
            result, _ = await call(service, "chat", {"model": MODEL, "messages": USER})
            assert result["text"] == "echo: hello there"
        return first is await service.client()

    assert run(service, scenario)
    assert fake.token_grants == 1
    assert len({r.client_port for r in fake.api_requests()}) == 1


def test_cost_only_when_a_price_is_configured(service, monkeypatch):
    monkeypatch.setenv(
        "AIECS_PRICES", json.dumps({f"vertex/{MODEL}": {"input": 1.0, "output": 4.0}})
    )
    result, _ = chat(service, {"model": MODEL, "messages": USER})
    usage = result["usage"]  # priced by the requested model (reported one is versioned)
    assert usage["cost"] == pytest.approx(
        (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 4.0) / 1e6
    )


def test_stream_pushes_deltas_and_reports_usage(service, fake):
    fake.script(Text("the quick brown fox"))
    result, ctx = chat(service, {"model": MODEL, "messages": USER, "stream": True})
    assert [e.delta for e in ctx.events if e.type == "stream"] == [
        "the",
        " quick",
        " brown",
        " fox",
    ]
    assert result["text"] == "the quick brown fox" and result["finish_reason"] == "stop"
    assert result["usage"]["input_tokens"] == 2 and result["usage"]["output_tokens"] == 4
    (req,) = fake.api_requests()
    assert req.path == f"{API}/{MODEL}:streamGenerateContent?alt=sse"


def test_structured_output(service, fake):
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string"}},
        "required": ["sentiment"],
    }
    fake.script(Text('{"sentiment": "positive"}'))
    result, _ = chat(
        service, {"model": MODEL, "messages": USER, "response_format": {"json_schema": schema}}
    )
    assert result["parsed"] == {"sentiment": "positive"}
    config = fake.api_requests()[0].body["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_returned_not_executed(service, fake, stream):
    fake.script(ToolCalls([("get_weather", '{"city": "Paris"}')]))
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    data = {
        "model": MODEL,
        "messages": USER,
        "stream": stream,
        "tool_choice": "required",
        "tools": [{"name": "get_weather", "description": "Weather", "parameters": params}],
    }
    result, _ = chat(service, data)
    assert result["finish_reason"] == "tool_calls"
    (signed,) = result["tool_calls"]
    assert signed.pop("signature") == fake.signatures['["get_weather", {"city": "Paris"}]']
    assert signed == {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    body = fake.api_requests()[0].body
    (tool,) = body["tools"]
    (decl,) = tool["functionDeclarations"]
    # Vertex parses proto JSON, which accepts lowerCamel and snake_case field names;
    # google-genai 3.x sends this one in snake_case.
    schema = decl.pop("parametersJsonSchema", None) or decl.pop("parameters_json_schema")
    assert schema == params
    assert decl == {"name": "get_weather", "description": "Weather"}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_tool_results_are_sent_back(service, fake):
    messages = [
        *USER,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
    ]
    result, _ = chat(service, {"model": MODEL, "messages": messages})
    assert result["text"] == 'tool results: {"temp": 21}'
    contents = fake.api_requests()[0].body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}],
    }


TOOLS = [
    {"name": "get_weather",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time"},
]


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_is_any_with_that_function_allowed(service, fake, stream):
    choice = {"type": "function", "function": {"name": "get_time"}}
    data = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": choice,
            "stream": stream}
    result, _ = chat(service, data)
    calling = fake.api_requests()[0].body["toolConfig"]["functionCallingConfig"]
    names = calling.pop("allowedFunctionNames", None) or calling.pop("allowed_function_names")
    assert (calling, names) == ({"mode": "ANY"}, ["get_time"])
    assert [c["name"] for c in result["tool_calls"]] == ["get_time"]


async def _two_turns(service, stream: bool, keep_signatures: bool = True):
    first, _ = await call(service, "chat", {"model": MODEL, "messages": USER, "tools": TOOLS,
                                            "stream": stream})
    calls = [dict(c) for c in first["tool_calls"]]
    if not keep_signatures:
        for c in calls:
            c.pop("signature", None)
    messages = [
        *USER,
        {"role": "assistant", "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": json.dumps({"temp": 20 + i})}
          for i, c in enumerate(calls)),
    ]
    second, _ = await call(service, "chat", {"model": MODEL, "messages": messages,
                                             "tools": TOOLS, "stream": stream})
    return first, second


@pytest.mark.parametrize("stream", [False, True])
def test_multi_turn_tool_use_carries_thought_signatures(service, fake, stream):
    fake.script(ToolCalls([("get_weather", '{"city": "Paris"}'),
                           ("get_weather", '{"city": "Oslo"}')]))
    first, second = run(service, lambda: _two_turns(service, stream))
    signature = first["tool_calls"][0]["signature"]
    assert signature and "signature" not in first["tool_calls"][1]  # the first call only
    assert second["text"] == 'tool results: {"temp": 20} {"temp": 21}'
    contents = fake.api_requests()[1].body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    model_turn, results = contents[1]["parts"], contents[2]["parts"]
    sent = [p.get("thoughtSignature", p.get("thought_signature")) for p in model_turn]
    # the bytes Gemini gave, back (google-genai writes them in base64's URL-safe alphabet)
    assert [s and base64.urlsafe_b64decode(s) for s in sent] == [
        base64.b64decode(signature), None]
    # both results in one turn, answering the calls by name
    assert [p["functionResponse"]["name"] for p in results] == ["get_weather"] * 2


def test_a_second_turn_without_the_signature_is_refused(service, fake):
    """The fake refuses it as Gemini 3 does: the check the test above passes is real."""
    fake.script(ToolCalls([("get_weather", '{"city": "Paris"}')]))
    _, second = run(service, lambda: _two_turns(service, False, keep_signatures=False))
    assert isinstance(second, InvalidRequestError)
    assert "thought_signature" in second.message


@pytest.mark.parametrize(
    ("reply", "invalid"),
    [
        (GoogleError(500, "Request contains an invalid argument.",
                     google_status="INVALID_ARGUMENT"), True),
        (GoogleError(503, "precondition", google_status="FAILED_PRECONDITION"), True),
        (GoogleError(500, "Internal error encountered."), False),
        (GoogleError(503, "The service is currently unavailable."), False),
    ],
)
def test_a_5xx_whose_status_says_the_request_is_invalid_is_not_retried(
    service, fake, reply, invalid
):
    fake.script(reply)
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert type(error) is (InvalidRequestError if invalid else ProviderServerError)
    assert error.is_retryable is (not invalid) and error.status_code == reply.status


def test_connection_errors_name_host_and_port(vertex_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("VERTEX_BASE_URL", f"http://127.0.0.1:{port}/?key=QUERYSECRET")
    service = VertexService()
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert isinstance(error, ProviderConnectionError)
    assert f"127.0.0.1:{port}" in error.message
    assert error.details["endpoint"] == f"127.0.0.1:{port}"
    assert "QUERYSECRET" not in json.dumps(error.to_info().model_dump())


# --- embeddings --------------------------------------------------------------------------------


def test_embed_predict_models_batch_to_the_limit(service, fake, monkeypatch):
    monkeypatch.setattr(VertexService, "embed_batch_size", 3)
    texts = [f"text number {i}" for i in range(7)]
    result, ctx = run(
        service,
        lambda: call(
            service, "embed", {"model": "text-embedding-005", "texts": texts, "dimensions": 4}
        ),
    )
    assert result["vectors"] == [vector_for(t, 4) for t in texts]
    reqs = fake.api_requests()
    assert [r.path.rsplit(":", 1)[1] for r in reqs] == ["predict"] * 3
    assert [len(r.body["instances"]) for r in reqs] == [3, 3, 1]
    assert all(r.body["parameters"] == {"outputDimensionality": 4} for r in reqs)
    assert result["usage"]["input_tokens"] == 21 and len(ctx.usage) == 3


def test_embed_gemini_models_use_batch_embed_contents(service, fake, monkeypatch):
    monkeypatch.setattr(VertexService, "gemini_embed_batch_size", 2)
    texts = ["alpha", "beta", "gamma"]
    result, _ = run(
        service, lambda: call(service, "embed", {"model": "gemini-embedding-001", "texts": texts})
    )
    assert result["vectors"] == [vector_for(t) for t in texts]
    assert [r.path.rsplit(":", 1)[1] for r in fake.api_requests()] == [
        "batchEmbedContents",
        "embedContent",
    ]
    assert result["usage"]["input_tokens"] == 3


@pytest.mark.parametrize("model", ["text-embedding-005", "gemini-embedding-001"])
def test_an_embedding_call_that_never_answers_is_reported_while_waiting(
        service, fake, monkeypatch, model):
    """Issue 21: as for chat, Vertex not answering an embedding request is reported every
    AIECS_WAIT_NOTICE seconds, naming the host and the model; so is its timeout."""
    monkeypatch.setenv("AIECS_WAIT_NOTICE", "0.3")
    fake.script(Hang())
    error, ctx = run(service, lambda: call(
        service, "embed", {"model": model, "texts": ["a"]}, deadline=1.0))
    assert isinstance(error, ProviderTimeoutError), error
    host = fake.base_url.split("://", 1)[1].split("/", 1)[0]
    assert str(error).endswith(f"(at {host}, model {model!r})"), error
    notices = [e.message for e in ctx.events if e.type == "progress"]
    assert notices and re.fullmatch(
        rf"vertex: waiting for {re.escape(host)} \(model '{model}'\): no answer yet after "
        r"0\.[3-6] s \(the request gives up after [\d.]+ s\)", notices[0]), notices


def test_embed_rejects_a_short_answer(service, fake):
    fake.script(Vectors([[0.0]]))
    result, _ = run(
        service,
        lambda: call(service, "embed", {"model": "text-embedding-005", "texts": ["a", "b"]}),
    )
    assert isinstance(result, ProviderServerError)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, ModelNotFoundError),
        (500, ProviderServerError),
        (503, ProviderServerError),
    ],
)
def test_http_errors_by_status_and_no_sdk_retries(service, fake, status, cls):
    fake.script(GoogleError(status, "nope"))
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert type(error) is cls
    assert error.status_code == status and error.provider == "vertex"
    assert error.is_retryable == (status >= 500)
    assert "nope" in error.message
    assert len(fake.api_requests()) == 1, "the SDK must not retry: the worker does"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (GoogleError(429, headers={"retry-after": "3"}), 3.0),
        (GoogleError(429, retry_delay="2.5s"), 2.5),
        (GoogleError(429), None),
    ],
)
def test_429_carries_retry_after(service, fake, reply, expected):
    fake.script(reply)
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert isinstance(error, RateLimitError) and error.is_retryable
    assert error.retry_after == expected
    assert len(fake.api_requests()) == 1


def test_missing_project_names_the_variable(monkeypatch):
    service = VertexService()
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert isinstance(error, ConfigurationError)
    assert error.env_var == "VERTEX_PROJECT_ID" and "VERTEX_PROJECT_ID" in error.message


def test_missing_credentials_file_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("VERTEX_PROJECT_ID", "p")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    service = VertexService()
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    assert isinstance(error, ConfigurationError)
    assert error.env_var == "GOOGLE_APPLICATION_CREDENTIALS"


def test_hanging_server_times_out_within_the_deadline(service, fake):
    fake.script(Hang())
    started = time.monotonic()
    error, _ = chat(service, {"model": MODEL, "messages": USER}, deadline=1.0)
    assert isinstance(error, ProviderTimeoutError) and error.is_retryable
    assert time.monotonic() - started < 10


def test_connection_refused_is_retryable(vertex_env, monkeypatch):
    monkeypatch.setenv("VERTEX_BASE_URL", f"http://127.0.0.1:{free_port()}/")
    service = VertexService()
    error, _ = chat(service, {"model": MODEL, "messages": USER})
    # The token endpoint is still the fake; the API endpoint refuses connections.
    assert isinstance(error, ProviderConnectionError) and error.is_retryable


class TestVertexStreams(StreamCases):
    model = MODEL
    Cut = Cut
    Hang = Hang


# --- plugin ------------------------------------------------------------------------------------


def test_entry_point_and_service_names():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="aiecs") if ep.name == "vertex"]
    assert ep.value == "aiecs_providers_vertex.plugin"
    assert (VertexService.mode, VertexService.name) == ("llm", "vertex")
    assert sorted(VertexService.operations) == ["chat", "embed"]


def test_importing_the_plugin_does_not_import_the_sdk():
    code = (
        "import sys, aiecs_providers_vertex.plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('google', 'httpx2', 'vertexai')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    # (google and google.cloud: the empty namespace packages of aiplatform's -nspkg.pth)
    assert set(json.loads(out.stdout.replace("'", '"'))) <= {"google", "google.cloud"}


def test_rate_limit_key(service):
    data = VertexService.operations["chat"].input_model.model_validate(
        {"model": MODEL, "messages": USER, "max_output_tokens": 100}
    )
    key = service.rate_limit_key("chat", data)
    assert (key.provider, key.model) == ("vertex", MODEL) and key.tokens > 100


class TestVertexConformance(ServiceConformance):
    @pytest.fixture
    def plugin(self):
        return plugin

    @pytest.fixture
    def examples(self, vertex_env, fake, endpoints, monkeypatch):
        if not installed("google.cloud.aiplatform"):
            pytest.skip("vertex/endpoint's examples need the 'endpoints' extra "
                        "(uv run --package aiecs-providers-vertex --extra endpoints ...)")
        # seconds of import, not inside run_operation's 60 s timeout
        import google.cloud.aiplatform  # noqa: F401

        # vertex/endpoint at the endpoints server: it accepts the same access token, and
        # JWTs signed with the key vertex_env wrote
        endpoints.public_key = fake.public_key
        monkeypatch.setenv("VERTEX_ENDPOINT_BASE_URL", endpoints.api_endpoint)
        monkeypatch.setenv("VERTEX_ENDPOINT_ID", "4242")
        return {
            ("llm", "vertex", "chat"): {"model": MODEL, "messages": USER},
            ("llm", "vertex", "embed"): {"model": "text-embedding-005", "texts": ["a", "b"]},
            ("vertex", "endpoint", "predict"): {"instances": [{"x": 1}]},
            ("vertex", "endpoint", "raw_predict"): {"body": {"prompt": "hi"}},
            ("vertex", "endpoint", "chat"): {"model": "m", "messages": USER},
        }
