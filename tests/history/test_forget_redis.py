"""store/forget.py on a real Redis: a user's ended executions go, what has not ended
stays, other users are untouched, and a step submitted while forget runs keeps its log."""

from __future__ import annotations

from aiecs_worker.store.events import run_script
from aiecs_worker.store.forget import FORGET_TASK_LUA, forget_user
from aiecs_worker.store.keys import PREFIX, TaskKeys, celery_index_key, steps_key


def _execution(client, user, task, step, status):
    keys = TaskKeys(user, task)
    celery_id = f"c-{user}-{task}-{step}"
    client.hset(keys.state(step), mapping={"status": status, "celery_id": celery_id})
    client.sadd(steps_key(user, task), step)
    client.set(celery_index_key(celery_id, PREFIX), keys.state(step))
    client.xadd(keys.log, {"e": "{}"})
    client.set(keys.seq, 1)


def test_forget_user_keeps_what_has_not_ended(redis_server):
    client = redis_server.client()
    _execution(client, "alice", "done", 1, "completed")
    _execution(client, "alice", "done", 2, "failed")
    _execution(client, "alice", "mixed", 1, "completed")
    _execution(client, "alice", "mixed", 2, "running")
    _execution(client, "alice.b", "done", 1, "completed")  # a user whose id extends hers
    assert forget_user(client, "alice", scan_count=2) == {"tasks": 1, "states": 3, "live": 1}
    left = sorted(k.decode() for k in client.keys("aiecs:t:alice:*"))
    assert left == ["aiecs:t:alice:mixed:2:state", "aiecs:t:alice:mixed:log",
                    "aiecs:t:alice:mixed:seq", "aiecs:t:alice:mixed:steps"]
    assert client.smembers(steps_key("alice", "mixed")) == {b"2"}
    assert client.exists(celery_index_key("c-alice-done-1", PREFIX),
                         celery_index_key("c-alice-mixed-1", PREFIX)) == 0
    assert client.exists(celery_index_key("c-alice-mixed-2", PREFIX)) == 1
    assert len(client.keys("aiecs:t:alice.b:*")) == 4
    assert client.exists(celery_index_key("c-alice.b-done-1", PREFIX)) == 1


def test_a_step_submitted_meanwhile_keeps_the_log(redis_server):
    client = redis_server.client()
    _execution(client, "bob", "t", 1, "completed")
    client.sadd(steps_key("bob", "t"), 2)  # step 2 submitted after the scan saw step 1
    keys = TaskKeys("bob", "t")
    deleted, live = run_script(client, FORGET_TASK_LUA,
                               [keys.seq, keys.log, steps_key("bob", "t"), keys.state(1)],
                               ["", "1"])
    assert (deleted, live) == (1, 1)
    assert client.exists(keys.log, keys.seq) == 2 and not client.exists(keys.state(1))
