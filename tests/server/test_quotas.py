"""Quotas per user (issue 16, rows 5 and 6) against a real server process and Redis: each
quota refuses with 429 + ``Retry-After`` (422 / 413 for what never passes), names its
limit and setting, queues nothing, and frees up again; GET on a task with many steps lists
a bounded number of them."""

from __future__ import annotations

import json
import re
import time

import pytest
from aiecs_core import QuotaExceededError, TaskRequest

from tests.server.helpers import uid, wait_until


def echo(**extra):
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "hi", "chunks": 1}, **extra}


def item():
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "hi", "chunks": 1}}


def queued(client) -> int:
    """Messages waiting in the broker's task queues (every priority sub-queue)."""
    return sum(client.llen(k) for k in client.scan_iter(match="*_tasks*")
               if client.type(k) == b"list")


def user_keys(client, user: str) -> set[bytes]:
    """Every record of the user's executions, batches and workflows."""
    return {k for pattern in (f"aiecs:t:{user}:*", f"aiecs:batch:{user}:*",
                              f"aiecs:flow:{user}:*")
            for k in client.scan_iter(match=pattern)}


def assert_quota(server, status: int, body: dict, setting: str, limit, code: int = 429):
    assert status == code, body
    err = body["error"]
    assert err["type"] == "QuotaExceededError", err
    assert setting in err["message"] and str(limit) in err["message"], err
    assert err["setting"] == setting and err["limit"] == limit, err
    if code == 429:
        after = int(server.last_headers["retry-after"])
        assert after >= 1 and err["retry_after"] == after, (server.last_headers, err)
    else:
        assert "retry-after" not in {k.lower() for k in server.last_headers}


def test_submissions_per_second(start_server, aiecs_redis):
    server = start_server(aiecs_redis.url, env={"AIECS_USER_SUBMIT_RATE": "0.5",
                                                "AIECS_USER_SUBMIT_BURST": "2"})
    client = aiecs_redis.client()
    user, other = uid(), uid()
    token = server.token(user)
    for _ in range(2):
        assert server.http("POST", "/tasks", echo(countdown=600), token=token)[0] == 202
    before, keys = queued(client), user_keys(client, user)
    status, body = server.http("POST", "/tasks", echo(countdown=600, task_id="third"),
                               token=token)
    assert_quota(server, status, body, "AIECS_USER_SUBMIT_RATE", 0.5)
    assert int(server.last_headers["retry-after"]) == 2  # a token back in 2 s at 0.5/s
    assert queued(client) == before and user_keys(client, user) == keys  # nothing recorded
    # a batch, a workflow and a schedule are submissions too
    for path, payload in (("/batches", {"items": [item()]}),
                          ("/workflows", {"steps": [{"step": 1, **item()}]}),
                          ("/schedules", echo(every=60))):
        assert_quota(server, *server.http("POST", path, payload, token=token),
                     "AIECS_USER_SUBMIT_RATE", 0.5)
    assert user_keys(client, user) == keys
    # another user has a bucket of their own
    assert server.http("POST", "/tasks", echo(countdown=600), token=server.token(other)
                       )[0] == 202
    # after the window, accepted again
    t0 = time.monotonic()
    wait_until(lambda: server.http("POST", "/tasks", echo(countdown=600, task_id="third"),
                                   token=token)[0] == 202, timeout=10, interval=0.2,
               message="a token back")
    assert time.monotonic() - t0 > 0.5  # the window had to pass
    assert "refused POST /tasks: 429 QuotaExceededError" in server.log()
    status, text = server.http("GET", "/metrics")
    assert status == 200
    count = re.search(r'^aiecs_quota_refusals_total\{setting="AIECS_USER_SUBMIT_RATE"\} '
                      r'(\S+)$', text, flags=re.M)
    assert count and float(count.group(1)) >= 4, text[-2000:]


