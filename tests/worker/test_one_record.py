"""One record, not two: Celery's result read from the execution's terminal record.

The worker does not store Celery's result (no ``celery-task-meta-<id>`` key); ``.get()``,
``AsyncResult.state`` / ``.result`` still answer, from the record, and a ``.get()`` that
waits is woken by the terminal script's publish (aiecs_worker.store.results).
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from aiecs_core import InvalidRequestError
from celery.result import AsyncResult

from tests.support.events import wait_terminal

POOLS = ["threads", "prefork", "asyncio"]


def uid() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


def echo(task_id: str, **inp) -> dict:
    inp.setdefault("text", "one two")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def _celery_keys(client, celery_id: str) -> bool:
    return bool(client.exists(f"celery-task-meta-{celery_id}"))


@pytest.mark.parametrize("pool", POOLS)
def test_completed_result_read_from_the_record(aiecs_redis, start_worker, pool):
    from aiecs_worker import app, execute_task

    start_worker(pool=pool)
    task_id = uid()
    res = execute_task.delay(**echo(task_id))
    out = res.get(timeout=30)
    client = aiecs_redis.client()
    assert out["result"]["text"] == "one two"
    assert out["status"] == "completed"
    # the same outcome as the record's, and no second record
    state = client.hgetall(f"aiecs:t:alice:{task_id}:1:state")
    assert json.loads(state[b"result"]) == out
    assert not _celery_keys(client, res.id)
    # a new AsyncResult (no cache) reads it: state, result, date_done
    fresh = AsyncResult(res.id, app=app)
    assert fresh.state == "SUCCESS"
    assert fresh.result == out
    assert fresh.date_done is not None


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_failure_is_the_aiecs_error(aiecs_redis, start_worker, pool):
    from aiecs_worker import app, execute_task

    start_worker(pool=pool)
    res = execute_task.delay(**echo(uid(), fail="invalid"))
    with pytest.raises(InvalidRequestError) as info:
        res.get(timeout=30)
    assert info.value.status_code == 400
    assert info.value.message
    assert not _celery_keys(aiecs_redis.client(), res.id)
    fresh = AsyncResult(res.id, app=app)
    assert fresh.state == "FAILURE"
    assert isinstance(fresh.result, InvalidRequestError)
    assert fresh.result.message == info.value.message
    assert fresh.result.details == info.value.details


def test_waiting_get_is_woken_by_the_terminal_script(aiecs_redis, worker):
    """A ``.get()`` already waiting when the task ends (Celery's pub/sub wait) returns."""
    from aiecs_worker import execute_task

    task_id = uid()
    res = execute_task.delay(**echo(task_id, delay=0.3, chunks=3))
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(out=res.get(timeout=30)))
    waiter.start()
    waiter.join(40)
    assert got["out"]["result"]["text"] == "one two"
    assert not _celery_keys(aiecs_redis.client(), res.id)


def test_cancelled_before_it_ran_is_revoked(aiecs_redis):
    """No worker at all: a scheduled execution cancelled ends now, and the cancel's terminal
    script alone answers ``.get()``."""
    from aiecs_worker import execute_task
    from aiecs_worker.producer.control import cancel
    from celery.exceptions import TaskRevokedError

    task_id = uid()
    res = execute_task.apply_async(kwargs=echo(task_id), countdown=600)
    assert cancel("alice", task_id, 1)
    with pytest.raises(TaskRevokedError):
        res.get(timeout=10)
    assert res.state == "REVOKED"
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "cancelled"


def test_unrecorded_outcome_still_stored_by_celery(aiecs_redis, worker):
    """Arguments that name no execution: no record to read, Celery stores the failure."""
    from aiecs_core import InvalidTaskError
    from aiecs_worker import execute_task

    res = execute_task.apply_async(args=("positional",))
    with pytest.raises(InvalidTaskError):
        res.get(timeout=30)
    assert _celery_keys(aiecs_redis.client(), res.id)


def test_one_record_only_where_celery_reads_the_state_redis():
    from aiecs_worker.settings import load_settings

    url, other = "redis://localhost:6379/0", "redis://localhost:6379/1"
    assert load_settings(celery_broker_url=url, redis_url=url).one_result_record
    assert not load_settings(celery_broker_url=url, redis_url=url,
                             celery_result_backend=other).one_result_record
    assert not load_settings(celery_broker_url=other, redis_url=url).one_result_record
