"""Fair share (issue 16, row 5): one user's backlog cannot delay another user's work by
more than a bounded amount. Each user has at most AIECS_FAIR_WINDOW_{FAST,HEAVY}
executions in the broker per queue; the rest wait in Redis, in order, and are sent as
that user's executions end (see aiecs_worker.store.hold)."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from aiecs_core import TaskRequest
from aiecs_worker.producer.batch import submit_batch
from aiecs_worker.producer.control import cancel, get_state, submit
from aiecs_worker.store.keys import PREFIX, backlog_key, window_key

from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.processes import in_process_pools


def _item(delay: float, text: str = "x") -> dict:
    return {"mode": "test", "service": "echo", "task_name": "echo", "heavy": True,
            "input_data": {"text": text, "chunks": 1, "delay": delay}}


def _status_events(client, user: str, task: str) -> list[dict]:
    return [e for e in read_events(client, user, task) if e["type"] == "status"]


def _wait_all_ended(user: str, task_ids: list[str], timeout: float) -> dict[str, dict]:
    def ended():
        states = {t: get_state(user, t, 1)["steps"].get(1, {}) for t in task_ids}
        return all(st.get("status") in TERMINAL for st in states.values()) and states

    return wait_until(ended, timeout=timeout, interval=0.2, message="every item ending")


@in_process_pools
def test_items_over_the_window_wait_in_redis_and_run_in_order(
        aiecs_redis, start_worker, submitter_env):
    client = aiecs_redis.client()
    env = {"AIECS_FAIR_WINDOW_HEAVY": "2"}
    submitter_env(**env)
    start_worker(concurrency=8, env=env)  # room for all 8 at once: only the window limits
    user = f"u{uuid.uuid4().hex[:8]}"
    out = submit_batch(user, [_item(0.4, f"item {i}") for i in range(8)])
    ids = [i["task_id"] for i in out["items"]]
    held = [get_state(user, t, 1)["steps"][1].get("held") for t in ids]
    assert held == [None, None] + ["fair"] * 6
    win = window_key("heavy_tasks", user)
    widest = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        widest = max(widest, client.zcard(win))
        states = [get_state(user, t, 1)["steps"][1] for t in ids]
        running = sum(st["status"] == "running" for st in states)
        assert running <= 2, states
        if all(st["status"] in TERMINAL for st in states):
            break
        time.sleep(0.05)  # sampling the window while the batch runs
    assert [st["status"] for st in states] == ["completed"] * 8
    assert widest == 2
    started = [st["started"] for st in states]
    finished = [st["finished"] for st in states]
    # first in, first out: item i + 2 starts once item i or i + 1 ended
    for i in range(2, 8):
        assert started[i] >= min(finished[i - 2], finished[i - 1]) - 0.01, (i, started,
                                                                            finished)
    assert client.zcard(win) == 0 and client.llen(win + ":held") == 0
    assert not client.sismember(backlog_key(PREFIX), win)


@in_process_pools
def test_cancelling_a_held_item_ends_it_at_once(aiecs_redis, start_worker, submitter_env):
    client = aiecs_redis.client()
    env = {"AIECS_FAIR_WINDOW_HEAVY": "1"}
    submitter_env(**env)
    start_worker(concurrency=4, env=env)
    user = f"u{uuid.uuid4().hex[:8]}"
    ids = [i["task_id"] for i in submit_batch(user, [_item(1.0) for _ in range(4)])["items"]]
    assert get_state(user, ids[2], 1)["steps"][1]["held"] == "fair"
    assert cancel(user, ids[2], 1)
    state = get_state(user, ids[2], 1)["steps"][1]
    assert state["status"] == "cancelled"  # now, not when its turn comes
    assert "request" not in client.hgetall(f"aiecs:t:{user}:{ids[2]}:1:state")
    states = _wait_all_ended(user, ids, 30)
    assert [states[t]["status"] for t in ids] == ["completed", "completed", "cancelled",
                                                 "completed"]
    assert [e["status"] for e in _status_events(client, user, ids[2])] == [
        "pending", "cancelled"]  # it never ran
    assert states[ids[3]]["started"] >= states[ids[1]]["finished"] - 0.01


@in_process_pools
def test_a_sigkilled_worker_does_not_leak_window_slots(aiecs_redis, start_worker,
                                                       submitter_env):
    client = aiecs_redis.client()
    env = {"AIECS_FAIR_WINDOW_HEAVY": "2", "AIECS_LEASE_SECONDS": "3"}
    submitter_env(**env)
    doomed = start_worker(concurrency=4, env=env)
    user = f"u{uuid.uuid4().hex[:8]}"
    ids = [i["task_id"] for i in submit_batch(user, [_item(2.0) for _ in range(5)])["items"]]
    wait_until(lambda: all(get_state(user, t, 1)["steps"][1]["status"] == "running"
                           for t in ids[:2]), timeout=20, message="two items running")
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.stop()
    start_worker(concurrency=4, env=env)
    states = _wait_all_ended(user, ids, 90)
    assert [states[t]["status"] for t in ids] == ["completed"] * 5
    for t in ids:  # each ended once
        terminal = [e for e in _status_events(client, user, t) if e["status"] in TERMINAL]
        assert len(terminal) == 1, (t, terminal)
    win = window_key("heavy_tasks", user)
    assert client.zcard(win) == 0 and client.llen(win + ":held") == 0
    assert not client.sismember(backlog_key(PREFIX), win)


# 1,000 heavy items through real workers: a long run (about 2 min under load):
# in the fault suite, which .ci/run runs too
@pytest.mark.faults
def test_another_users_task_starts_within_seconds_behind_1000_heavy_items(
        aiecs_redis, start_worker):
    """The README's heavy deployment (prefork -c2) and the default window (4): user A's
    1,000 queued heavy items (0.2 s each) hold at most 4 places in the heavy queue, so
    user B's task waits behind at most 4 of them: two rounds of A's items (0.4 s) plus
    delivery. Today it waits behind all 1,000 (100 s)."""
    client = aiecs_redis.client()
    start_worker(pool="prefork", concurrency=2, queues="heavy_tasks")
    user_a, user_b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    out = submit_batch(user_a, [_item(0.2, f"a{i}") for i in range(1000)])
    ids = [i["task_id"] for i in out["items"]]
    wait_until(lambda: get_state(user_a, ids[0], 1)["steps"][1]["status"] != "pending",
               timeout=30, message="A's first item starting")
    task_b = f"t{uuid.uuid4().hex[:8]}"
    submitted = time.time()
    submit(TaskRequest(task_name="echo", user_id=user_b, task_id=task_b, step=1, mode="test",
                       service="echo", input_data={"text": "mine", "chunks": 1}), heavy=True)

    def b_running():
        return next((e for e in _status_events(client, user_b, task_b)
                     if e["status"] == "running"), None)

    running = wait_until(b_running, timeout=30, message="B's task starting")
    waited = running["timestamp"] - submitted
    done_a = sum(get_state(user_a, t, 1)["steps"][1]["status"] in TERMINAL for t in ids)
    print(f"\nB's task started {waited:.2f}s after its submission, behind A's "
          f"{1000 - done_a} queued items")
    # bound: W (4) of A's items ahead of it on 2 slots = 2 rounds of 0.2 s, plus margin
    # for delivery on a loaded machine
    assert waited < 4.0
    assert done_a < 900  # A's backlog was still there

    states = _wait_all_ended(user_a, ids, 600)
    assert all(states[t]["status"] == "completed" for t in ids)
    assert all(states[t]["deliveries"] == 1 for t in ids)
    for t in ids[::50]:  # each ended once (sampled: reading 1,000 logs is slow)
        assert [e["status"] for e in _status_events(client, user_a, t)] == [
            "pending", "running", "completed"]
    assert client.zcard(window_key("heavy_tasks", user_a)) == 0


@in_process_pools
def test_cancelling_a_batch_ends_its_held_items_at_once(aiecs_redis, start_worker,
                                                        submitter_env):
    from aiecs_worker.producer.batch import cancel_batch

    client = aiecs_redis.client()
    env = {"AIECS_FAIR_WINDOW_HEAVY": "1"}
    submitter_env(**env)
    start_worker(concurrency=4, env=env)
    user = f"u{uuid.uuid4().hex[:8]}"
    out = submit_batch(user, [_item(5.0) for _ in range(6)])
    ids = [i["task_id"] for i in out["items"]]
    wait_until(lambda: get_state(user, ids[0], 1)["steps"][1]["status"] == "running",
               timeout=20, message="the first item running")
    cancel_batch(user, out["batch_id"])
    held_states = [get_state(user, t, 1)["steps"][1] for t in ids[1:]]
    assert [st["status"] for st in held_states] == ["cancelled"] * 5  # no message to wait for
    states = _wait_all_ended(user, ids, 20)
    assert states[ids[0]]["status"] == "cancelled"  # the running one, stopped
    for t in ids[1:]:
        assert [e["status"] for e in _status_events(client, user, t)] == [
            "pending", "cancelled"]
    win = window_key("heavy_tasks", user)
    wait_until(lambda: client.zcard(win) == 0 and client.llen(win + ":held") == 0
               and not client.sismember(backlog_key(PREFIX), win), timeout=10,
               message="the window and its FIFO emptied")


@in_process_pools
def test_a_backlog_longer_than_the_events_ttl_loses_nothing(aiecs_redis, start_worker,
                                                            submitter_env):
    """Items waiting behind the window keep their state (and arguments) alive: the sweep
    renews their TTLs. Without that, item 3 (released after ~4.5 s) would find its state,
    kept 3 s, gone."""
    env = {"AIECS_FAIR_WINDOW_HEAVY": "1", "AIECS_EVENTS_TTL": "3",
           "AIECS_LEASE_SECONDS": "3"}
    submitter_env(**env)
    start_worker(concurrency=4, env=env)
    user = f"u{uuid.uuid4().hex[:8]}"
    ids = [i["task_id"] for i in submit_batch(user, [_item(1.5) for _ in range(4)])["items"]]
    seen: dict[str, dict] = {}  # an ended item's state expires 3 s later: note it at once

    def all_seen():
        for t in ids:
            st = get_state(user, t, 1)["steps"].get(1)
            if st and st["status"] in TERMINAL:
                seen.setdefault(t, st)
        return len(seen) == len(ids)

    wait_until(all_seen, timeout=40, interval=0.1, message="every item ending")
    assert [seen[t]["status"] for t in ids] == ["completed"] * 4
    assert seen[ids[3]]["started"] - seen[ids[3]]["submitted"] > 3.0  # it waited longer
