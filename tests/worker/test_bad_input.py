"""Bad input gets a clear error, a FAILED event, and the worker keeps serving."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.support.events import dump_redis, wait_for_event
from tests.support.processes import CELERY, WorkerProcess

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


def base(task_id: str, **overrides):
    kw = dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
              service="echo", input_data={"text": "hi"}, context={})
    kw.update(overrides)
    return kw


CASES = [
    # (name, overrides / removals, error type, text the reason must contain)
    ("missing field", {"mode": None}, "InvalidTaskError", "mode: Field required"),
    ("extra field", {"priority_boost": 3}, "InvalidTaskError",
     "priority_boost: Extra inputs are not permitted"),
    ("wrong type", {"step": "one"}, "InvalidTaskError", "step: Input should be a valid integer"),
    ("input_data not an object", {"input_data": ["x"]}, "InvalidTaskError",
     "input_data: Input should be a valid dictionary"),
    ("unknown mode", {"mode": "nope"}, "ServiceNotFoundError",
     "no service 'echo' in mode 'nope'; available:"),
    ("unknown service", {"service": "nope"}, "ServiceNotFoundError", "test/echo"),
    ("dunder init", {"task_name": "__init__"}, "OperationNotFoundError",
     "has no operation '__init__'; available: echo"),
    ("dunder class", {"task_name": "__class__"}, "OperationNotFoundError",
     "has no operation '__class__'"),
    ("non-operation method", {"task_name": "aclose"}, "OperationNotFoundError",
     "has no operation 'aclose'"),
    ("input fails the model", {"input_data": {"text": "hi", "chunks": 0}},
     "InputValidationError", "chunks: Input should be greater than or equal to 1"),
    ("input extra key", {"input_data": {"text": "hi", "colour": "red"}},
     "InputValidationError", "colour: Extra inputs are not permitted"),
    ("oversize payload", {"input_data": {"text": "x" * 5000}}, "PayloadTooLargeError",
     "over the limit of 2000 (AIECS_MAX_PAYLOAD_BYTES)"),
]


def test_every_bad_input_fails_clearly_and_the_worker_keeps_serving(aiecs_redis, start_worker):
    from aiecs_worker import execute_task

    worker = start_worker(env={"AIECS_MAX_PAYLOAD_BYTES": "2000"})
    client = aiecs_redis.client()
    for name, overrides, error_type, reason in CASES:
        task_id = f"t{uuid.uuid4().hex[:8]}"
        kw = base(task_id, **overrides)
        kw = {k: v for k, v in kw.items() if v is not None}
        res = execute_task.delay(**kw)
        with pytest.raises(Exception) as info:
            res.get(timeout=30)
        assert type(info.value).__name__ == error_type, name
        assert reason in str(info.value), (name, str(info.value))
        assert res.state == "FAILURE", name
        event, events = wait_for_event(
            client, "alice", task_id, lambda e: e["type"] == "status" and e["status"] in TERMINAL
        )
        assert event["status"] == "failed", name
        assert event["error"]["type"] == error_type, name
        assert reason in event["error"]["message"], name
        assert [e for e in events if e["status"] in TERMINAL] == [event], name
    # a task without a user cannot be routed to anyone, but still fails in Celery
    res = execute_task.delay(**{k: v for k, v in base("orphan").items() if k != "user_id"})
    with pytest.raises(Exception, match="user_id: Field required"):
        res.get(timeout=30)
    # the worker survived all of it and serves the next task normally
    ok = execute_task.delay(**base(f"t{uuid.uuid4().hex[:8]}")).get(timeout=30)
    assert ok["status"] == "completed"
    assert worker.alive()
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CELERY_TASK_SOFT_TIME_LIMIT": "abc"}, "CELERY_TASK_SOFT_TIME_LIMIT"),
        ({"CELERY_TASK_SOFT_TIME_LIMIT": "700"}, "must be less than CELERY_TASK_TIME_LIMIT"),
        ({"AIECS_LEASE_SECONDS": "1"}, "AIECS_LEASE_SECONDS"),
        ({"CELERY_WORKER_PREFETCH_MULTIPLIER": "-1"}, "CELERY_WORKER_PREFETCH_MULTIPLIER"),
        ({"CELERY_BROKER_URL": "sqs://localhost//"}, "CELERY_BROKER_URL"),
    ],
)
def test_invalid_settings_stop_the_worker_at_start(aiecs_redis, env, names):
    proc = WorkerProcess(redis_url=aiecs_redis.url, env=env)
    out = subprocess.run(
        [CELERY, "-A", "aiecs_worker", "worker", "--pool", "solo"],
        env=proc.environ(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode != 0
    assert names in out.stdout + out.stderr


def test_a_provider_bug_fails_the_task_without_leaking_and_the_worker_serves_on(
        aiecs_redis, start_worker):
    from aiecs_core import OperationError
    from aiecs_worker import execute_task

    worker = start_worker()
    client = aiecs_redis.client()
    task_id = f"t{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(**base(task_id, service="buggy", task_name="explode",
                                    input_data={}))
    with pytest.raises(OperationError) as info:
        res.get(timeout=30)
    assert "KeyError: 'no route for api key [redacted]'" in str(info.value)
    event, _ = wait_for_event(
        client, "alice", task_id, lambda e: e["type"] == "status" and e["status"] in TERMINAL)
    assert event["status"] == "failed"
    assert event["error"]["type"] == "OperationError"
    assert event["error"]["details"]["exception_type"] == "KeyError"
    assert event["partial_output"] == "partial "
    assert "CANARY" not in dump_redis(client)
    log = worker.log()
    assert "KeyError: 'no route for api key [redacted]'" in log  # the traceback is logged
    assert "CANARY" not in log
    ok = execute_task.delay(**base(f"t{uuid.uuid4().hex[:8]}")).get(timeout=30)
    assert ok["status"] == "completed"
    assert worker.alive()
