"""Every lifecycle path through a real worker process, with its events and Celery state."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
from aiecs_core import (
    InvalidRequestError,
    RateLimitError,
    TaskRequest,
    TaskTimeoutError,
)
from celery.exceptions import TaskRevokedError

from tests.support.events import read_events, step_events, wait_for_event, wait_terminal
from tests.support.examples import with_site

POOLS = ["threads", "prefork", "asyncio"]


def uid(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def echo_kwargs(task_id: str, user_id: str = "alice", step: int = 1, op: str = "echo", **inp):
    inp.setdefault("text", "one two three four")
    return dict(task_name=op, user_id=user_id, task_id=task_id, step=step, mode="test",
                service="echo", input_data=inp, context={})


def test_spec_example_calls_unchanged(aiecs_redis, start_worker, spec_examples_site):
    """The specification's two example calls, run as a user would, in a separate process,
    against a worker with the example plugin that serves them (examples/aiecs-example-spec)."""
    start_worker(env=with_site(spec_examples_site))
    script = textwrap.dedent(
        """
        from aiecs_worker import execute_task, execute_heavy_task

        task_result = execute_task.delay(
            task_name="analyze_text",
            user_id="user_123",
            task_id="task_456",
            step=1,
            mode="chat",
            service="text_analyzer",
            input_data={"text": "Analyze the sentiment tendency of this text"},
            context={"language": "en", "model": "gpt-3.5-turbo"}
        )
        result = task_result.get(timeout=30)
        print(f"Analysis result: {result['result']}")

        heavy_task = execute_heavy_task.delay(
            task_name="generate_document",
            user_id="user_123",
            task_id="task_789",
            step=1,
            mode="document",
            service="doc_generator",
            input_data={
                "topic": "AI development trends",
                "length": "5000 words",
                "style": "academic paper"
            },
            context={
                "template": "academic",
                "references": True,
                "citations": True
            }
        )
        print("Document:", heavy_task.get(timeout=30)["result"]["sections"])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=90, check=True)
    assert "Analysis result: {'sentiment': 'neutral', 'words': 7, 'language': 'en'}" in out.stdout
    assert "Document: 4" in out.stdout
    client = aiecs_redis.client()
    terminal, events = wait_terminal(client, "user_123", "task_789")
    assert terminal["status"] == "completed"
    assert [(e["type"], e["status"]) for e in events[:2]] == [
        ("status", "pending"), ("status", "running")]
    # its 4 sections, in order (deltas that waited together may leave as one event)
    assert 1 <= sum(e["type"] == "stream" for e in events) <= 4


@pytest.mark.parametrize("pool", POOLS)
def test_completed_events_in_order(aiecs_redis, start_worker, pool):
    from aiecs_worker import execute_task

    start_worker(pool=pool, concurrency=2)
    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, text="a b c d", chunks=4))
    value = res.get(timeout=30)
    assert res.state == "SUCCESS"
    assert value["result"] == {"text": "a b c d", "chunks": 4}
    assert value["status"] == "completed" and value["usage"][0]["provider"] == "echo"
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [(e["type"], e["status"]) for e in events]
    assert kinds[:2] == [("status", "pending"), ("status", "running")]
    assert kinds[-1] == ("status", "completed")
    assert "".join(e["delta"] for e in events if e["type"] == "stream") == "a b c d"
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert terminal["result"] == {"text": "a b c d", "chunks": 4}
    assert terminal["usage"][0]["input_tokens"] == 4
    terminal_states = ("completed", "failed", "timed_out", "cancelled")
    assert sum(e["status"] in terminal_states for e in events) == 1


def test_failed_is_failure_in_celery(aiecs_redis, worker):
    from aiecs_worker import execute_task

    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, fail="invalid"))
    with pytest.raises(InvalidRequestError) as info:
        res.get(timeout=30)
    assert info.value.status_code == 400
    assert res.state == "FAILURE"
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "InvalidRequestError"
    assert terminal["error"]["retryable"] is False
    assert not any(e["message"] and "retrying" in e["message"] for e in events)


def test_retried_then_completed(aiecs_redis, worker):
    from aiecs_worker import execute_task

    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, fail="server", fail_times=2))
    assert res.get(timeout=30)["attempts"] == 3
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    retries = [e for e in events if e["type"] == "progress" and "retrying" in (e["message"] or "")]
    assert len(retries) == 2
    assert "ProviderServerError" in retries[0]["message"]
    assert terminal["status"] == "completed"


