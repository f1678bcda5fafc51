"""Publishing never fails a task: the events Redis goes away mid-task, the task completes."""

from __future__ import annotations

import uuid

from tests.support.events import wait_for_event, wait_terminal, wait_until
from tests.support.metrics import metrics_url, scrape, total
from tests.support.processes import in_process_pools


def kwargs(task_id: str, **inp):
    inp.setdefault("text", "one two three four five six seven eight nine ten")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


@in_process_pools
def test_events_redis_down_mid_task_outcome_recorded_when_it_is_back(
        aiecs_redis, redis_server, start_worker):
    """Progress events published while the state Redis is away are dropped (logged once);
    the terminal transition is not: the task waits for Redis, then records its outcome and
    its one terminal event in the restarted Redis. Its metrics say so: the state Redis
    down (the broker up), events dropped, the terminal transition retried."""
    from aiecs_worker import execute_task

    # broker and result backend on the session Redis; events, state and cancel on a
    # private one that this test kills
    worker = start_worker(env={"REDIS_URL": redis_server.url, "AIECS_METRICS_PORT": "0"})
    url = metrics_url(worker.log)
    events_client = redis_server.client()
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**kwargs(task_id, chunks=10, delay=0.15))
    wait_for_event(events_client, "alice", task_id, lambda e: e["type"] == "stream")
    redis_server.stop()

    wait_until(lambda: "event publishing failed" in worker.log(), timeout=30,
               message="the outage log line")
    assert not res.ready()  # its outcome waits for Redis instead of being dropped
    s = scrape(url)
    assert total(s, "aiecs_redis_up", role="state") == 0
    assert total(s, "aiecs_redis_up", role="broker") == 1
    wait_until(lambda: total(scrape(url), "aiecs_events_retried_total") > 0, timeout=30,
               message="the terminal transition retried")
    redis_server.start()
    value = res.get(timeout=60)
    assert value["status"] == "completed"
    assert value["result"]["chunks"] == 10
    assert res.state == "SUCCESS"
    events_client = redis_server.client()
    terminal, events = wait_terminal(events_client, "alice", task_id)
    assert terminal["status"] == "completed"
    assert [e for e in events if e["type"] == "status"] == [terminal]  # exactly one
    assert events_client.hget(f"aiecs:t:alice:{task_id}:1:state", "status") == b"completed"
    log = worker.log()
    assert log.count("event publishing failed") == 1, log[-3000:]
    assert "Traceback" not in log
    s = scrape(url)
    assert total(s, "aiecs_events_dropped_total") > 0
    assert total(s, "aiecs_redis_up", role="state") == 1

    # the next task's events reach the log again, recovery is logged
    again = f"{task_id}b"
    assert execute_task.delay(**kwargs(again)).get(timeout=30)["status"] == "completed"
    terminal, events = wait_terminal(events_client, "alice", again)
    assert terminal["status"] == "completed"
    assert "".join(e["delta"] or "" for e in events) == kwargs(again)["input_data"]["text"]
    wait_until(lambda: "event publishing recovered" in worker.log(), message="recovery log line")
    assert worker.log().count("event publishing failed") == 1
    assert worker.alive()
