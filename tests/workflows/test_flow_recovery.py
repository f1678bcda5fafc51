"""A process that dies between a step's terminal record and the workflow's advance leaves
the workflow in ``aiecs:flows:due``; a real worker's sweeper advances it.

The dead process is played by this test: it records step 1's outcome with the same
script a worker uses (and then does nothing, as a SIGKILLed worker would). The worker
consumes no aiecs queue, so only its sweeper can move the workflow on.
"""

from __future__ import annotations

import base64
import json
import time

from aiecs_core import TaskEvent, TaskStatus
from aiecs_worker.producer.flow import get_workflow, submit_workflow
from aiecs_worker.settings import get_settings
from aiecs_worker.store.events import TaskKeys, finish_sync
from aiecs_worker.store.keys import PREFIX, flows_due_key
from aiecs_worker.store.records import state_redis

from tests.support.events import read_events, wait_until


def _record(task_id: str, step: int, status: TaskStatus, result: dict | None) -> None:
    """Step ``step``'s terminal record, as the worker that ran it writes it."""
    s = get_settings()
    event = TaskEvent(type="status", task_id=task_id, step=step, user_id="alice",
                      task_name="echo", status=status, result=result)
    outcome = {"task_id": task_id, "step": step, "result": result} if result else None
    error = '{"type": "InvalidRequestError", "message": "no", "retryable": false}'
    assert finish_sync(state_redis(), event, TaskKeys("alice", task_id).state(step),
                       [status.value, json.dumps(outcome) if outcome else "",
                        "" if result else error, "[]", time.time(), s.aiecs_events_ttl],
                       s.aiecs_socketio_channel, s.aiecs_events_maxlen, s.aiecs_events_ttl)


def _queued_kwargs(client) -> dict[int, dict]:
    out = {}
    raws = [r for q in client.keys("fast_tasks*") for r in client.lrange(q, 0, -1)]
    for raw in raws:  # kombu's priority queues: fast_tasks, fast_tasks\x06\x169, ...
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out[body[1]["step"]] = body[1]
    return out


def _steps(n_text: str) -> list[dict]:
    echo = {"mode": "test", "service": "echo", "task_name": "echo"}
    return [{**echo, "step": 1, "input_data": {"text": n_text}},
            {**echo, "step": 2, "depends_on": [1],
             "input_data": {"text": {"$ref": "steps.1.result.text"}}},
            {**echo, "step": 3, "depends_on": [2], "input_data": {"text": "last"}}]


def test_sweeper_advances_workflows_a_dead_process_left(aiecs_redis, start_worker):
    """Step 1 of r1 COMPLETED: step 2 is released with its reference resolved. Step 1
    of r2 FAILED: steps 2 and 3 end CANCELLED, naming their dependency."""
    start_worker(queues="nothing_here", env={"AIECS_LEASE_SECONDS": "6"})
    client = aiecs_redis.client()
    submit_workflow("alice", _steps("ignored"), task_id="r1")
    assert set(_queued_kwargs(client)) == {1}  # only the root was released
    submit_workflow("alice", _steps("x"), task_id="r2")
    _record("r1", 1, TaskStatus.COMPLETED, {"text": "from step 1"})
    _record("r2", 1, TaskStatus.FAILED, None)
    assert client.zscore(flows_due_key(PREFIX), "aiecs:flow:alice:r1") is not None

    queued = wait_until(lambda: 2 in (q := _queued_kwargs(client)) and q, timeout=30,
                        message="the sweeper to release step 2")
    assert queued[2]["input_data"] == {"text": "from step 1"}  # resolved from the result
    assert [s["status"] for s in get_workflow("alice", "r1")["steps"]] == [
        "completed", "pending", "pending"]

    view = wait_until(lambda: (w := get_workflow("alice", "r2"))["status"] != "running" and w,
                      timeout=30, message="the sweeper to cancel steps 2 and 3")
    assert [s["status"] for s in view["steps"]] == ["failed", "cancelled", "cancelled"]
    assert view["steps"][2]["error"]["message"] == "dependency step 2 ended CANCELLED"
    events = read_events(client, "alice", "r2")
    for n in (2, 3):
        assert [e["status"] for e in events if e["step"] == n] == ["pending", "cancelled"]
    wait_until(lambda: client.zcard(flows_due_key(PREFIX)) == 0, timeout=10,
               message="the workflows to leave the due set")
