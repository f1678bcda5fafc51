"""Publishing never fails a task: the events Redis goes away mid-task, the task completes."""

from __future__ import annotations

import uuid

from tests.support.events import read_events, wait_for_event, wait_terminal, wait_until


def kwargs(task_id: str, **inp):
    inp.setdefault("text", "one two three four five six seven eight nine ten")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def test_events_redis_down_mid_task_task_completes_outage_logged_once(
        aiecs_redis, redis_server, start_worker):
    from aiecs_worker import execute_task

    # broker and result backend on the session Redis; events, state and cancel on a
    # private one that this test kills
    worker = start_worker(env={"REDIS_URL": redis_server.url})
    events_client = redis_server.client()
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**kwargs(task_id, chunks=10, delay=0.15))
    wait_for_event(events_client, "alice", task_id, lambda e: e["type"] == "stream")
    redis_server.stop()

    value = res.get(timeout=60)
    assert value["status"] == "completed"
    assert value["result"]["chunks"] == 10
    assert res.state == "SUCCESS"
    log = worker.log()
    assert log.count("event publishing failed") == 1, log[-3000:]
    assert "Traceback" not in log

    # Redis comes back: the next task's events reach the log again, recovery is logged
    redis_server.start()
    events_client = redis_server.client()
    again = f"{task_id}b"
    assert execute_task.delay(**kwargs(again)).get(timeout=30)["status"] == "completed"
    terminal, events = wait_terminal(events_client, "alice", again)
    assert terminal["status"] == "completed"
    assert "".join(e["delta"] or "" for e in events) == kwargs(again)["input_data"]["text"]
    wait_until(lambda: "event publishing recovered" in worker.log(), message="recovery log line")
    assert worker.log().count("event publishing failed") == 1
    assert read_events(events_client, "alice", task_id) == []  # a restarted Redis kept nothing
    assert worker.alive()
