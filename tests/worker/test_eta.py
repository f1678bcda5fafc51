"""One-off executions at a time (``countdown`` / ``eta``) through ``apply_async``, on a
real worker: PENDING until then, and never run early by the sweeper that re-sends PENDING
executions whose message it cannot find."""

from __future__ import annotations

import time
import uuid

from aiecs_worker import execute_task
from aiecs_worker.producer.control import get_state

from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.processes import in_process_pools


@in_process_pools
def test_an_eta_execution_is_not_resent_early_by_the_sweeper(aiecs_redis, start_worker):
    # visibility timeout 1 s: the sweeper looks for PENDING executions whose queue is
    # empty after 2 s, every second (lease 3 s); the worker holds the ETA message meanwhile
    start_worker(env={"CELERY_VISIBILITY_TIMEOUT": "1", "AIECS_LEASE_SECONDS": "3"})
    user, task = f"u{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    before = time.time()
    execute_task.apply_async(kwargs={
        "task_name": "echo", "user_id": user, "task_id": task, "step": 1, "mode": "test",
        "service": "echo", "input_data": {"text": "on time", "chunks": 1}}, countdown=6)
    state = get_state(user, task, 1)["steps"][1]
    assert state["status"] == "pending" and state["eta"] >= before + 6

    def ended():
        st = get_state(user, task, 1)["steps"][1]
        return st["status"] in TERMINAL and st

    final = wait_until(ended, timeout=40, message="the execution")
    assert final["status"] == "completed"
    assert final["started"] >= state["eta"] - 0.05, (final["started"], state["eta"])
    events = read_events(aiecs_redis.client(), user, task)
    assert [e["status"] for e in events if e["type"] == "status"] == [
        "pending", "running", "completed"]
    assert events[0]["message"].startswith("scheduled for ")
