"""Provider inputs that name resources (issue 16, row 4): a user names a model id, never a
resource path. The real SDKs (google-genai in Vertex mode, google-cloud-aiplatform, openai)
against the local fake servers; each hostile model must leave the fake with no request at
all (not even a token grant), and the refusal must name the field and the problem.

- in the provider itself, before any request (input built without validation, as a
  plugin or a future code path could);
- through a real worker, from a raw broker message (``execute_task.delay`` skips
  submission): FAILED with the reason, nothing sent; with the operator's allow-list
  (``AIECS_MODELS``) and output ceiling (``AIECS_MAX_OUTPUT_TOKENS``) applied too.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiecs_core import InputValidationError, RecordingContext, load_plugins, validate_input
from aiecs_core.llm import ChatInput, EmbedInput
from aiecs_core.testing import make_request
from aiecs_worker import execute_task

from tests.providers._common import call
from tests.support.events import wait_terminal
from tests.support.extras import installed
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.fake_vertex import FakeVertex
from tests.support.fake_vertex_endpoints import FakeVertexEndpoints

USER = [{"role": "user", "content": "hello there"}]
GOOD = "gemini-2.5-flash"
#: (hostile model, what the refusal must name)
HOSTILE_VERTEX = [
    ("projects/victim-project/locations/us-central1/endpoints/999", "contains '/'"),
    ("projects/test-project/locations/us-central1/endpoints/123:undeployModel#",
     "contains '#'"),
    ("../../endpoints/123", "'..' path segment"),
    (f"{GOOD}?alt=sse", "contains '?'"),
    (f"{GOOD}%2F..%2Fx", "contains '%'"),
    (f"{GOOD}:undeployModel", "':' is refused"),
    (f"{GOOD}\n", "contains '\\n'"),
]


def _direct(service, op: str, data) -> object:
    """Run one operation on ``data`` as given (no validation): the provider's own check is
    all that stands between the input and the SDK."""
    spec = type(service).operations[op]
    ctx = RecordingContext(make_request(service.mode, service.name, op, {}))

    async def main():
        try:
            return await spec.func(service, ctx, data)
        except InputValidationError as exc:
            return exc
        finally:
            await service.aclose()

    return asyncio.run(main())


@pytest.fixture
def vertex(monkeypatch, tmp_path):
    with FakeVertex() as fake:
        for name, value in _vertex_env(fake, tmp_path).items():
            monkeypatch.setenv(name, value)
        yield fake


def _vertex_env(fake: FakeVertex, tmp_path) -> dict[str, str]:
    return {"VERTEX_PROJECT_ID": fake.project, "VERTEX_LOCATION": fake.location,
            "VERTEX_BASE_URL": fake.base_url,
            "GOOGLE_APPLICATION_CREDENTIALS": fake.write_credentials(tmp_path)}


# -- in the provider -------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "named"), HOSTILE_VERTEX,
                         ids=[str(i) for i in range(len(HOSTILE_VERTEX))])
def test_vertex_refuses_a_resource_path_before_any_request(vertex, model, named):
    from aiecs_providers_vertex.plugin import VertexService

    chat = ChatInput(model=GOOD, messages=USER).model_copy(update={"model": model})
    embed = EmbedInput(model="text-embedding-005", texts=["a"]).model_copy(
        update={"model": model})
    for op, data in (("chat", chat), ("embed", embed)):
        error = _direct(VertexService(), op, data)
        assert isinstance(error, InputValidationError), error
        assert error.message.startswith(f"model: {model!r}") and named in error.message
    assert vertex.requests == []  # no token grant, no API call
    # At submission, the same refusal (the operation's input check, as HTTP, batches,
    # workflows and schedules run it).
    spec = load_plugins().operation("llm", "vertex", "chat")
    with pytest.raises(InputValidationError, match="model"):
        validate_input(spec, {"model": model, "messages": USER})


def test_vertex_sends_a_model_id_under_the_operators_project(vertex):
    """The control: the same set-up reaches the fake, at the publisher model of the
    configured project and location."""
    from aiecs_providers_vertex.plugin import VertexService

    service = VertexService()
    result, _ = asyncio.run(_call_and_close(service, "chat", {"model": GOOD,
                                                              "messages": USER}))
    assert result["text"] == "echo: hello there"
    (req,) = vertex.api_requests()
    assert req.path == (f"/v1beta1/projects/{vertex.project}/locations/{vertex.location}"
                        f"/publishers/google/models/{GOOD}:generateContent")


async def _call_and_close(service, op, data):
    try:
        return await call(service, op, data)
    finally:
        await service.aclose()


@pytest.mark.skipif(not installed("google.cloud.aiplatform"),
                    reason="the 'endpoints' extra (google-cloud-aiplatform) is not installed")
@pytest.mark.parametrize("endpoint", ["123:undeployModel#", "../../other/endpoints/9",
                                      "123?x=1", "1%2F2", "999\n"])
def test_vertex_endpoint_refuses_a_path_as_the_endpoint(monkeypatch, tmp_path, endpoint):
    endpoints = FakeVertexEndpoints().start()
    for name, value in endpoints.env(endpoints.write_credentials(tmp_path)).items():
        monkeypatch.setenv(name, value)
    try:
        _endpoint_refusals(endpoints, endpoint)
    finally:
        endpoints.close()


def _endpoint_refusals(endpoints, endpoint: str) -> None:
    from aiecs_providers_vertex.endpoint import EndpointService
    from aiecs_providers_vertex.endpoint_models import (
        EndpointChatInput,
        PredictInput,
        RawPredictInput,
    )

    inputs = {
        "predict": PredictInput(instances=[1]),
        "raw_predict": RawPredictInput(body={"instances": [1]}),
        "chat": EndpointChatInput(model="m", messages=USER),
    }
    for op, data in inputs.items():
        error = _direct(EndpointService(), op, data.model_copy(update={"endpoint": endpoint}))
        assert isinstance(error, InputValidationError), (op, error)
        assert error.message.startswith(f"endpoint: {endpoint!r} is not a Vertex AI endpoint ID")
    chat = EndpointChatInput(model="m", messages=USER, endpoint="123")
    error = _direct(EndpointService(), "chat", chat.model_copy(update={"model": "m#x"}))
    assert isinstance(error, InputValidationError) and "contains '#'" in error.message
    assert endpoints.requests == []
    spec = load_plugins().operation("vertex", "endpoint", "raw_predict")
    with pytest.raises(InputValidationError, match="endpoint"):
        validate_input(spec, {"endpoint": endpoint, "body": {}})


@pytest.mark.parametrize("model", ["gpt-4o-mini\n", "gpt-4o-mini ", "../v1/files", "a#b"])
def test_openai_refuses_what_is_not_a_model_id_before_any_request(monkeypatch, model):
    from aiecs_providers_openai.plugin import OpenAIService

    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_API_KEY", fake.api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        data = ChatInput(model="gpt-4o-mini", messages=USER).model_copy(update={"model": model})
        error = _direct(OpenAIService(), "chat", data)
        assert isinstance(error, InputValidationError) and "not a model id" in error.message
        data = EmbedInput(model="e", texts=["a"]).model_copy(update={"model": model})
        assert isinstance(_direct(OpenAIService(), "embed", data), InputValidationError)
        assert fake.requests == []


# -- through a worker, from a raw broker message ---------------------------------------------
def _send(input_data: dict) -> str:
    """A raw message to the broker (``.delay``: no submission-side validation)."""
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(task_name="chat", user_id="alice", task_id=task_id, step=1,
                       mode="llm", service="vertex", input_data=input_data, context={})
    return task_id


def test_worker_fails_hostile_and_disallowed_models_and_sends_nothing(
        aiecs_redis, start_worker, tmp_path):
    with FakeVertex() as fake:
        start_worker(env={**_vertex_env(fake, tmp_path),
                          "AIECS_MODELS": json.dumps({"vertex": [GOOD], "openai": []}),
                          "AIECS_MAX_OUTPUT_TOKENS": json.dumps({"vertex": 100, "*": 10})})
        refused = {_send({"model": model, "messages": USER}): named
                   for model, named in HOSTILE_VERTEX}
        refused[_send({"model": "gemini-2.5-pro", "messages": USER})] = (
            "'gemini-2.5-pro' is not allowed for provider 'vertex' (AIECS_MODELS); "
            f"allowed: {GOOD}")
        refused[_send({"model": GOOD, "messages": USER, "max_output_tokens": 101})] = (
            "max_output_tokens: 101 is above the ceiling of 100 for provider 'vertex'")
        for task_id, named in refused.items():
            terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
            assert terminal["status"] == "failed", terminal
            assert terminal["error"]["type"] == "InputValidationError", terminal
            assert named in terminal["error"]["message"], terminal["error"]
        assert fake.requests == []  # nothing reached Google: no token, no call
        # The allowed model, at the ceiling, goes through.
        ok = _send({"model": GOOD, "messages": USER, "max_output_tokens": 100})
        terminal, _ = wait_terminal(aiecs_redis.client(), "alice", ok)
        assert terminal["status"] == "completed", terminal
        (req,) = fake.api_requests()
        assert req.path.endswith(f"/publishers/google/models/{GOOD}:generateContent")
        assert req.body["generationConfig"]["maxOutputTokens"] == 100


def test_openai_through_the_worker_keeps_namespaced_ids_in_the_body(
        aiecs_redis, start_worker):
    """OpenAI-compatible servers name models ``org/model``: the body rule accepts them and
    the SDK sends them in the JSON body, to the configured base URL."""
    with FakeOpenAI() as fake:
        start_worker(env={"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url})
        fake.script(Text("hi"))
        task_id = f"t{uuid.uuid4().hex[:10]}"
        execute_task.delay(task_name="chat", user_id="alice", task_id=task_id, step=1,
                           mode="llm", service="openai", context={},
                           input_data={"model": "meta-llama/Llama-3.1-8B-Instruct",
                                       "messages": USER})
        terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
        assert terminal["status"] == "completed", terminal
        (req,) = fake.requests
        assert req.path.endswith("/chat/completions")
        assert req.body["model"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_a_model_that_a_workflow_reference_resolves_to_is_checked_at_release(
        aiecs_redis, start_worker, tmp_path):
    """A step's ``model`` given by reference is known only when the step it names has
    completed: the resolved input is checked by the worker, and the step ends FAILED with
    nothing sent to Vertex."""
    from aiecs_worker.producer.flow import get_workflow, submit_workflow

    from tests.support.events import wait_until

    hostile = "projects/victim-project/locations/us-central1/endpoints/999"
    with FakeVertex() as fake:
        start_worker(env=_vertex_env(fake, tmp_path))
        task_id = f"wf{uuid.uuid4().hex[:10]}"
        submit_workflow("alice", [
            {"step": 1, "mode": "test", "service": "echo", "task_name": "echo",
             "input_data": {"text": hostile}},
            {"step": 2, "mode": "llm", "service": "vertex", "task_name": "chat",
             "depends_on": [1],
             "input_data": {"model": {"$ref": "steps.1.result.text"}, "messages": USER}},
        ], task_id=task_id)
        view = wait_until(lambda: (w := get_workflow("alice", task_id))
                          and w["status"] != "running" and w, timeout=40,
                          message=f"workflow {task_id} to end")
        first, second = view["steps"]
        assert first["status"] == "completed" and first["result"]["text"] == hostile
        assert second["status"] == "failed", second
        assert second["error"]["type"] == "InputValidationError", second
        assert f"model: {hostile!r} is not a model id: contains '/'" in \
            second["error"]["message"]
        assert fake.requests == []
