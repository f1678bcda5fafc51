"""What a worker asks Redis per task (issue 20): counted script by script, with Redis's
SLOWLOG logging every command (a real worker, real tasks, the session's redis-server).

- The fair-share release (store/hold.py ``RELEASE_LUA``) runs after a terminal step only
  when the terminal script says executions are held behind it (store/events.py
  ``HELD_LUA``): none held, no second script call; held, released at once, under both
  in-process pools.
- ``--pool asyncio`` claims a backlog in batches (runner/aiopool.py ``_CLAIM``: up to
  ``CLAIM_BATCH`` messages popped and recorded unacked per script call) and makes no empty
  claim calls while the queue trickles (``BRPOP``, whose record says whether more wait);
  a SIGKILLed worker's claimed, not yet started messages come back through kombu's
  ``restore_visible`` and run once; it acknowledges a message in its terminal step's
  pipeline (no round trip of its own); the begin transitions of the executions a claim
  started go out together, in one pipeline on one connection (runner/runtime.py
  ``Coalesced``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
import uuid

from aiecs_worker.producer.batch import submit_batch
from aiecs_worker.producer.control import get_state
from aiecs_worker.runner.aiopool import _CLAIM, CLAIM_BATCH
from aiecs_worker.store.events import BEGIN_PUBLISH_LUA, FINISH_PUBLISH_LUA
from aiecs_worker.store.hold import RELEASE_LUA
from aiecs_worker.store.keys import SHARD_PREFIXES
from aiecs_worker.store.lease import REAP_LUA

from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.processes import in_process_pools


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@contextlib.contextmanager
def _every_command(client):
    """Log every command (SLOWLOG, threshold 0) meanwhile; yields a function counting the
    EVALSHA calls of a script so far. The scripts counted are loaded first (a first call's
    NOSCRIPT would be logged as a call too)."""
    for script in (RELEASE_LUA, _CLAIM, FINISH_PUBLISH_LUA, REAP_LUA, BEGIN_PUBLISH_LUA):
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
        # the three terminal steps' releases, and at most one per periodic sweep that ran
        # meanwhile (a worker sweeps once at its start, which a loaded machine can delay
        # into the test; the sweep releases held executions too): before, 9
        sweeps = calls(REAP_LUA) // len(SHARD_PREFIXES)
        assert 3 <= calls(RELEASE_LUA) <= 3 + sweeps, (calls(RELEASE_LUA), sweeps)


def test_asyncio_pool_claims_a_backlog_in_batches(aiecs_redis, start_worker):
    """40 messages waiting when the worker starts: taken in a few claim calls of up to
    CLAIM_BATCH each (before: one call per message, 40), each run once, none left unacked."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    n = 40
    with _every_command(client) as calls:
        results = [execute_task.delay(**_echo(f"b{i}-{uuid.uuid4().hex[:6]}"))
                   for i in range(n)]
        start_worker(pool="asyncio", concurrency=n)
        assert [r.get(timeout=60)["status"] for r in results] == ["completed"] * n
        claims = calls(_CLAIM)
    assert claims <= n // CLAIM_BATCH + 3, claims
    wait_until(lambda: client.hlen("unacked") == 0, timeout=10, message="all acknowledged")


def test_asyncio_pool_begins_a_claimed_batch_in_one_pipeline(aiecs_redis, start_worker):
    """40 messages waiting when the worker starts: the begin transitions of the executions
    each claim started go out together, in one pipeline on one pooled connection (before:
    each begin awaited on its own, on as many connections as begins were in flight, 16
    and more here), and each execution is begun once."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    n = 40
    with _every_command(client):
        results = [execute_task.delay(**_echo(f"g{i}-{uuid.uuid4().hex[:6]}"))
                   for i in range(n)]
        start_worker(pool="asyncio", concurrency=n)
        assert [r.get(timeout=60)["status"] for r in results] == ["completed"] * n
        log = client.execute_command("SLOWLOG", "GET", -1)
    begin = _sha(BEGIN_PUBLISH_LUA).encode()
    begins = [e for e in log if e[3][:2] == [b"EVALSHA", begin]]
    assert len(begins) == n  # each execution begun once
    connections = {e[4] for e in begins}
    # a connection per claim call at most (40 messages: three claims of up to
    # CLAIM_BATCH), and one when a claim's begins and the next overlap
    assert len(connections) <= n // CLAIM_BATCH + 2, len(connections)


def test_asyncio_pool_makes_no_empty_claims_while_the_queue_trickles(aiecs_redis,
                                                                    start_worker):
    """Tasks sent one at a time to an idle worker: each taken by BRPOP, none by a claim
    call (before: an empty claim call before every BRPOP, and every idle second)."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    start_worker(pool="asyncio", concurrency=8)
    execute_task.delay(**_echo(f"w-{uuid.uuid4().hex[:6]}")).get(timeout=30)
    with _every_command(client) as calls:
        for i in range(6):
            out = execute_task.delay(**_echo(f"t{i}-{uuid.uuid4().hex[:6]}")).get(timeout=30)
            assert out["status"] == "completed"
        time.sleep(1.5)  # idle: the pool waits in BRPOP (1 s at a time)
        assert calls(_CLAIM) == 0


