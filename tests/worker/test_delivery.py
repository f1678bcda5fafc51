"""At-least-once delivery made harmless: SIGKILLed children, bounded redeliveries."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from aiecs_core import WorkerLostError

from tests.support.events import wait_for_event, wait_terminal, wait_until


def kwargs(task_id: str, **inp):
    inp.setdefault("text", "one two three four five six seven eight")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def test_sigkilled_child_task_is_redelivered_and_completes_once(aiecs_redis, start_worker):
    from aiecs_worker import execute_task

    worker = start_worker(pool="prefork", concurrency=1)
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**kwargs(task_id, chunks=8, delay=0.25))
    client = aiecs_redis.client()
    wait_for_event(client, "alice", task_id, lambda e: e["type"] == "stream")
    children = worker.children()
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)

    value = res.get(timeout=60)
    assert value["result"]["chunks"] == 8
    assert res.state == "SUCCESS"
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "completed"
    running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
    assert len(running) == 2
    assert "redelivered after worker loss (delivery 2)" in running[1]["message"]
    terminals = [e for e in events if e["status"] in ("completed", "failed", "timed_out",
                                                      "cancelled")]
    assert len(terminals) == 1
    # and the worker still serves
    again = execute_task.delay(**kwargs(f"{task_id}b")).get(timeout=30)
    assert again["status"] == "completed"
    assert worker.alive()


def test_task_that_always_kills_its_worker_stops_after_the_bound(aiecs_redis, start_worker):
    from aiecs_worker import execute_task

    worker = start_worker(pool="prefork", concurrency=1, env={"AIECS_MAX_DELIVERIES": "2"})
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**kwargs(task_id, fail="crash"))
    client = aiecs_redis.client()
    terminal, events = wait_terminal(client, "alice", task_id, timeout=90)
    assert terminal["status"] == "failed"
    assert terminal["error"]["type"] == "WorkerLostError"
    assert "AIECS_MAX_DELIVERIES=2" in terminal["error"]["message"]
    running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
    assert len(running) == 2  # delivered twice, the third delivery is refused
    with pytest.raises(WorkerLostError):
        res.get(timeout=30)
    # the message gets acknowledged (Celery acks just after storing the result): nothing is
    # left to redeliver
    wait_until(lambda: sum(client.llen(k) for k in client.keys("fast_tasks*")) == 0
               and client.hlen("unacked") == 0, message="acknowledgement of the refused delivery")
    assert worker.alive()
