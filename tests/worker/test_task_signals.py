"""Celery's task signals and ``celery inspect active`` under the in-process pools.

Tracing and error-reporting SDKs hook Celery through its task signals (OpenTelemetry's
``CeleryInstrumentor``: ``task_prerun`` / ``task_postrun`` / ``task_failure``; Sentry's
Celery integration), and operators look at running tasks with ``celery inspect active``.
``--pool asyncio`` runs aiecs's executions on the event loop, outside Celery's tracer and
``Request``: these tests check it sends the same signals with the same arguments, in the
same order, in one context per execution, and lists its running executions, as the
threads pool (Celery's own code) does. A receiver module loaded into the worker
(tests/support/signal_recorder.py) records every signal to Redis.
"""

from __future__ import annotations

import json
import uuid

from aiecs_worker.app import app
from aiecs_worker.store.events import celery_task_id

from tests.support import signal_recorder
from tests.support.events import wait_for_event, wait_terminal, wait_until
from tests.support.processes import in_process_pools

TASK = "aiecs.tasks.worker.execute_task"


def _kwargs(task_id: str, **inp: object) -> dict:
    inp.setdefault("text", "one two")
    return dict(task_name="echo", user_id="sig", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def _start(start_worker, **kwargs):
    return start_worker(extra_args=signal_recorder.WORKER_ARGS, env=signal_recorder.ENV,
                        **kwargs)


def _signals(client, celery_id: str) -> list[dict]:
    records = [json.loads(r) for r in client.lrange(signal_recorder.KEY, 0, -1)]
    return [r for r in records if r["task_id"] == celery_id]


def _names(records: list[dict]) -> list[str]:
    return [r["signal"] for r in records]


def _wait_signals(client, celery_id: str, last: str) -> list[dict]:
    return wait_until(lambda: (s := _signals(client, celery_id)) and s[-1]["signal"] == last
                      and s, timeout=30, message=f"{last} of {celery_id}")


def _body_signal(record: dict, celery_id: str, kwargs: dict) -> None:
    """What every signal of the body carries: the task as sender, its request pushed
    (``task.request`` / ``current_task``), and the context task_prerun set."""
    assert record["sender"] == TASK, record
    assert record["request_id"] == celery_id, record
    assert record["current_task"] == TASK, record
    assert record["attached"] == celery_id, record
    if "kwargs" in record:
        assert record["args"] == [] and record["kwargs"] == kwargs, record


@in_process_pools
def test_task_signals_as_celery_sends_them(aiecs_redis, start_worker):
    from aiecs_worker import control, execute_task

    _start(start_worker, concurrency=2)
    client = aiecs_redis.client()

    # a success: received, prerun, success (the stored result), postrun SUCCESS
    ok = _kwargs(f"ok{uuid.uuid4().hex[:8]}", chunks=1)
    res = execute_task.delay(**ok)
    assert res.get(timeout=30)["result"]["text"] == "one two"
    rec = _wait_signals(client, res.id, "task_postrun")
    assert _names(rec) == ["task_received", "task_prerun", "task_success", "task_postrun"]
    assert rec[0]["sender"] == "Consumer" and rec[0]["name"] == TASK
    for r in rec[1:]:
        _body_signal(r, res.id, ok)
    assert rec[1]["task"] == TASK
    assert rec[2]["result"] == res.result and rec[2]["runtime_ok"]
    assert rec[3]["retval"] == res.result and rec[3]["state"] == "SUCCESS"

    # a failure: received, prerun, failure (exception and einfo), postrun FAILURE
    bad = _kwargs(f"bad{uuid.uuid4().hex[:8]}", fail="invalid")
    res = execute_task.delay(**bad)
    rec = _wait_signals(client, res.id, "task_postrun")
    assert _names(rec) == ["task_received", "task_prerun", "task_failure", "task_postrun"]
    for r in rec[1:]:
        _body_signal(r, res.id, bad)
    error = ["InvalidRequestError", "echo was told to fail with invalid"]
    assert rec[2]["exception"] == error and rec[2]["einfo"] == error
    assert rec[2]["traceback"] and rec[2]["einfo_traceback"]
    assert rec[3]["retval"] == error and rec[3]["state"] == "FAILURE"

    # cancelled while running: received, prerun, postrun IGNORED (no success, no failure)
    slow = _kwargs(f"slow{uuid.uuid4().hex[:8]}", chunks=100, delay=0.2, text="word " * 100)
    res = execute_task.delay(**slow)
    wait_for_event(client, "sig", slow["task_id"], lambda e: e["type"] == "stream")
    assert control.cancel("sig", slow["task_id"], 1)
    rec = _wait_signals(client, res.id, "task_postrun")
    assert _names(rec) == ["task_received", "task_prerun", "task_postrun"]
    for r in rec[1:]:
        _body_signal(r, res.id, slow)
    assert rec[2]["retval"] == ["ExecutionCancelled", ""] and rec[2]["state"] == "IGNORED"

    # revoked before it was received: task_revoked only, with the message's request
    gone = _kwargs(f"gone{uuid.uuid4().hex[:8]}")
    gone_id = celery_task_id("sig", gone["task_id"], 1)
    app.control.revoke(gone_id)
    wait_until(lambda: any(gone_id in ids for ids in
                           (app.control.inspect(timeout=1).revoked() or {}).values()),
               timeout=20, message="the worker knows the revocation")
    execute_task.delay(**gone)
    terminal, _ = wait_terminal(client, "sig", gone["task_id"])
    assert terminal["status"] == "cancelled"
    rec = _wait_signals(client, gone_id, "task_revoked")
    assert _names(rec) == ["task_revoked"]
    assert rec[0]["sender"] == TASK and rec[0]["kwargs"] == gone and rec[0]["args"] == []
    assert (rec[0]["terminated"], rec[0]["signum"], rec[0]["expired"]) == (False, None, False)


@in_process_pools
def test_inspect_active_lists_a_running_execution(aiecs_redis, start_worker):
    from aiecs_worker import control, execute_task

    worker = start_worker(concurrency=2)
    client = aiecs_redis.client()
    slow = _kwargs(f"act{uuid.uuid4().hex[:8]}", chunks=100, delay=0.2, text="word " * 100)
    res = execute_task.delay(**slow)
    wait_for_event(client, "sig", slow["task_id"], lambda e: e["type"] == "stream")

    def listed():
        replies = app.control.inspect(timeout=2).active() or {}
        return [t for node, tasks in replies.items() if node.startswith(f"{worker.name}@")
                for t in tasks]

    [active] = wait_until(listed, timeout=20, message="the running execution listed")
    assert active["id"] == res.id and active["name"] == TASK
    assert active["kwargs"] == slow and active["time_start"]
    assert control.cancel("sig", slow["task_id"], 1)
    wait_terminal(client, "sig", slow["task_id"])
    wait_until(lambda: not listed(), timeout=20, message="no longer listed once over")
