"""What a worker asks Redis per task (issue 20): counted script by script, with Redis's
SLOWLOG logging every command (a real worker, real tasks, the session's redis-server).

- The fair-share release (store/hold.py ``RELEASE_LUA``) runs after a terminal step only
  when the terminal script says executions are held behind it (store/events.py
  ``HELD_LUA``): none held, no second script call; held, released at once, under both
  in-process pools.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid

from aiecs_worker.producer.batch import submit_batch
from aiecs_worker.producer.control import get_state
from aiecs_worker.store.events import FINISH_PUBLISH_LUA
from aiecs_worker.store.hold import RELEASE_LUA

from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.processes import in_process_pools


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@contextlib.contextmanager
def _every_command(client):
    """Log every command (SLOWLOG, threshold 0) meanwhile; yields a function counting the
    EVALSHA calls of a script so far. The scripts counted are loaded first (a first call's
    NOSCRIPT would be logged as a call too)."""
    for script in (RELEASE_LUA, FINISH_PUBLISH_LUA):
        client.script_load(script)
    old = client.config_get("slowlog-*")
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()

    def calls(script: str) -> int:
        sha = _sha(script).encode()
        found = [e for e in client.execute_command("SLOWLOG", "GET", -1)
                 if len(e[3]) > 1 and e[3][0].upper() == b"EVALSHA" and e[3][1] == sha]
        return len(found)

    try:
        yield calls
    finally:
        for name, value in old.items():
            client.config_set(name, value)
        client.slowlog_reset()


def _echo(task_id: str, user: str = "alice", **inp) -> dict:
    inp.setdefault("text", "one two")
    return dict(task_name="echo", user_id=user, task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def _terminal_events(client, user: str, task: str) -> list[dict]:
    return [e for e in read_events(client, user, task)
            if e["type"] == "status" and e["status"] in TERMINAL]


@in_process_pools
def test_release_runs_only_when_an_execution_is_held_behind(aiecs_redis, start_worker,
                                                           submitter_env):
    """A window of 1 and four items: the three items that end with another held behind
    them release it from their terminal step (the sweep, every 125 s here, never runs
    during the test); the last one, and plain tasks with nothing held, make no release
    call. Before: one release call after every terminal step (4 + 5)."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    # the periodic sweep (which releases too) every min(lease / 3, horizon / 2) = 125 s
    env = {"AIECS_FAIR_WINDOW_HEAVY": "1", "AIECS_LEASE_SECONDS": "600",
           "AIECS_SCHEDULE_HORIZON": "250"}
    submitter_env(**env)
    start_worker(concurrency=8, env=env)
    user = f"u{uuid.uuid4().hex[:8]}"
    with _every_command(client) as calls:
        items = [{"mode": "test", "service": "echo", "task_name": "echo", "heavy": True,
                  "input_data": {"text": f"item {i}", "chunks": 1, "delay": 0.2}}
                 for i in range(4)]
        ids = [i["task_id"] for i in submit_batch(user, items)["items"]]
        assert [get_state(user, t, 1)["steps"][1].get("held") for t in ids] == [
            None, "fair", "fair", "fair"]

        def ended():
            states = [get_state(user, t, 1)["steps"].get(1, {}) for t in ids]
            return all(st.get("status") in TERMINAL for st in states) and states

        states = wait_until(ended, timeout=60, interval=0.1, message="every item ending")
        assert [st["status"] for st in states] == ["completed"] * 4
        for i in range(1, 4):  # one at a time, in order
            assert states[i]["started"] >= states[i - 1]["finished"] - 0.01
        for i in range(5):  # nothing held behind these
            out = execute_task.delay(**_echo(f"p{i}-{uuid.uuid4().hex[:6]}", user)).get(
                timeout=30)
            assert out["status"] == "completed"
        assert calls(FINISH_PUBLISH_LUA) == 9
        assert calls(RELEASE_LUA) == 3