def test_retry_after_is_honoured(aiecs_redis, worker):
    from aiecs_worker import execute_task

    task_id = uid()
    res = execute_task.delay(
        **echo_kwargs(task_id, fail="rate_limit", fail_times=1, retry_after=1.5)
    )
    assert res.get(timeout=30)["attempts"] == 2
    _, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    retry = next(e for e in events if "retrying" in (e["message"] or ""))
    assert "retrying in 1.50s after RateLimitError" in retry["message"]
    first_output = next(e for e in events if e["type"] == "stream")
    assert first_output["timestamp"] - retry["timestamp"] >= 1.5


def test_retryable_error_without_time_left_fails(aiecs_redis, start_worker):
    from aiecs_worker import execute_task

    start_worker(env={"CELERY_TASK_SOFT_TIME_LIMIT": "2", "CELERY_TASK_TIME_LIMIT": "5",
                      "CELERY_VISIBILITY_TIMEOUT": "60"})
    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, fail="rate_limit", retry_after=30))
    with pytest.raises(RateLimitError) as info:
        res.get(timeout=30)
    assert info.value.retry_after == 30
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["error"]["type"] == "RateLimitError"
    assert not any("retrying" in (e["message"] or "") for e in events)


def test_no_retry_after_output_was_streamed(aiecs_redis, worker):
    from aiecs_worker import execute_task

    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, text="a b c d", fail="server",
                                           fail_after_chunks=2))
    with pytest.raises(Exception) as info:
        res.get(timeout=30)
    assert type(info.value).__name__ == "ProviderServerError"
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "failed"
    assert terminal["partial_output"] == "a b "
    assert terminal["error"]["details"]["partial_output"] == "a b "
    assert not any("retrying" in (e["message"] or "") for e in events)


@pytest.mark.parametrize("pool", POOLS)
def test_timed_out(aiecs_redis, start_worker, pool):
    from aiecs_worker import execute_task

    start_worker(pool=pool, concurrency=1,
                 env={"CELERY_TASK_SOFT_TIME_LIMIT": "2", "CELERY_TASK_TIME_LIMIT": "6",
                      "CELERY_VISIBILITY_TIMEOUT": "60"})
    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, chunks=50, delay=0.5))
    with pytest.raises(TaskTimeoutError):
        res.get(timeout=30)
    assert res.state == "FAILURE"
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "timed_out"
    assert "CELERY_TASK_SOFT_TIME_LIMIT" in terminal["error"]["message"]
    streamed = [e for e in events if e["type"] == "stream"]
    assert 0 < len(streamed) < 50
    assert terminal["partial_output"] == "".join(e["delta"] for e in streamed)
    # nothing after the terminal event: the operation really was cancelled
    assert events[-1]["seq"] == terminal["seq"]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("how", ["task_id", "celery_id"])
def test_cancel_running(aiecs_redis, start_worker, pool, how):
    from aiecs_worker import control, execute_task

    start_worker(pool=pool, concurrency=1)
    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, chunks=100, delay=0.2))
    client = aiecs_redis.client()
    wait_for_event(client, "alice", task_id, lambda e: e["type"] == "stream")
    if how == "task_id":
        assert control.cancel("alice", task_id, 1)
    else:
        control.cancel_celery(res.id)
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "cancelled"
    with pytest.raises(TaskRevokedError):
        res.get(timeout=30)
    assert res.state == "REVOKED"
    assert sum(e["type"] == "stream" for e in events) < 100


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_plain_celery_revoke_cancels_a_running_task_under_threads(aiecs_redis, start_worker, pool):
    from aiecs_worker import execute_task

    start_worker(pool=pool, concurrency=1)
    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id, chunks=100, delay=0.2))
    client = aiecs_redis.client()
    wait_for_event(client, "alice", task_id, lambda e: e["type"] == "stream")
    res.revoke()
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "cancelled"
    assert sum(e["type"] == "stream" for e in events) < 100
    with pytest.raises(TaskRevokedError):
        res.get(timeout=30)


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_plain_celery_revoke_of_a_queued_task_records_cancelled(aiecs_redis, start_worker, pool):
    from aiecs_worker import control, execute_task

    start_worker(pool=pool, concurrency=1)
    busy, queued = uid(), uid()
    execute_task.delay(**echo_kwargs(busy, chunks=100, delay=0.2))
    client = aiecs_redis.client()
    wait_for_event(client, "alice", busy, lambda e: e["type"] == "stream")
    res = execute_task.delay(**echo_kwargs(queued))  # waits behind the busy one
    res.revoke()
    control.cancel("alice", busy, 1)  # free the only slot
    terminal, events = wait_terminal(client, "alice", queued)
    assert terminal["status"] == "cancelled"
    assert [e["status"] for e in events] == ["pending", "cancelled"]


