"""The first call of a provider in a worker process does not stall that process's event loop.

Importing an SDK takes about a second (openai) to several (google-genai); done on the event
loop, it froze every other execution of the process meanwhile (a concurrent stream's
events stopped for 0.9-2.5 s). The worker now warms the enabled providers in a thread as
it starts (``Service.warm``, aiecs_worker.runner.warm) and starts its first tasks once that is
done; a provider's first call builds its client in a thread if it comes first anyway
(tests/providers/test_warm.py).

Here a real worker streams a long echo task (an event every ~20 ms, for about 5 s) while
the first OpenAI (or Vertex) task of the process runs; the largest gap between consecutive
stream events, by the timestamps in the Redis event log, stays far below the stall: under
half the warm-up time the worker logged (and under 200 ms whenever that is shorter than
400 ms; about 25 ms is typical on an idle machine).
"""

from __future__ import annotations

import re
import uuid

import pytest
from aiecs_worker import execute_task

from tests.support.events import read_events, wait_for_event, wait_terminal, wait_until
from tests.support.fake_openai import FakeOpenAI, Text
from tests.support.fake_vertex import FakeVertex

USER = [{"role": "user", "content": "hello there"}]
MAX_GAP = 0.2


def submit(mode: str, service: str, task_name: str, input_data: dict) -> str:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(
        task_name=task_name, user_id="alice", task_id=task_id, step=1, mode=mode,
        service=service, input_data=input_data, context={},
    )
    return task_id


@pytest.fixture(params=["openai", "vertex"])
def provider(request, tmp_path):
    """(service name, worker environment, fake server) of the provider used first."""
    if request.param == "openai":
        with FakeOpenAI() as server:
            server.script(Text("first call of the process"))
            yield "openai", {"OPENAI_API_KEY": server.api_key,
                             "OPENAI_BASE_URL": server.base_url}, server
    else:
        pytest.importorskip("google.genai")
        with FakeVertex() as server:
            server.script(Text("first call of the process"))
            yield "vertex", {
                "VERTEX_PROJECT_ID": server.project,
                "VERTEX_LOCATION": server.location,
                "VERTEX_BASE_URL": server.base_url,
                "GOOGLE_APPLICATION_CREDENTIALS": server.write_credentials(tmp_path),
            }, server


def test_first_provider_call_does_not_stall_a_running_stream(aiecs_redis, start_worker,
                                                              provider):
    service, env, _server = provider
    client = aiecs_redis.client()
    worker = start_worker(env=env)
    # A stream of 250 events, one every 20 ms (about 5 s), started first ...
    echo = submit("test", "echo", "echo", {"text": "x" * 250, "chunks": 250, "delay": 0.02})
    wait_for_event(client, "alice", echo, lambda e: e["type"] == "stream")
    # ... then the first call of the process to the provider, while the stream runs.
    first = submit("llm", service, "chat", {"model": "m-x", "messages": USER, "stream": True})
    terminal, events = wait_terminal(client, "alice", first)
    assert terminal["status"] == "completed", terminal
    assert "".join(e["delta"] for e in events if e["type"] == "stream") == (
        "first call of the process")
    echo_terminal, _ = wait_terminal(client, "alice", echo)
    assert echo_terminal["status"] == "completed", echo_terminal
    stream = [e["timestamp"] for e in read_events(client, "alice", echo)
              if e["type"] == "stream"]
    assert len(stream) == 250
    # the provider's call ran while the echo was streaming (else this proves nothing)
    running = next(e["timestamp"] for e in events if e["status"] == "running")
    assert stream[0] < running < terminal["timestamp"] < stream[-1], (
        "the provider call did not overlap the stream")
    gaps = [b - a for a, b in zip(stream, stream[1:], strict=False)]
    worst = max(gaps)
    wait_until(lambda: f"llm/{service} " in worker.log(), message="the warm-up log line")
    # Done on the loop, the import would stall it for the whole warm-up, which this very
    # process logged ("providers warmed: llm/openai 1.53s"); the machine's load slows both
    # alike, so the bound is half of it (never below MAX_GAP).
    warm = float(re.search(rf"llm/{service} ([0-9.]+)s", worker.log()).group(1))
    bound = max(MAX_GAP, warm / 2)
    print(f"{service}: largest gap {worst * 1000:.0f} ms, warm-up {warm:.2f} s")
    assert worst < bound, (
        f"the stream stalled {worst * 1000:.0f} ms while {service} was first used "
        f"(gaps over 100 ms: {[round(g * 1000) for g in gaps if g > 0.1]})")