def test_executions_in_flight(start_server, aiecs_redis):
    server = start_server(aiecs_redis.url, env={"AIECS_USER_MAX_ACTIVE": "3"})
    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)
    ids = []
    for _ in range(3):
        status, out = server.http("POST", "/tasks", echo(countdown=600), token=token)
        assert status == 202, out
        ids.append(out["task_id"])
    before, keys = queued(client), user_keys(client, user)
    assert_quota(server, *server.http("POST", "/tasks", echo(), token=token),
                 "AIECS_USER_MAX_ACTIVE", 3)
    assert int(server.last_headers["retry-after"]) == 5
    # a batch or workflow that does not fit queues nothing, not even part of itself
    assert_quota(server, *server.http("POST", "/batches", {"items": [item(), item()],
                                                           "batch_id": "b1"}, token=token),
                 "AIECS_USER_MAX_ACTIVE", 3)
    assert_quota(server, *server.http("POST", "/workflows", {"steps": [
        {"step": 1, **item()}, {"step": 2, **item(), "depends_on": [1]}]}, token=token),
        "AIECS_USER_MAX_ACTIVE", 3)
    assert queued(client) == before and user_keys(client, user) == keys
    # more than the limit in one submission can never pass: 422
    status, body = server.http("POST", "/batches", {"items": [item()] * 4}, token=token)
    assert_quota(server, status, body, "AIECS_USER_MAX_ACTIVE", 3, code=422)
    # resubmitting a step already counted is a conflict, not a second execution
    assert server.http("POST", "/tasks", echo(task_id=ids[0], step=1), token=token)[0] == 409
    # another user is not held back
    assert server.http("POST", "/tasks", echo(countdown=600), token=server.token(uid())
                       )[0] == 202
    # one ends (cancelled): room for one more
    assert server.http("DELETE", f"/tasks/{ids[0]}", token=token)[0] == 202
    wait_until(lambda: server.http("POST", "/tasks", echo(countdown=600),
                                   token=token)[0] == 202, timeout=10, interval=0.2,
               message="room after a cancel")
    assert server.http("POST", "/tasks", echo(), token=token)[0] == 429


def test_batches_in_flight_and_batch_size(start_server, aiecs_redis, start_worker):
    server = start_server(aiecs_redis.url, env={"AIECS_USER_MAX_BATCHES": "1",
                                                "AIECS_MAX_BATCH_ITEMS": "3",
                                                "AIECS_MAX_GROUP_BODY_BYTES": "65536"})
    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)
    status, body = server.http("POST", "/batches", {"items": [item()] * 4}, token=token)
    assert status == 413 and "AIECS_MAX_BATCH_ITEMS" in body["error"]["message"], body
    big = {"items": [{**item(), "input_data": {"text": "x" * 30_000}}] * 3}
    status, body = server.http("POST", "/batches", big, token=token)
    assert status == 413 and "65536" in body["error"]["message"], body
    assert server.http("POST", "/workflows", {"steps": [{"step": 1, **item(), "input_data": {
        "text": "x" * 70_000}}]}, token=token)[0] == 413
    assert user_keys(client, user) == set()

    # no worker yet: the first batch stays in flight
    status, first = server.http("POST", "/batches", {"items": [item()] * 2, "batch_id": "one"},
                                token=token)
    assert status == 202, first
    before, keys = queued(client), user_keys(client, user)
    status, body = server.http("POST", "/batches", {"items": [item()], "batch_id": "two"},
                               token=token)
    assert_quota(server, status, body, "AIECS_USER_MAX_BATCHES", 1)
    assert queued(client) == before and user_keys(client, user) == keys
    assert not client.exists(f"aiecs:batch:{user}:two")
    # the first batch finishes: the next one is accepted
    start_worker()
    wait_until(lambda: server.http("GET", "/batches/one", token=token)[1].get("finished"),
               timeout=30, message="the first batch done")
    wait_until(lambda: server.http("POST", "/batches", {"items": [item()], "batch_id": "two"},
                                   token=token)[0] == 202, timeout=10, interval=0.2,
               message="room for the second batch")


def test_schedules_count_and_period(start_server, aiecs_redis):
    server = start_server(aiecs_redis.url, env={"AIECS_MAX_SCHEDULES": "1"})
    user = uid()
    token = server.token(user)
    status, body = server.http("POST", "/schedules", echo(every=5), token=token)
    assert_quota(server, status, body, "AIECS_SCHEDULE_MIN_PERIOD", 10, code=422)
    status, body = server.http("POST", "/schedules", echo(every=None, cron="* * * * *"),
                               token=token)
    assert status == 201, body  # every minute: above the 10 s minimum
    status, body = server.http("POST", "/schedules", echo(every=60), token=token)
    assert_quota(server, status, body, "AIECS_MAX_SCHEDULES", 1)
    assert int(server.last_headers["retry-after"]) == 60
    assert len(server.http("GET", "/schedules", token=token)[1]["schedules"]) == 1
    (one,) = server.http("GET", "/schedules", token=token)[1]["schedules"]
    assert server.http("DELETE", f"/schedules/{one['task_id']}", token=token)[0] == 200
    assert server.http("POST", "/schedules", echo(every=60), token=token)[0] == 201


