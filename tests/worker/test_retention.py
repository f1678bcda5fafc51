"""Retention that holds (issue 19, item 3): every key of an execution gets its TTL from
the WORKERS' AIECS_EVENTS_TTL when it ends, whatever the settings of the process that
submitted or cancelled it; a step scheduled further ahead than the TTL keeps its task's
keys (steps, seq, log) until it runs, and another step ending meanwhile does not cut
them short; nothing stays in ``aiecs:pending``."""

from __future__ import annotations

import uuid

from aiecs_worker import execute_task
from aiecs_worker.producer.control import cancel, get_state
from aiecs_worker.store.events import celery_task_id
from aiecs_worker.store.keys import (
    PREFIX,
    celery_index_key,
    due_key,
    pending_key,
    retention_key,
    steps_key,
)

from tests.support.events import TERMINAL, wait_until

DAY = 86_400
WORKER_TTL = 600


def _kwargs(user: str, task: str, step: int = 1) -> dict:
    return {"task_name": "echo", "user_id": user, "task_id": task, "step": step,
            "mode": "test", "service": "echo", "input_data": {"text": "kept", "chunks": 1}}


def _ids() -> tuple[str, str]:
    return f"u{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"


def _ttls(client, user: str, task: str, step: int = 1) -> dict[str, int]:
    base = f"aiecs:t:{user}:{task}"
    keys = {"state": f"{base}:{step}:state", "steps": steps_key(user, task),
            "celery index": celery_index_key(celery_task_id(user, task, step), PREFIX),
            "seq": f"{base}:seq", "log": f"{base}:log"}
    return {name: client.ttl(key) for name, key in keys.items()}


def _ended(user: str, task: str, step: int = 1):
    st = get_state(user, task, step)["steps"].get(step)
    return st if st and st["status"] in TERMINAL else None


def test_the_workers_ttl_holds_whatever_the_submitters(aiecs_redis, start_worker):
    # this (submitting) process keeps AIECS_EVENTS_TTL's default, one day
    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.delay(**_kwargs(user, task))
    assert wait_until(lambda: _ended(user, task), timeout=30)["status"] == "completed"
    ttls = _ttls(client, user, task)
    assert all(0 < t <= WORKER_TTL for t in ttls.values()), ttls


def test_a_cancel_from_another_process_gets_the_workers_ttl(aiecs_redis, start_worker):
    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    client = aiecs_redis.client()
    wait_until(lambda: client.get(retention_key(PREFIX)), timeout=30,
               message="the worker's retention")
    user, task = _ids()
    # held in Redis a week ahead, then cancelled here (one day of TTL in this process)
    execute_task.apply_async(kwargs=_kwargs(user, task), countdown=7 * DAY)
    state_key = f"aiecs:t:{user}:{task}:1:state"
    assert client.ttl(state_key) > 7 * DAY
    assert cancel(user, task, 1)
    assert get_state(user, task, 1)["steps"][1]["status"] == "cancelled"
    ttls = _ttls(client, user, task)
    assert all(0 < t <= WORKER_TTL for t in ttls.values()), ttls
    assert client.zscore(pending_key(PREFIX), state_key) is None
    assert client.zscore(due_key(PREFIX), state_key) is None


def test_a_step_scheduled_beyond_the_ttl_keeps_its_tasks_keys(aiecs_redis, start_worker):
    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.delay(**_kwargs(user, task, 1))
    wait_until(lambda: _ended(user, task, 1), timeout=30, message="step 1")
    # step 2 of the same task, two days ahead: the task's log, seq and steps must live
    # until it runs (they had the worker's 10 minutes left)
    execute_task.apply_async(kwargs=_kwargs(user, task, 2), countdown=2 * DAY)
    ttls = _ttls(client, user, task, 2)
    assert all(t > 2 * DAY for t in ttls.values()), ttls
    # step 3 runs now and ends: it must not cut short what step 2 still needs
    execute_task.delay(**_kwargs(user, task, 3))
    wait_until(lambda: _ended(user, task, 3), timeout=30, message="step 3")
    after = _ttls(client, user, task, 2)
    assert all(t > 2 * DAY for t in after.values()), after
    step3 = _ttls(client, user, task, 3)
    assert 0 < step3["state"] <= WORKER_TTL and 0 < step3["celery index"] <= WORKER_TTL
    # and once step 2 is cancelled, the task's keys go back to the worker's TTL
    assert cancel(user, task, 2)
    final = _ttls(client, user, task, 2)
    assert all(0 < t <= WORKER_TTL for t in final.values()), final


