"""Tracing (AIECS_TRACING=1, docs/operations.md "Tracing") on real processes: a real
``aiecs serve``, real ``celery worker`` processes (prefork and threads), a Python
``.delay()`` in a process of its own, the local OpenAI wire-protocol server, and a real
OTLP/HTTP collector (tests/support/otlp.py) that decodes what the SDK exports.

One trace id spans the submission (``POST /tasks`` or ``.delay()``), the ``send`` span
whose context travelled in the Celery message, the worker's ``process`` span and one
GenAI ``chat {model}`` span per provider attempt; the terminal event closes the
execution span. Prefork children export (their exporter is set up after the fork).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aiecs_core import TaskRequest
from aiecs_worker.producer import control

from tests.server.helpers import uid
from tests.support.events import wait_terminal
from tests.support.fake_openai import Error, FakeOpenAI, Text
from tests.support.otlp import Collector, Span

PROMPT = "tell me the secret plan"
MODEL = "gpt-trace"


@pytest.fixture
def collector():
    with Collector() as c:
        yield c


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def tracing_env(collector: Collector, fake: FakeOpenAI) -> dict[str, str]:
    return {"AIECS_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
            "AIECS_RETRY_BACKOFF": "0.05"}


def chat(task_id: str) -> dict:
    return {"mode": "llm", "service": "openai", "task_name": "chat", "task_id": task_id,
            "input_data": {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}}


def trace_of(spans: list[Span], task_id: str, clients: int) -> list[Span] | None:
    """The spans of the trace whose ``process`` span ran ``task_id``, once its
    submission, ``send`` and ``clients`` provider spans have all arrived."""
    process = [s for s in spans if s.kind == "CONSUMER"
               and s.attributes.get("aiecs.task_id") == task_id]
    if not process:
        return None
    trace = [s for s in spans if s.trace_id == process[0].trace_id]
    kinds = [s.kind for s in trace]
    if kinds.count("CLIENT") < clients or "PRODUCER" not in kinds:
        return None
    return trace


def check_trace(trace: list[Span], clients: int) -> tuple[Span, Span, list[Span]]:
    """The links and attributes every trace has: (send, process, provider calls)."""
    by_kind = {k: [s for s in trace if s.kind == k] for k in ("PRODUCER", "CONSUMER", "CLIENT")}
    [send], [process] = by_kind["PRODUCER"], by_kind["CONSUMER"]
    calls = by_kind["CLIENT"]
    assert len(calls) == clients
    assert send.name == "send fast_tasks"
    assert process.name == "process fast_tasks" and process.parent_id == send.span_id
    assert process.service == "aiecs-worker"
    assert process.attributes["aiecs.task_name"] == "chat"
    assert process.attributes["aiecs.service"] == "openai"
    for call in calls:
        assert call.parent_id == process.span_id
        assert call.name == f"chat {MODEL}"
        assert call.attributes["gen_ai.operation.name"] == "chat"
        assert call.attributes["gen_ai.provider.name"] == "openai"
        assert call.attributes["gen_ai.request.model"] == MODEL
    done = calls[-1]
    assert done.attributes["gen_ai.response.model"] == MODEL
    assert done.attributes["gen_ai.usage.input_tokens"] > 0
    assert done.attributes["gen_ai.usage.output_tokens"] > 0
    assert ("aiecs.terminal", {"aiecs.status": "completed"}) in process.events
    # no user content and no secret in any attribute or event
    text = json.dumps([(s.name, s.attributes, s.events) for s in trace])
    assert PROMPT not in text and "secret plan" not in text and "sk-" not in text
    assert "user_id" not in text
    return send, process, calls


@pytest.mark.slow
def test_one_trace_from_post_tasks_to_the_provider_call_in_a_prefork_child(
        collector, fake, aiecs_redis, start_worker, start_server):
    env = tracing_env(collector, fake)
    worker = start_worker(pool="prefork", concurrency=2, env=env)
    server = start_server(aiecs_redis.url, env=env)
    fake.script(Text("the answer", model=MODEL))
    user, task_id = uid("trace"), uid("t")
    status, body = server.http("POST", "/tasks", chat(task_id), token=server.token(user),
                               headers={"traceparent":
                                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    assert status == 202, body
    terminal, _ = wait_terminal(aiecs_redis.client(), user, task_id)
    assert terminal["status"] == "completed", terminal

    # the server's POST /tasks span ends after its send span: it may come in a later export
    trace = collector.wait(
        lambda spans: (t := trace_of(spans, task_id, 1)) and any(s.kind == "SERVER" for s in t)
        and t, what="the trace with its POST /tasks span")
    send, process, [call] = check_trace(trace, 1)
    # the caller's traceparent is continued: the trace is the caller's
    assert process.trace_id == "0af7651916cd43dd8448eb211c80319c"
    [http] = [s for s in trace if s.kind == "SERVER"]
    assert http.name == "POST /tasks" and http.service == "aiecs-server"
    assert http.parent_id == "b7ad6b7169203331"
    assert http.attributes["http.response.status_code"] == 202
    assert send.parent_id == http.span_id and send.service == "aiecs-server"
    # exported by a prefork child (its own exporter, set up after the fork)
    assert process.pid in worker.children() and call.pid == process.pid

    points = collector.wait_points(lambda ps: [
        p for p in ps if p.name == "gen_ai.client.operation.duration"
        and p.attributes.get("gen_ai.request.model") == MODEL])
    assert points[0].attributes["gen_ai.provider.name"] == "openai"
    assert points[0].attributes["gen_ai.operation.name"] == "chat"
    assert points[0].bounds[:3] == [0.01, 0.02, 0.04]
    tokens = collector.wait_points(lambda ps: {
        p.attributes.get("gen_ai.token.type") for p in ps
        if p.name == "gen_ai.client.token.usage"} >= {"input", "output"})
    assert tokens


@pytest.mark.slow
def test_one_trace_from_delay_through_a_retry_in_a_threads_worker(
        collector, fake, aiecs_redis, start_worker):
    env = tracing_env(collector, fake)
    start_worker(pool="threads", concurrency=2, env=env)
    fake.script(Error(500, "overloaded", type="server_error"), Text("the answer", model=MODEL))
    user, task_id = uid("trace"), uid("t")
    kwargs = {**chat(task_id), "user_id": user, "step": 1}
    code = ("import json, sys; from aiecs_worker.runner.tasks import execute_task; "
            "execute_task.delay(**json.loads(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], check=True, timeout=60,
                   env={**os.environ, **env, "OTEL_SERVICE_NAME": "my-app"})
    terminal, _ = wait_terminal(aiecs_redis.client(), user, task_id)
    assert terminal["status"] == "completed", terminal

    trace = collector.wait(lambda spans: trace_of(spans, task_id, 2), what="the trace")
    send, process, calls = check_trace(trace, 2)
    assert send.parent_id == "" and send.service == "my-app"  # the root: .delay()
    failed, _ = calls
    assert failed.attributes["error.type"].endswith("Error")
    assert failed.status_code == 2  # ERROR
    assert "overloaded" not in json.dumps(failed.attributes)
    assert "gen_ai.usage.output_tokens" not in failed.attributes


@pytest.mark.slow
def test_a_failed_execution_marks_its_span_with_the_error_type_only(
        collector, fake, aiecs_redis, start_worker):
    env = tracing_env(collector, fake)
    start_worker(pool="threads", concurrency=2, env=env)
    fake.script(Error(400, f"bad request echoing {PROMPT}"))
    user, task_id = uid("trace"), uid("t")
    control.submit(TaskRequest(**chat(task_id), user_id=user, step=1))
    terminal, _ = wait_terminal(aiecs_redis.client(), user, task_id)
    assert terminal["status"] == "failed", terminal

    # tracing is off in this (submitting) process: the trace starts at the worker
    [process] = collector.wait(lambda spans: [
        s for s in spans if s.kind == "CONSUMER" and s.attributes.get("aiecs.task_id") == task_id
        and s.events], what="the process span")
    assert process.parent_id == ""
    assert process.status_code == 2  # ERROR
    error_type = terminal["error"]["type"]
    assert process.attributes["error.type"] == error_type
    assert ("aiecs.terminal", {"aiecs.status": "failed", "error.type": error_type}) \
        in process.events
    [call] = collector.wait(lambda spans: [
        s for s in spans if s.kind == "CLIENT" and s.parent_id == process.span_id])
    assert call.status_code == 2 and call.attributes["error.type"] == error_type
    text = json.dumps([(s.name, s.attributes, s.events) for s in collector.spans])
    assert PROMPT not in text and "bad request echoing" not in text


@pytest.mark.slow
def test_the_trace_goes_on_through_the_fair_share_hold(
        collector, fake, aiecs_redis, start_worker, start_server):
    # a window of one: the user's second execution is held in Redis (no message), and the
    # worker that ends the first sends it later: its send span continues POST /tasks's
    env = {**tracing_env(collector, fake), "AIECS_FAIR_WINDOW_FAST": "1"}
    server = start_server(aiecs_redis.url, env=env)
    fake.script(Text("first", model=MODEL), Text("second", model=MODEL))
    user, first, second = uid("trace"), uid("t"), uid("t")
    token = server.token(user)
    status, body = server.http("POST", "/tasks", chat(first), token=token)
    assert status == 202, body
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    status, body = server.http("POST", "/tasks", chat(second), token=token,
                               headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert status == 202, body
    client = aiecs_redis.client()
    assert client.hget(f"aiecs:t:{user}:{second}:1:state", "held") == b"fair"

    start_worker(pool="threads", concurrency=2, env=env)  # runs the first, releases the second
    terminal, _ = wait_terminal(client, user, second)
    assert terminal["status"] == "completed", terminal

    trace = collector.wait(lambda spans: trace_of(spans, second, 1), what="the trace")
    send, process, [call] = check_trace(trace, 1)
    assert process.trace_id == trace_id
    [http] = [s for s in trace if s.kind == "SERVER"]
    assert http.name == "POST /tasks" and http.parent_id == "00f067aa0ba902b7"
    # sent by the worker that released it, as the child of the request that submitted it
    assert send.parent_id == http.span_id and send.service == "aiecs-worker"
    assert "trace" not in control.get_state(user, second, 1)["steps"][1]  # internal