def test_steps_per_task_and_a_bounded_task_view(start_server, aiecs_redis):
    server = start_server(aiecs_redis.url, env={"AIECS_MAX_STEPS_PER_TASK": "3"})
    client = aiecs_redis.client()
    user = uid()
    token = server.token(user)
    for step in (1, 2, 3):
        assert server.http("POST", "/tasks", echo(task_id="t", step=step, countdown=600),
                           token=token)[0] == 202
    before = queued(client)
    assert_quota(server, *server.http("POST", "/tasks", echo(task_id="t"), token=token),
                 "AIECS_MAX_STEPS_PER_TASK", 3, code=422)
    assert_quota(server, *server.http("POST", "/tasks", echo(task_id="t", step=9),
                                      token=token), "AIECS_MAX_STEPS_PER_TASK", 3, code=422)
    assert server.http("POST", "/tasks", echo(task_id="t", step=2), token=token)[0] == 409
    assert queued(client) == before and not client.exists(f"aiecs:t:{user}:t:4:state")

    # a task with 2,490 steps (row 6), recorded as finished executions are
    n = 2490
    pipe = client.pipeline(transaction=False)
    for step in range(1, n + 1):
        pipe.hset(f"aiecs:t:{user}:many:{step}:state", mapping={
            "status": "completed", "result": json.dumps({"task_id": "many", "step": step,
                                                         "result": {"n": step}})})
    pipe.sadd(f"aiecs:t:{user}:many:steps", *range(1, n + 1))
    pipe.execute()
    status, view = server.http("GET", "/tasks/many?events=0", token=token)
    assert status == 200, view
    assert view["steps_total"] == n and len(view["steps"]) == 100
    assert [s["step"] for s in view["steps"]] == list(range(n - 99, n + 1))
    assert view["step"] == n and view["result"] == {"n": n}
    status, view = server.http("GET", "/tasks/many?events=0&steps=5", token=token)
    assert [s["step"] for s in view["steps"]] == list(range(n - 4, n + 1))
    status, view = server.http("GET", "/tasks/many?step=7", token=token)
    assert [s["step"] for s in view["steps"]] == [7] and view["result"] == {"n": 7}
    assert server.http("GET", "/tasks/many?steps=1001", token=token)[0] == 400


@pytest.fixture
def quota_env(monkeypatch):
    from aiecs_worker.settings import get_settings

    def set_env(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


def test_python_entry_points_raise_quota_exceeded(aiecs_redis, quota_env):
    """control.submit, submit_batch, submit_workflow raise QuotaExceededError (with
    retry_after) before anything is recorded or queued."""
    from aiecs_worker import control
    from aiecs_worker.producer.batch import submit_batch
    from aiecs_worker.producer.flow import submit_workflow

    quota_env(AIECS_USER_MAX_ACTIVE=2, AIECS_USER_SUBMIT_BURST=100)
    client = aiecs_redis.client()
    user = uid()

    def req(task_id: str) -> TaskRequest:
        return TaskRequest(task_name="echo", user_id=user, task_id=task_id, step=1,
                           mode="test", service="echo", input_data={"text": "x"})

    control.submit(req("a"), countdown=600)
    control.submit(req("b"), countdown=600)
    before, keys = queued(client), user_keys(client, user)
    with pytest.raises(QuotaExceededError, match="AIECS_USER_MAX_ACTIVE") as refused:
        control.submit(req("c"))
    assert refused.value.retry_after == 5 and refused.value.limit == 2
    with pytest.raises(QuotaExceededError):
        submit_batch(user, [item()])
    with pytest.raises(QuotaExceededError):
        submit_workflow(user, [{"step": 1, **item()}])
    assert queued(client) == before and user_keys(client, user) == keys
    # a batch counts each of its items (by state key, pruned when each ends)
    quota_env(AIECS_USER_MAX_ACTIVE=5, AIECS_USER_SUBMIT_BURST=100)
    submit_batch(user, [item()] * 3, batch_id="b")
    assert {m.decode() for m in client.zrange(f"aiecs:quota:{user}:active", 0, -1)} == {
        f"aiecs:t:{user}:{t}:1:state" for t in ("a", "b", "b.0", "b.1", "b.2")}
    assert all(client.hget(f"aiecs:t:{user}:b.{i}:1:state", "status") == b"pending"
               for i in range(3))
    # round-trips like every aiecs error (Celery's JSON backend rebuilds cls(*args))
    again = type(refused.value)(*json.loads(json.dumps(refused.value.args)))
    assert again.retry_after == 5 and again.setting == "AIECS_USER_MAX_ACTIVE"