def test_asyncio_pool_sigkilled_with_a_claimed_batch(aiecs_redis, start_worker,
                                                     submitter_env):
    """Twenty messages with a countdown (sent to the broker: within the horizon) are
    claimed in a batch and wait on the worker's loop for their time; the worker is
    SIGKILLed before any starts. All twenty are in kombu's unacked record, and come back
    through kombu's restore_visible after the visibility timeout: each runs once."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    env = {"CELERY_VISIBILITY_TIMEOUT": "8"}  # the horizon: 4 s
    submitter_env(**env)
    n = 20
    with _every_command(client) as calls:
        doomed = start_worker(pool="asyncio", concurrency=32, env=env)
        user = f"k{uuid.uuid4().hex[:8]}"
        ids = [f"c{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
        for task_id in ids:
            execute_task.apply_async(kwargs=_echo(task_id, user), countdown=3)
        wait_until(lambda: client.hlen("unacked") == n and not client.keys("fast_tasks*"),
                   timeout=30, message="every message claimed")
        # sent one at a time to a running worker: how many arrive between two claims
        # depends on the machine's load (3 on a quiet machine, 4 seen in CI); before: one
        # claim call per message, 20
        assert calls(_CLAIM) < n // 2
    assert all(get_state(user, t, 1)["steps"][1]["status"] == "pending" for t in ids)
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.stop()
    assert client.hlen("unacked") == n  # still the dead worker's: not lost, not queued
    start_worker(pool="asyncio", concurrency=32, env=env)

    def ended():
        states = [get_state(user, t, 1)["steps"].get(1, {}) for t in ids]
        return all(st.get("status") in TERMINAL for st in states) and states

    states = wait_until(ended, timeout=90, interval=0.2, message="every execution ending")
    assert [st["status"] for st in states] == ["completed"] * n
    for task_id in ids:
        assert len(_terminal_events(client, user, task_id)) == 1


def test_asyncio_pool_acknowledges_in_the_terminal_pipeline(aiecs_redis, start_worker):
    """The acknowledgement (kombu's ``HDEL unacked`` + ``ZREM unacked_index``) of each
    task goes right after its terminal script, on the same connection (the publisher's
    pipeline), not in a round trip of its own from the broker client (before: another
    connection)."""
    from aiecs_worker import execute_task

    client = aiecs_redis.client()
    start_worker(pool="asyncio", concurrency=8)
    execute_task.delay(**_echo(f"w-{uuid.uuid4().hex[:6]}")).get(timeout=30)
    with _every_command(client):
        ids = []
        for i in range(4):
            task_id = f"a{i}-{uuid.uuid4().hex[:6]}"
            res = execute_task.delay(**_echo(task_id))
            assert res.get(timeout=30)["status"] == "completed"
            ids.append(task_id)
        wait_until(lambda: client.hlen("unacked") == 0, timeout=10, message="acknowledged")
        log = list(reversed(client.execute_command("SLOWLOG", "GET", -1)))
    finish = _sha(FINISH_PUBLISH_LUA).encode()
    for task_id in ids:
        state_key = f"aiecs:t:alice:{task_id}:1:state".encode()
        [at] = [i for i, e in enumerate(log) if e[3][:2] == [b"EVALSHA", finish]
                and state_key in e[3]]
        acks = [i for i, e in enumerate(log) if e[3][:2] == [b"HDEL", b"unacked"]]
        after = [i for i in acks if i > at]
        assert after, (task_id, "no acknowledgement after the terminal script")
        assert log[after[0]][4] == log[at][4], (task_id, log[after[0]], log[at])
        assert log[after[0] + 1][3][:2] == [b"ZREM", b"unacked_index"]
