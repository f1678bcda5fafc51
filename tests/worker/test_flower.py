"""Flower against a real worker: every outcome shows with its task name and the Celery
state that matches the aiecs state (aiecs_worker.runner.taskevents, docs/operations.md)."""

from __future__ import annotations

import uuid

import pytest

from tests.support.events import wait_for_event, wait_terminal, wait_until
from tests.support.processes import FlowerProcess

FAST = "aiecs.tasks.worker.execute_task"
#: an echo of 100 chunks 0.2 s apart: 20 s, past the worker's 3 s limit
LONG = {"text": "word " * 100, "chunks": 100, "delay": 0.2}


def uid(prefix: str = "fl") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def echo(task_id: str, **inp) -> dict:
    inp.setdefault("text", "one two")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


@pytest.fixture
def flower(aiecs_redis):
    proc = FlowerProcess(aiecs_redis.url).start()
    yield proc
    print(proc.log()[-4000:])  # shown only when the test failed
    proc.close()


def flower_task(flower: FlowerProcess, celery_id: str, state: str,
                timeout: float = 30) -> dict:
    """Flower's view of a task once it reached ``state`` (polled, with a deadline)."""
    def seen():
        tasks = flower.get("/api/tasks")
        task = tasks.get(celery_id)
        return task if task and task.get("state") == state else None

    try:
        return wait_until(seen, timeout=timeout, interval=0.2,
                          message=f"flower to show {celery_id} as {state}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; it shows {flower.get('/api/tasks').get(celery_id)}") from None


@pytest.mark.parametrize("pool", ["prefork"])
def test_flower_shows_every_outcome_with_its_name_and_state(aiecs_redis, start_worker, flower,
                                                             pool):
    from aiecs_worker import control, execute_task

    # task events are off by default: Flower switches them on (enable_events; the worker
    # needs its heartbeat, on by default, for that)
    start_worker(pool=pool, concurrency=1, queues="fast_tasks", without=("gossip", "mingle"),
                 env={"CELERY_TASK_SOFT_TIME_LIMIT": "3", "CELERY_TASK_TIME_LIMIT": "20"})
    client = aiecs_redis.client()

    def completed_once_events_are_on():
        res = execute_task.delay(**echo(uid("warm")))
        res.get(timeout=30)
        try:
            seen = flower_task(flower, res.id, "SUCCESS", timeout=2)
        except AssertionError:
            return None
        # a task received before Flower's enable_events reached the worker is shown
        # without the name its task-received event carries: take the next one
        return seen if seen.get("name") else None

    warm = wait_until(completed_once_events_are_on, timeout=60, interval=0)
    assert warm["name"] == FAST

    # completed, failed, timed out
    done = execute_task.delay(**echo(uid()))
    failed = execute_task.delay(**echo(uid(), fail="invalid"))
    slow_id = uid()
    slow = execute_task.delay(**echo(slow_id, **LONG))  # > the 3 s limit
    done.get(timeout=30)
    wait_terminal(client, "alice", slow_id)

    # cancelled while running, and cancelled while queued behind it (one slot)
    running_id, queued_id = uid(), uid()
    running = execute_task.delay(**echo(running_id, **LONG))
    wait_for_event(client, "alice", running_id, lambda e: e["type"] == "stream")
    queued = execute_task.delay(**echo(queued_id))
    assert control.cancel("alice", queued_id, 1)
    assert control.cancel("alice", running_id, 1)
    assert wait_terminal(client, "alice", running_id)[0]["status"] == "cancelled"
    assert wait_terminal(client, "alice", queued_id)[0]["status"] == "cancelled"

    expected = {done.id: "SUCCESS", failed.id: "FAILURE", slow.id: "FAILURE",
                running.id: "REVOKED", queued.id: "REVOKED"}
    for celery_id, state in expected.items():
        seen = flower_task(flower, celery_id, state)
        assert seen["name"] == FAST, (celery_id, seen)
        info = flower.get(f"/api/task/info/{celery_id}")
        assert (info["name"], info["state"]) == (FAST, state)
    assert "InvalidRequestError" in flower.get(f"/api/task/info/{failed.id}")["exception"]
    assert "TaskTimeoutError" in flower.get(f"/api/task/info/{slow.id}")["exception"]
    # the running one had started; the queued one never did
    assert flower.get(f"/api/task/info/{running.id}")["started"]
    assert not flower.get(f"/api/task/info/{queued.id}")["started"]
    # the API wants Flower's credentials
    assert flower.status("/api/tasks", auth=False) == 401


def test_aiecs_task_events_turns_celery_task_events_on(aiecs_redis, start_worker):
    """AIECS_TASK_EVENTS=1: the worker sends task events from the start (no monitor asked),
    what `celery events` shows."""
    import threading

    from aiecs_worker import execute_task
    from aiecs_worker.app import app

    seen: list[dict] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": seen.append})
    thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
    thread.start()
    try:
        worker = start_worker(env={"AIECS_TASK_EVENTS": "1"}, without=("gossip", "mingle"))
        # its worker-online or heartbeat event: the receiver listens (Redis fan-out is
        # at-most-once)
        wait_until(lambda: any(e["type"].startswith("worker-")
                               and e["hostname"].startswith(worker.name) for e in seen),
                   timeout=30, message="an event of the worker")
        res = execute_task.delay(**echo(uid()))
        res.get(timeout=30)
        wanted = {"task-received", "task-started", "task-succeeded"}
        wait_until(lambda: wanted <= {e["type"] for e in seen if e.get("uuid") == res.id},
                   timeout=30, message="the task's events")
        received = next(e for e in seen if e["type"] == "task-received" and
                        e.get("uuid") == res.id)
        assert received["name"] == FAST
    finally:
        receiver.should_stop = True
        thread.join(10)
        conn.release()
