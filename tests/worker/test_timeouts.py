"""TIMED_OUT is stored the same way whichever limit fires first, under every pool.

Under prefork, Celery's own soft limit (SIGUSR1 in the child, SoftTimeLimitExceeded) and
the runner's deadline are the same number of seconds; Celery's timer starts a little
earlier, so it usually wins the race. Either way the result backend must hold
TaskTimeoutError (never SoftTimeLimitExceeded) and the log one TIMED_OUT event.
"""

from __future__ import annotations

import uuid

import pytest
from aiecs_core import TaskTimeoutError

from tests.support.events import wait_terminal


@pytest.mark.parametrize("pool", ["threads", "prefork", "asyncio"])
def test_message_soft_limit_stores_task_timeout_error(aiecs_redis, start_worker, pool):
    from aiecs_worker import execute_task

    start_worker(pool=pool, concurrency=2)
    client = aiecs_redis.client()
    results = []
    for _ in range(4):
        task_id = f"t{uuid.uuid4().hex[:10]}"
        res = execute_task.apply_async(
            kwargs=dict(task_name="echo", user_id="alice", task_id=task_id, step=1,
                        mode="test", service="echo", context={},
                        input_data={"text": "a b c d e f g h", "chunks": 8, "delay": 1.0}),
            soft_time_limit=1, time_limit=8,
        )
        results.append((task_id, res))
    for task_id, res in results:
        with pytest.raises(TaskTimeoutError):
            res.get(timeout=30)
        # what Celery's result backend answers (read from the terminal record)
        meta = res.backend.get_task_meta(res.id)
        assert meta["status"] == "FAILURE"
        assert type(meta["result"]) is TaskTimeoutError, meta
        terminal, events = wait_terminal(client, "alice", task_id)
        assert terminal["status"] == "timed_out"
        assert sum(e["type"] == "status" and e["status"] == "timed_out" for e in events) == 1


# Not prefork: there Celery's own hard limit kills the child at the same second (the
# execution is then redelivered, as a crash), a race with the runner's deadline.
@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_message_hard_limit_alone_times_out_in_process(aiecs_redis, start_worker, pool):
    """A message with only a hard limit (``time_limit``): the in-process pools enforce
    it as the runner's deadline (TIMED_OUT, TaskTimeoutError), not the worker's 300 s."""
    from aiecs_worker import execute_task

    start_worker(pool=pool, concurrency=2)
    client = aiecs_redis.client()
    task_id = f"t{uuid.uuid4().hex[:10]}"
    res = execute_task.apply_async(
        kwargs=dict(task_name="echo", user_id="alice", task_id=task_id, step=1,
                    mode="test", service="echo", context={},
                    input_data={"text": "a b c d e f g h", "chunks": 8, "delay": 4.0}),
        time_limit=1,
    )
    with pytest.raises(TaskTimeoutError):
        res.get(timeout=20)
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == "timed_out"
    assert sum(e["type"] == "status" and e["status"] == "timed_out" for e in events) == 1
