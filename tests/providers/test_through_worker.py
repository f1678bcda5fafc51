"""The provider plugins through real ``celery -A aiecs_worker worker`` processes, against
local servers speaking each provider's wire protocol: the runner's retries (Retry-After
spacing, 5xx), deadlines (TIMED_OUT with a hanging server), streams cut mid-way, missing
keys, and cluster-wide rate limits shared by two workers.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from aiecs_worker import execute_task

from tests.support.events import dump_redis, read_events, wait_terminal
from tests.support.fake_openai import Cut, Error, FakeOpenAI, Hang, Text
from tests.support.fake_vertex import FakeVertex

USER = [{"role": "user", "content": "hello there"}]


def uid(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def submit(service: str, task_name: str, input_data: dict, *, user: str = "alice"):
    task_id = uid()
    result = execute_task.delay(
        task_name=task_name, user_id=user, task_id=task_id, step=1, mode="llm",
        service=service, input_data=input_data, context={},
    )
    return task_id, result


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def openai_env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url, **extra}


def test_streamed_chat_completes_with_events_and_usage(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake))
    fake.script(Text("streamed through the worker"))
    task_id, result = submit("openai", "chat", {"model": "gpt-x", "messages": USER,
                                                "stream": True})
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    deltas = [e["delta"] for e in events if e["type"] == "stream"]
    # the server's 4 chunks; those that reached the publisher together leave as one event
    assert "".join(deltas) == "streamed through the worker" and 1 <= len(deltas) <= 4
    assert terminal["result"]["text"] == "streamed through the worker"
    assert terminal["usage"] == [{"provider": "openai", "model": "gpt-x", "input_tokens": 2,
                                  "output_tokens": 4, "cached_tokens": 0,
                                  "reasoning_tokens": 0, "cost": None, "estimated": False}]
    assert result.get(timeout=10)["result"]["finish_reason"] == "stop"


def test_429_retry_after_is_honoured_by_the_worker(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake))
    fake.script(Error(429, "slow down", headers={"retry-after": "1"}),
                Error(429, "slow down", headers={"retry-after-ms": "1200"}))
    task_id, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    arrivals = [r.at for r in fake.requests]
    assert len(arrivals) == 3
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps[0] >= 0.95 and gaps[1] >= 1.15, gaps  # never earlier than Retry-After
    retries = [e["message"] for e in events if e["type"] == "progress"
               and "retrying" in (e["message"] or "")]
    assert len(retries) == 2 and all("RateLimitError" in m for m in retries)


def test_500_then_success(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake))
    fake.script(Error(500, "boom", type="server_error"))
    task_id, result = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    assert len(fake.requests) == 2
    assert result.get(timeout=10)["attempts"] == 2


def test_401_fails_at_once_without_leaking_the_key(aiecs_redis, start_worker, fake):
    secret = "sk-live-DO-NOT-LEAK-0123456789"
    worker = start_worker(env={**openai_env(fake), "OPENAI_API_KEY": secret})
    task_id, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    client = aiecs_redis.client()
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "AuthenticationError"
    assert terminal["error"]["details"]["status_code"] == 401
    assert len(fake.requests) == 1
    everything = json.dumps(events) + json.dumps(
        {k.decode(): v.decode(errors="replace")
         for k, v in client.hgetall(f"aiecs:t:alice:{task_id}:1:state").items()})
    assert "DO-NOT-LEAK" not in everything
    # nor anywhere else: results, Celery metadata, the worker's log
    dump = dump_redis(client)
    i = dump.find("DO-NOT-LEAK")
    assert i < 0, dump[max(0, i - 1500):i + 200]
    assert "DO-NOT-LEAK" not in worker.log()
    assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"  # it was used


def test_missing_key_fails_naming_the_variable(aiecs_redis, start_worker):
    start_worker()
    task_id, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "ConfigurationError"
    assert terminal["error"]["details"]["env_var"] == "OPENAI_API_KEY"
    assert "OPENAI_API_KEY" in terminal["error"]["message"]


def test_hanging_server_ends_timed_out_within_the_deadline(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake, CELERY_TASK_SOFT_TIME_LIMIT="2",
                                CELERY_TASK_TIME_LIMIT="30"))
    fake.script(Hang(after_chunks=2))
    task_id, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER,
                                           "stream": True})
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id, timeout=20)
    assert terminal["status"] == "timed_out", terminal
    running = next(e for e in events if e["status"] == "running")
    assert terminal["timestamp"] - running["timestamp"] < 2 + 3  # deadline + slack
    assert "".join(e["delta"] for e in events if e["type"] == "stream") == "this stream"
    assert len(terminal["usage"]) == 1  # usage so far is recorded
    deadline = time.monotonic() + 10
    while fake.hangups < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.hangups == 1, "the upstream stream was not closed"
    assert len(fake.requests) == 1


def test_stream_cut_midway_fails_with_partial_output(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake))
    fake.script(Cut(after_chunks=2, text="partial answer that never ends"))
    task_id, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER,
                                           "stream": True})
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "StreamInterruptedError"
    assert terminal["partial_output"] == "partial answer"
    assert terminal["error"]["details"]["partial_output"] == "partial answer"
    assert "".join(e["delta"] for e in events if e["type"] == "stream") == "partial answer"
    assert len(fake.requests) == 1, "never retried after output was streamed"


def test_xai_chat_through_the_worker(aiecs_redis, start_worker, fake):
    start_worker(env={"XAI_API_KEY": fake.api_key, "XAI_BASE_URL": fake.base_url})
    task_id, _ = submit("xai", "chat", {"model": "grok-x", "messages": USER,
                                        "max_output_tokens": 20})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    assert terminal["result"]["text"] == "echo: hello there"
    assert fake.requests[0].body["max_tokens"] == 20


def test_embed_through_the_worker(aiecs_redis, start_worker, fake):
    start_worker(env=openai_env(fake))
    texts = [f"text {i}" for i in range(5)]
    task_id, _ = submit("openai", "embed", {"model": "e", "texts": texts})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    assert len(terminal["result"]["vectors"]) == 5


# --- Vertex -------------------------------------------------------------------------------------


@pytest.fixture
def vertex(tmp_path):
    with FakeVertex() as server:
        server.env = {
            "VERTEX_PROJECT_ID": server.project,
            "VERTEX_LOCATION": server.location,
            "VERTEX_BASE_URL": server.base_url,
            "GOOGLE_APPLICATION_CREDENTIALS": server.write_credentials(tmp_path),
        }
        yield server


def test_vertex_streamed_chat_through_the_worker(aiecs_redis, start_worker, vertex):
    start_worker(env=vertex.env)
    vertex.script(Text("gemini says hi"))
    task_id, _ = submit("vertex", "chat", {"model": "gemini-x", "messages": USER,
                                           "stream": True})
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    assert "".join(e["delta"] for e in events if e["type"] == "stream") == "gemini says hi"
    assert terminal["usage"][0]["provider"] == "vertex"


def test_vertex_hanging_server_ends_timed_out(aiecs_redis, start_worker, vertex):
    start_worker(env={**vertex.env, "CELERY_TASK_SOFT_TIME_LIMIT": "2",
                      "CELERY_TASK_TIME_LIMIT": "30"})
    vertex.script(Hang())
    task_id, _ = submit("vertex", "chat", {"model": "gemini-x", "messages": USER})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id, timeout=20)
    assert terminal["status"] == "timed_out", terminal
    assert len(vertex.api_requests()) == 1


def test_vertex_429_then_success(aiecs_redis, start_worker, vertex):
    from tests.support.fake_vertex import GoogleError

    start_worker(env=vertex.env)
    vertex.script(GoogleError(429, "quota", retry_delay="1s"))
    task_id, _ = submit("vertex", "chat", {"model": "gemini-x", "messages": USER})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "completed", terminal
    first, second = (r.at for r in vertex.api_requests())
    assert second - first >= 0.95


# --- cluster-wide rate limits -----------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_sharing_a_limit_never_exceed_it(aiecs_redis, start_worker, fake):
    rpm, window = 3, 2.0
    limits = json.dumps({"openai/gpt-limited": {"rpm": rpm, "window": window}})
    workers = [
        start_worker(concurrency=4, queues=f"fast_tasks,heavy_tasks,{name}",
                     env=openai_env(fake, AIECS_RATE_LIMITS=limits))
        for name in ("only-w1", "only-w2")
    ]
    client = aiecs_redis.client()
    # Warm each worker up (SDK import, client creation) with an unlimited model, so the
    # server sees each limited request as soon as it is admitted.
    for queue in ("only-w1", "only-w2"):
        task_id = uid("warm")
        execute_task.apply_async(
            kwargs=dict(task_name="chat", user_id="alice", task_id=task_id, step=1,
                        mode="llm", service="openai", context={},
                        input_data={"model": "warm-up", "messages": USER}),
            queue=queue,
        )
        assert wait_terminal(client, "alice", task_id)[0]["status"] == "completed"
    fake.requests.clear()
    tasks = [submit("openai", "chat", {"model": "gpt-limited", "messages": USER})[0]
             for _ in range(12)]
    for task_id in tasks:
        terminal, _ = wait_terminal(client, "alice", task_id, timeout=60)
        assert terminal["status"] == "completed", terminal
    arrivals = sorted(r.at for r in fake.requests)
    assert len(arrivals) == 12
    # Admission is decided on Redis's clock, arrival is measured here: allow 0.1 s at the
    # window's edge for the time between the two.
    for i, start in enumerate(arrivals):
        in_window = [t for t in arrivals[i:] if t < start + window - 0.1]
        assert len(in_window) <= rpm, (i, [round(t - start, 3) for t in in_window])
    received = [w.log().count("] received") for w in workers]
    assert all(n >= 2 for n in received), received  # warm-up + limited tasks, on both
    waiting = [e for t in tasks for e in read_events(client, "alice", t)
               if e["type"] == "progress" and "waiting for rate-limit capacity"
               in (e["message"] or "")]
    assert waiting, "waiting tasks report it in their progress events"


def test_a_429_pauses_the_key_for_other_tasks(aiecs_redis, start_worker, fake):
    limits = json.dumps({"openai/*": {}})
    start_worker(env=openai_env(fake, AIECS_RATE_LIMITS=limits))
    fake.script(Error(429, "slow down", headers={"retry-after": "2"}))
    first, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    fake.wait_for_requests(1)
    paused_at = fake.requests[0].at
    second, _ = submit("openai", "chat", {"model": "gpt-x", "messages": USER})
    client = aiecs_redis.client()
    for task_id in (first, second):
        terminal, _ = wait_terminal(client, "alice", task_id)
        assert terminal["status"] == "completed", terminal
    later = [r.at for r in fake.requests[1:]]
    assert len(later) == 2 and min(later) - paused_at >= 1.9, later
    events = read_events(client, "alice", second)
    assert any("waiting for rate-limit capacity" in (e["message"] or "") for e in events)
