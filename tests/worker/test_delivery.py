"""At-least-once delivery made harmless: SIGKILLed children, bounded redeliveries."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from aiecs_core import WorkerLostError

from tests.support.events import wait_for_event, wait_terminal, wait_until
from tests.support.processes import in_process_pools


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


@in_process_pools
def test_message_lost_in_transit_is_queued_again_from_the_pending_record(aiecs_redis,
                                                                         start_worker):
    """kombu pops a message before it records it as unacknowledged: a worker killed in
    between loses it. Here the message is removed from the queue by hand (the same loss);
    the PENDING record brings the execution back after 2 x CELERY_VISIBILITY_TIMEOUT."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**kwargs(task_id))
    queues = [k for k in client.keys("fast_tasks*") if client.llen(k)]
    assert len(queues) == 1 and client.llen(queues[0]) == 1
    client.delete(queues[0])  # the message is gone; only the PENDING record is left
    assert client.hget(f"aiecs:t:alice:{task_id}:1:state", "status") == b"pending"

    worker = start_worker(env={"CELERY_VISIBILITY_TIMEOUT": "3", "AIECS_LEASE_SECONDS": "3"})
    assert res.get(timeout=60)["status"] == "completed"
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "completed"
    assert [e["status"] for e in events if e["type"] == "status"] == [
        "pending", "running", "completed"]
    assert "its message was lost in transit; queued again" in worker.log()
    assert client.zcard("aiecs:pending") == 0