def test_a_cancel_never_shortens_a_waiting_executions_ttl(aiecs_redis, submitter_env):
    # queued, no worker yet: the cancel is a mark the worker honours when the message
    # arrives; a canceller with a short TTL must not let the record (and its mark) expire
    # first, or the message would find no record and run
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.delay(**_kwargs(user, task))
    state_key = f"aiecs:t:{user}:{task}:1:state"
    before = client.ttl(state_key)
    submitter_env(AIECS_EVENTS_TTL="5")
    assert cancel(user, task, 1)
    assert client.hget(state_key, "cancel_requested")
    assert client.ttl(state_key) >= before - 1


def test_a_cancelled_eta_execution_leaves_nothing_in_pending(aiecs_redis):
    # due within the horizon: its message is in the broker, its entry in aiecs:pending
    # (scored at its eta); a cancel ends it at once and takes the entry with it
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.apply_async(kwargs=_kwargs(user, task), countdown=30)
    state_key = f"aiecs:t:{user}:{task}:1:state"
    assert client.zscore(pending_key(PREFIX), state_key) is not None
    assert cancel(user, task, 1)
    assert get_state(user, task, 1)["steps"][1]["status"] == "cancelled"
    assert client.zscore(pending_key(PREFIX), state_key) is None


def test_a_finished_batch_keeps_the_workers_ttl(aiecs_redis, start_worker):
    from aiecs_worker.producer.batch import submit_batch
    from aiecs_worker.store.keys import batch_key

    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    client = aiecs_redis.client()
    user = f"u{uuid.uuid4().hex[:8]}"
    items = [{"task_name": "echo", "mode": "test", "service": "echo",
              "input_data": {"text": f"item {i}", "chunks": 1}} for i in range(3)]
    out = submit_batch(user, items)  # made here, with this process's one-day TTL
    key = batch_key(user, out["batch_id"])
    wait_until(lambda: client.hget(key, "status") in (b"completed", b"failed"), timeout=30,
               message="the batch to end")
    seq, log = client.hmget(key, "seq", "log")
    ttls = {k: client.ttl(k) for k in (key, f"{key}:items", seq.decode(), log.decode())}
    assert all(0 < t <= WORKER_TTL for t in ttls.values()), ttls


def test_a_finished_workflow_keeps_the_workers_ttl(aiecs_redis, start_worker):
    from aiecs_worker.producer.flow import get_workflow, submit_workflow
    from aiecs_worker.store.keys import flow_key

    client = aiecs_redis.client()
    user, task = _ids()
    step = {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "kept", "chunks": 1}}
    # made here, with this process's one-day TTL, before any worker runs; step 2 waits
    # for step 1 and then takes a few seconds
    submit_workflow(user, [{**step, "step": 1},
                           {**step, "step": 2, "depends_on": [1],
                            "input_data": {"text": "kept", "chunks": 1, "delay": 3}}],
                    task_id=task)
    key = flow_key(user, task)
    assert client.ttl(key) > WORKER_TTL
    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    wait_until(lambda: _ended(user, task, 1), timeout=30, message="step 1")
    # one step ended, one to go: the workflow keeps what it had. The TTL is read first,
    # so if step 2 has not ended after it, it had not ended when it was read.
    ttl = client.ttl(key)
    assert not _ended(user, task, 2), "step 2 ended within its delay"
    assert ttl > WORKER_TTL
    wait_until(lambda: get_workflow(user, task)["status"] == "completed", timeout=30,
               message="the workflow to complete")
    ttls = {"workflow": client.ttl(key), **_ttls(client, user, task, 2)}
    assert all(0 < t <= WORKER_TTL for t in ttls.values()), ttls


def test_a_workflow_cancelled_from_another_process_gets_the_workers_ttl(
        aiecs_redis, start_worker):
    from aiecs_worker.producer.flow import cancel_workflow, get_workflow, submit_workflow
    from aiecs_worker.store.keys import flow_key

    start_worker(env={"AIECS_EVENTS_TTL": str(WORKER_TTL)})
    client = aiecs_redis.client()
    wait_until(lambda: client.get(retention_key(PREFIX)), timeout=30,
               message="the worker's retention")
    user, task = _ids()
    step = {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "slow", "chunks": 1, "delay": 60}}
    submit_workflow(user, [{**step, "step": 1}, {**step, "step": 2, "depends_on": [1]}],
                    task_id=task)
    assert cancel_workflow(user, task)  # here: the workers' TTL all the same
    wait_until(lambda: get_workflow(user, task)["status"] == "failed", timeout=30,
               message="the workflow to end")
    ttl = client.ttl(flow_key(user, task))
    assert 0 < ttl <= WORKER_TTL, ttl