@pytest.mark.parametrize("how", ["task_id", "celery_id"])
def test_cancel_queued_task_never_runs(aiecs_redis, start_worker, how):
    from aiecs_worker import control, execute_task

    task_id = uid()
    res = execute_task.delay(**echo_kwargs(task_id))  # no worker yet: the revoke reaches none
    if how == "task_id":
        assert control.cancel("alice", task_id, 1)
    else:
        assert control.cancel_celery(res.id)
    start_worker(queues="fast_tasks")
    terminal, events = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "cancelled"
    assert [e["status"] for e in events] == ["pending", "cancelled"]
    with pytest.raises(TaskRevokedError):
        res.get(timeout=30)


def test_same_step_is_not_executed_twice_but_next_step_runs(aiecs_redis, worker):
    from aiecs_worker import execute_task

    task_id = uid()
    first = execute_task.delay(**echo_kwargs(task_id, text="x y")).get(timeout=30)
    again = execute_task.delay(**echo_kwargs(task_id, text="x y")).get(timeout=30)
    assert again == first
    step2 = execute_task.delay(**echo_kwargs(task_id, step=2, text="z")).get(timeout=30)
    assert step2["step"] == 2 and step2["result"]["text"] == "z"
    client = aiecs_redis.client()
    _, events = wait_terminal(client, "alice", task_id, step=2)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["status"] == "completed" for e in step_events(events, 1)) == 1
    assert sum(e["type"] == "status" and e["status"] == "running"
               for e in step_events(events, 1)) == 1


def test_users_task_ids_do_not_collide(aiecs_redis, worker):
    from aiecs_worker import execute_task

    a = execute_task.delay(**echo_kwargs("shared", user_id="alice", text="for alice"))
    b = execute_task.delay(**echo_kwargs("shared", user_id="bob", text="for bob"))
    assert a.id != b.id
    assert a.get(timeout=30)["result"]["text"] == "for alice"
    assert b.get(timeout=30)["result"]["text"] == "for bob"
    client = aiecs_redis.client()
    assert {e["user_id"] for e in read_events(client, "bob", "shared")} == {"bob"}


def test_heavy_only_worker_leaves_fast_tasks_alone(aiecs_redis, start_worker):
    from aiecs_worker import control, execute_heavy_task, execute_task

    start_worker(queues="heavy_tasks")
    fast_id, heavy_id = uid(), uid()
    fast = execute_task.delay(**echo_kwargs(fast_id))
    heavy = execute_heavy_task.delay(**echo_kwargs(heavy_id, op="echo_heavy"))
    assert heavy.get(timeout=30)["result"]["chunks"] == 4
    assert fast.state == "PENDING"
    # recorded as PENDING at submission, never started
    assert control.get_state("alice", fast_id)["steps"][1]["status"] == "pending"
    client = aiecs_redis.client()  # kombu keeps one list per priority: fast_tasks[\x06\x16N]
    assert sum(client.llen(k) for k in client.keys("fast_tasks*")) == 1


def test_submit_routes_by_declaration(aiecs_redis, start_worker):
    from aiecs_worker import control

    start_worker(queues="heavy_tasks")
    task_id = uid()
    req = TaskRequest(**echo_kwargs(task_id, op="echo_heavy"))
    res = control.submit(req)
    assert res.get(timeout=30)["result"]["chunks"] == 4
    state = control.get_state("alice", task_id)
    assert state["steps"][1]["status"] == "completed"
    events = read_events(aiecs_redis.client(), "alice", task_id)
    assert events[0]["status"] == "pending"
