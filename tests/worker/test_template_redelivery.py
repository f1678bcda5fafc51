"""A template's execution redelivered after its worker died runs the version resolved at
submission, on SQLite and PostgreSQL (its own module: a second worker on the queue would
take the task; tests/server/test_templates.py keeps one for its module)."""

from __future__ import annotations

import os

from tests.server.helpers import uid
from tests.server.test_templates import GREET


def test_a_redelivered_execution_runs_the_version_resolved_at_submission(
        database_url, aiecs_redis, start_worker, submitter_env):
    """The worker running it is SIGKILLed after the label moved: the redelivered message
    still holds version 1's rendered input and reference."""
    import signal

    from aiecs_history import templates as store
    from aiecs_worker import execute_task
    from aiecs_worker.history.engine import engine

    from tests.support.events import wait_for_event, wait_terminal

    submitter_env(AIECS_DATABASE_URL=database_url)
    store.publish(engine(), "greet", GREET)
    store.publish(engine(), "greet", {**GREET, "input": {**GREET["input"],
                                                         "text": "v2 {{who}}"}})
    store.move_label(engine(), "greet", "production", 1, expected_version=None)
    worker = start_worker(pool="prefork", concurrency=1,
                          env={"AIECS_DATABASE_URL": database_url})
    user, task_id = uid("dan"), uid("t")
    res = execute_task.delay(user_id=user, task_id=task_id, step=1,
                             template={"name": "greet", "label": "production"},
                             variables={"who": "redelivered", "delay": 0.4})
    client = aiecs_redis.client()
    wait_for_event(client, user, task_id, lambda e: e["type"] == "stream")
    store.move_label(engine(), "greet", "production", 2, expected_version=1)
    (child,) = worker.children()
    os.kill(child, signal.SIGKILL)
    assert res.get(timeout=60)["result"]["text"] == "v1 redelivered"
    terminal, events = wait_terminal(client, user, task_id)
    running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
    assert "redelivered after worker loss (delivery 2)" in running[1]["message"]
    assert {e["template"]["version"] for e in events} == {1}
