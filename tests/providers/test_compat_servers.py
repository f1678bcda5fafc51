"""OpenAI-compatible servers that are not OpenAI, and Gemini's tool-use rules, through real
``celery -A aiecs_worker worker`` processes, real Redis and local wire-protocol servers
(with the real openai and google-genai SDKs):

- the output limit holds on a server that knows only ``max_tokens`` and on one that knows
  only ``max_completion_tokens`` (each ignoring or refusing the other field);
- a named ``tool_choice`` and a multi-turn tool conversation on OpenAI, xAI and Vertex
  (Gemini thought signatures carried back, which the fake requires);
- streamed usage asked for, dropped after a 400, and estimated usage left unpriced;
- a connection error names ``host:port``; a 5xx saying the request is invalid is tried once.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from aiecs_worker import execute_task

from tests.support.events import wait_terminal
from tests.support.fake_openai import Error, FakeOpenAI, Generate, Hang, Text
from tests.support.fake_vertex import FakeVertex
from tests.support.redis_server import free_port

USER = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {"name": "get_weather",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time"},
]
#: the same tools in OpenAI's form, as users paste them
OPENAI_FORM_TOOLS = [{"type": "function", "function": tool} for tool in TOOLS]


def submit(service: str, input_data: dict, *, queue: str | None = None) -> str:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    kwargs = dict(task_name="chat", user_id="alice", task_id=task_id, step=1, mode="llm",
                  service=service, input_data=input_data, context={})
    if queue is None:
        execute_task.delay(**kwargs)
    else:
        execute_task.apply_async(kwargs=kwargs, queue=queue)
    return task_id


def finish(aiecs_redis, task_id: str, timeout: float = 30.0) -> dict:
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id, timeout=timeout)
    return terminal


def run_chat(aiecs_redis, service: str, input_data: dict, **kw) -> dict:
    return finish(aiecs_redis, submit(service, input_data, **kw))


# --- the output limit -------------------------------------------------------------------------


def test_the_output_limit_holds_on_servers_knowing_one_field(aiecs_redis, start_worker):
    """16 tokens asked for: 16 produced, on every kind of server (not 2,000, to the end of
    the context, as when a server ignores the field it was sent)."""
    servers = {
        # knows max_tokens only, ignores max_completion_tokens (llama.cpp, older vLLM)
        "only-max-tokens": (FakeOpenAI(limit_fields=("max_tokens",)), {}),
        # knows max_completion_tokens only and ignores max_tokens: set the field
        "only-completion-ignoring": (
            FakeOpenAI(limit_fields=("max_completion_tokens",)),
            {"OPENAI_MAX_TOKENS_FIELD": "max_completion_tokens"},
        ),
        # knows max_completion_tokens only and refuses max_tokens, naming it (as OpenAI's
        # reasoning models do): auto retries once with the other field
        "only-completion-refusing": (
            FakeOpenAI(limit_fields=("max_completion_tokens",), refuse_other_limit=True), {},
        ),
    }
    try:
        for queue, (server, env) in servers.items():
            server.start()
            start_worker(queues=queue, concurrency=2, env={
                "OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url, **env})
            server.script(Generate(2000, delay=0.001))
        started = time.monotonic()
        tasks = {queue: submit("openai", {"model": "local", "messages": USER, "stream": True,
                                          "max_output_tokens": 16}, queue=queue)
                 for queue in servers}
        for queue, task_id in tasks.items():
            terminal = finish(aiecs_redis, task_id)
            server = servers[queue][0]
            assert terminal["status"] == "completed", (queue, terminal)
            result = terminal["result"]
            assert len(result["text"].split()) == 16, queue
            assert result["finish_reason"] == "length", queue
            assert terminal["usage"][0]["output_tokens"] == 16, queue
            assert server.limits_understood[-1] == 16, queue
        assert time.monotonic() - started < 20
        refusing = servers["only-completion-refusing"][0]
        assert [("max_tokens" in r.body, "max_completion_tokens" in r.body)
                for r in refusing.requests] == [(True, False), (False, True)]
        assert all("max_tokens" in r.body for r in servers["only-max-tokens"][0].requests)
    finally:
        for server, _ in servers.values():
            server.close()


# --- tool_choice and multi-turn tool use ------------------------------------------------------


@pytest.fixture
def everything(tmp_path, start_worker):
    """One worker with the OpenAI, xAI and Vertex providers, each on its local server."""
    with FakeOpenAI() as openai_fake, FakeOpenAI() as xai_fake, FakeVertex() as vertex_fake:
        start_worker(env={
            "OPENAI_API_KEY": openai_fake.api_key, "OPENAI_BASE_URL": openai_fake.base_url,
            "XAI_API_KEY": xai_fake.api_key, "XAI_BASE_URL": xai_fake.base_url,
            "VERTEX_PROJECT_ID": vertex_fake.project, "VERTEX_LOCATION": vertex_fake.location,
            "VERTEX_BASE_URL": vertex_fake.base_url,
            "GOOGLE_APPLICATION_CREDENTIALS": vertex_fake.write_credentials(tmp_path),
        })
        yield {"openai": openai_fake, "xai": xai_fake, "vertex": vertex_fake}


@pytest.mark.parametrize("service", ["openai", "xai", "vertex"])
def test_named_tool_choice_then_tool_results_round_trip(aiecs_redis, everything, service):
    fake = everything[service]
    model = "gemini-3-pro" if service == "vertex" else "m"
    choice = {"type": "function", "function": {"name": "get_weather"}}
    first = run_chat(aiecs_redis, service, {"model": model, "messages": USER,
                                            "tools": OPENAI_FORM_TOOLS,
                                            "tool_choice": choice, "stream": True})
    assert first["status"] == "completed", first
    (call,) = first["result"]["tool_calls"]
    assert call["name"] == "get_weather" and first["result"]["finish_reason"] == "tool_calls"
    if service == "vertex":
        assert call["signature"]  # Gemini's thought signature, returned to the caller
        calling = fake.api_requests()[0].body["toolConfig"]["functionCallingConfig"]
        assert calling["mode"] == "ANY"
    else:
        assert fake.requests[0].body["tool_choice"] == choice

    # The caller sends the conversation back: the assistant turn as returned, the result.
    messages = [
        *USER,
        {"role": "assistant", "tool_calls": first["result"]["tool_calls"]},
        {"role": "tool", "tool_call_id": call["id"], "name": "get_weather",
         "content": json.dumps({"temp": 21})},
    ]
    second = run_chat(aiecs_redis, service, {"model": model, "messages": messages,
                                             "tools": TOOLS})
    assert second["status"] == "completed", second  # the fakes refuse a malformed turn
    assert second["result"]["text"] == 'tool results: {"temp": 21}'
    # OpenAI's form (first call) and the short one (second) reach the wire alike
    if service == "vertex":
        bodies = [r.body for r in fake.api_requests()]
        assert bodies[0]["tools"] == bodies[-1]["tools"]
    else:
        assert fake.requests[0].body["tools"] == fake.requests[-1].body["tools"]
    if service == "vertex":
        # Without the signature the fake refuses the turn, as Gemini 3 does.
        stripped = [{k: v for k, v in c.items() if k != "signature"}
                    for c in first["result"]["tool_calls"]]
        refused = run_chat(aiecs_redis, service, {
            "model": model, "tools": TOOLS,
            "messages": [messages[0], {"role": "assistant", "tool_calls": stripped},
                         messages[2]]})
        assert refused["status"] == "failed"
        assert refused["error"]["type"] == "InvalidRequestError"
        assert "thought_signature" in refused["error"]["message"]
    else:
        sent = fake.requests[-1].body["messages"]
        assert sent[1]["tool_calls"][0]["id"] == call["id"] == sent[2]["tool_call_id"]


# --- streamed usage ---------------------------------------------------------------------------


def test_stream_usage_is_asked_for_and_estimated_usage_is_not_priced(
    aiecs_redis, start_worker
):
    prices = json.dumps({"openai/m": {"input": 1.0, "output": 1.0}})
    with FakeOpenAI() as asks, FakeOpenAI(accepts_stream_options=False) as refuses:
        for queue, server in (("usage-ok", asks), ("usage-refused", refuses)):
            start_worker(queues=queue, concurrency=2, env={
                "OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url,
                "AIECS_PRICES": prices})
        data = {"model": "m", "messages": USER, "stream": True}
        reported = run_chat(aiecs_redis, "openai", data, queue="usage-ok")
        assert reported["status"] == "completed", reported
        (usage,) = reported["usage"]
        assert asks.requests[0].body["stream_options"] == {"include_usage": True}
        assert usage["estimated"] is False and usage["cost"] == pytest.approx(
            (usage["input_tokens"] + usage["output_tokens"]) / 1e6)

        estimated = [run_chat(aiecs_redis, "openai", data, queue="usage-refused")
                     for _ in range(2)]
        assert [t["status"] for t in estimated] == ["completed", "completed"]
        assert all(t["result"]["text"] == "echo: hello there" for t in estimated)
        # refused once (400), retried without it, then never asked again by that process
        assert ["stream_options" in r.body for r in refuses.requests] == [True, False, False]
        for terminal in estimated:
            (usage,) = terminal["usage"]
            assert usage["estimated"] is True and usage["cost"] is None
            assert usage["output_tokens"] > 0


# --- errors -----------------------------------------------------------------------------------


def test_a_connection_error_names_host_and_port_only(aiecs_redis, start_worker):
    port = free_port()
    start_worker(env={
        "OPENAI_API_KEY": "sk-live-KEYKEYKEY0123456789",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1?api-key=QUERYSECRET",
        "AIECS_MAX_ATTEMPTS": "2", "AIECS_RETRY_BACKOFF": "0.05"})
    terminal = run_chat(aiecs_redis, "openai", {"model": "m", "messages": USER})
    assert terminal["status"] == "failed"
    error = terminal["error"]
    assert error["type"] == "ProviderConnectionError"
    assert f"127.0.0.1:{port}" in error["message"]
    assert error["details"]["endpoint"] == f"127.0.0.1:{port}"
    text = json.dumps(terminal)
    assert "KEYKEYKEY" not in text and "QUERYSECRET" not in text


def test_a_wrong_base_url_names_provider_host_path_and_model(aiecs_redis, start_worker):
    """Issue 21: a reachable server answering 404 (the base URL without its /v1) said only
    'openai: HTTP 404: Not Found'."""
    with FakeOpenAI() as server:
        wrong = server.base_url.rsplit("/v1", 1)[0]  # what a user forgets
        start_worker(env={"OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": wrong,
                          "XAI_API_KEY": server.api_key, "XAI_BASE_URL": wrong})
        host = wrong.split("://", 1)[1].rstrip("/")
        for service in ("openai", "xai"):
            for stream in (False, True):
                terminal = run_chat(aiecs_redis, service, {
                    "model": "gpt-typo", "messages": USER, "stream": stream})
                assert terminal["status"] == "failed", terminal
                error = terminal["error"]
                assert error["type"] == "ModelNotFoundError"
                message = error["message"]
                assert message.startswith(f"{service}: HTTP 404: "), message
                assert (f"(at POST {host}/chat/completions, model 'gpt-typo': a wrong base "
                        "URL, or a model this server does not have)") in message, message
                assert error["details"]["model"] == "gpt-typo"
                assert error["details"]["endpoint"] == host


def test_a_server_that_never_answers_is_reported_while_waiting(aiecs_redis, start_worker):
    """Issue 21: a base URL that accepts connections and never answers gave no feedback for
    OPENAI_TIMEOUT (120 s). Now every AIECS_WAIT_NOTICE seconds a progress event names the
    provider, the host and the model, and the timeout error does too."""
    with FakeOpenAI() as server:
        start_worker(env={"OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url,
                          "OPENAI_TIMEOUT": "2", "AIECS_WAIT_NOTICE": "0.5",
                          "AIECS_MAX_ATTEMPTS": "1"})
        host = server.base_url.split("://", 1)[1].split("/", 1)[0]
        for stream in (False, True):
            server.script(Hang())
            task_id = submit("openai", {"model": "m-slow", "messages": USER, "stream": stream})
            terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
            assert terminal["status"] == "failed", terminal
            assert terminal["error"]["type"] == "ProviderTimeoutError"
            assert terminal["error"]["message"] == (
                f"openai: request to {host} timed out (model 'm-slow')")
            notices = [e["message"] for e in events if e["type"] == "progress"]
            assert notices[0] == (f"openai: waiting for {host} (model 'm-slow'): no answer "
                                  "yet after 0.5 s (the request gives up after 2 s)"), notices
            assert 2 <= len(notices) <= 5, notices  # every 0.5 s until the 2 s timeout
            running = next(e["timestamp"] for e in events if e["status"] == "running")
            first = next(e["timestamp"] for e in events if e["type"] == "progress")
            assert first - running < 1.5  # well before the request's own timeout


def test_vertex_waits_and_errors_name_host_and_model(aiecs_redis, tmp_path, start_worker):
    """The same for Vertex: notices while it has not answered; errors name where the call
    went and the model."""
    from tests.support.fake_vertex import GoogleError
    from tests.support.fake_vertex import Hang as VertexHang

    with FakeVertex() as fake:
        start_worker(env={
            "VERTEX_PROJECT_ID": fake.project, "VERTEX_LOCATION": fake.location,
            "VERTEX_BASE_URL": fake.base_url, "VERTEX_TIMEOUT": "2",
            "GOOGLE_APPLICATION_CREDENTIALS": fake.write_credentials(tmp_path),
            "AIECS_WAIT_NOTICE": "0.5", "AIECS_MAX_ATTEMPTS": "1"})
        host = fake.base_url.split("://", 1)[1].split("/", 1)[0]
        for stream in (False, True):
            fake.script(VertexHang())
            task_id = submit("vertex", {"model": "gemini-slow", "messages": USER,
                                        "stream": stream})
            terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
            assert terminal["status"] == "failed", terminal
            assert terminal["error"]["type"] == "ProviderTimeoutError"
            assert terminal["error"]["message"].endswith(
                f"(at {host}, model 'gemini-slow')"), terminal["error"]
            notices = [e["message"] for e in events if e["type"] == "progress"]
            assert notices and notices[0].startswith(
                f"vertex: waiting for {host} (model 'gemini-slow'): no answer yet after "
                "0.5 s"), notices
        fake.script(GoogleError(404, "Publisher Model gemini-typo was not found"))
        terminal = run_chat(aiecs_redis, "vertex", {"model": "gemini-typo", "messages": USER})
        assert terminal["error"]["type"] == "ModelNotFoundError"
        assert terminal["error"]["message"] == (
            "vertex: HTTP 404: Publisher Model gemini-typo was not found (at "
            f"{host}, model 'gemini-typo')")


def test_a_5xx_saying_the_request_is_invalid_is_tried_once(aiecs_redis, start_worker):
    with FakeOpenAI() as server:
        start_worker(env={"OPENAI_API_KEY": server.api_key, "OPENAI_BASE_URL": server.base_url,
                          "AIECS_RETRY_BACKOFF": "0.05"})
        server.script(Error(500, "response_format json_schema is not supported",
                            type="invalid_request_error"))
        terminal = run_chat(aiecs_redis, "openai", {"model": "m", "messages": USER})
        assert terminal["status"] == "failed"
        assert terminal["error"]["type"] == "InvalidRequestError"
        assert terminal["error"]["details"]["status_code"] == 500
        assert len(server.requests) == 1
        # a plain 5xx is still retried
        server.script(Error(500, "boom", type="server_error"), Text("fine"))
        again = run_chat(aiecs_redis, "openai", {"model": "m", "messages": USER})
        assert again["status"] == "completed" and again["result"]["text"] == "fine"
        assert len(server.requests) == 3
