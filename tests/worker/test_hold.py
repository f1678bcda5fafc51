"""Far-future work is held in Redis, not in workers (issue 16, row 2): a submission due
later than AIECS_SCHEDULE_HORIZON has no broker message until the workers' sweep
releases it; cancelling it frees everything it held; a worker's memory stays flat with
10,000 of them scheduled 30 days ahead."""

from __future__ import annotations

import time
import uuid

import pytest
from aiecs_core import TaskRequest
from aiecs_worker import execute_task
from aiecs_worker.producer.control import cancel, get_state, submit
from aiecs_worker.store.keys import PREFIX, due_key, pending_key

from tests.support.events import TERMINAL, read_events, wait_until
from tests.support.processes import in_process_pools

DAY = 86_400
QUEUES = ("fast_tasks", "heavy_tasks")


def _kwargs(user: str, task: str, **input_data) -> dict:
    return {"task_name": "echo", "user_id": user, "task_id": task, "step": 1, "mode": "test",
            "service": "echo", "input_data": {"text": "later", "chunks": 1, **input_data}}


def _broker_messages(client) -> int:
    """Messages in the broker: its queues (with kombu's priority sub-queues) and the
    unacknowledged ones a worker holds (ETA messages included)."""
    n = sum(client.llen(q + sep) for q in QUEUES
            for sep in ("", "\x06\x163", "\x06\x166", "\x06\x169"))
    return n + client.hlen("unacked")


def _ids() -> tuple[str, str]:
    return f"u{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"


def test_a_far_future_submission_has_no_broker_message_and_outlives_its_eta(aiecs_redis):
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.apply_async(kwargs=_kwargs(user, task), countdown=30 * DAY)
    user2, task2 = _ids()
    submit(TaskRequest.model_validate(_kwargs(user2, task2)), countdown=20 * DAY)

    assert _broker_messages(client) == 0  # today: both messages sit in fast_tasks
    for u, t, ahead in ((user, task, 30 * DAY), (user2, task2, 20 * DAY)):
        state_key = f"aiecs:t:{u}:{t}:1:state"
        state = get_state(u, t, 1)["steps"][1]
        assert state["status"] == "pending" and state["held"] == "due"
        assert client.zscore(due_key(PREFIX), state_key) is not None
        assert client.zscore(pending_key(PREFIX), state_key) is None  # the reaper must not send it
        # state and log live until the eta, then AIECS_EVENTS_TTL (1 day by default)
        assert client.ttl(state_key) > ahead
        assert client.ttl(f"aiecs:t:{u}:{t}:log") > ahead


def test_cancelling_a_held_submission_frees_what_it_held(aiecs_redis):
    client = aiecs_redis.client()
    user, task = _ids()
    execute_task.apply_async(kwargs=_kwargs(user, task, text="x" * 100_000), countdown=7 * DAY)
    state_key = f"aiecs:t:{user}:{task}:1:state"
    assert client.hexists(state_key, "request")

    assert cancel(user, task, 1)
    state = get_state(user, task, 1)["steps"][1]
    assert state["status"] == "cancelled"  # at once, not in seven days
    assert client.zscore(due_key(PREFIX), state_key) is None
    assert not client.hexists(state_key, "request")  # the 100 KB input is gone
    assert not client.hexists(state_key, "held")
    assert client.ttl(state_key) <= 86_400  # kept AIECS_EVENTS_TTL from now, no longer
    assert _broker_messages(client) == 0
    statuses = [e["status"] for e in read_events(client, user, task) if e["type"] == "status"]
    assert statuses == ["pending", "cancelled"]


@in_process_pools
def test_a_held_submission_is_released_by_the_sweep_and_runs_on_time(
        aiecs_redis, start_worker, submitter_env):
    client = aiecs_redis.client()
    env = {"CELERY_VISIBILITY_TIMEOUT": "10", "AIECS_SCHEDULE_HORIZON": "2",
           "AIECS_LEASE_SECONDS": "3"}
    submitter_env(**env)
    start_worker(env=env)
    user, task = _ids()
    before = time.time()
    execute_task.apply_async(kwargs=_kwargs(user, task), countdown=6)
    state = get_state(user, task, 1)["steps"][1]
    assert state["held"] == "due" and _broker_messages(client) == 0

    final = wait_until(lambda: (st := get_state(user, task, 1)["steps"][1])["status"]
                       in TERMINAL and st, timeout=40, message="the held execution")
    assert final["status"] == "completed"
    assert final["started"] >= before + 6 - 0.05
    assert final["started"] < before + 6 + 5  # released within the sweep's period
    assert client.zcard(due_key(PREFIX)) == 0
    statuses = [e["status"] for e in read_events(client, user, task) if e["type"] == "status"]
    assert statuses == ["pending", "running", "completed"]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# 10,000 held tasks over six visibility timeouts: a long run (about 1 min):
# in the fault suite, which .ci/run runs too
@pytest.mark.faults
def test_worker_memory_stays_flat_with_10000_tasks_30_days_ahead(aiecs_redis, start_worker):
    """Today the broker hands every ETA message to the worker, which keeps it (and on
    Redis gets another copy every visibility timeout): 10,000 × 2 KB of context grew a
    worker by hundreds of MB. Held in Redis, nothing reaches the worker."""
    client = aiecs_redis.client()
    w = start_worker(env={"CELERY_VISIBILITY_TIMEOUT": "2", "AIECS_LEASE_SECONDS": "3"})
    pid = w.proc.pid
    time.sleep(2)  # the worker settles after its start (imports, pools)
    start_rss = _rss_mb(pid)
    context = {"notes": "c" * 2048}
    began = time.monotonic()
    for i in range(10_000):
        execute_task.apply_async(kwargs={**_kwargs("memuser", f"far{i}"), "context": context},
                                 countdown=30 * DAY)
    submitted_in = time.monotonic() - began
    assert client.zcard(due_key(PREFIX)) == 10_000
    # several visibility timeouts (2 s) and sweeps (1 s) go by
    samples = []
    end = time.monotonic() + 12
    while time.monotonic() < end:
        samples.append(_rss_mb(pid))
        assert _broker_messages(client) == 0
        time.sleep(1)  # sampling the worker's memory once a second
    growth = max(samples) - start_rss
    print(f"\nsubmitted 10,000 in {submitted_in:.1f}s; worker RSS {start_rss:.1f} MB -> "
          f"max {max(samples):.1f} MB (growth {growth:.1f} MB) over 12 s")
    assert growth < 30, (start_rss, samples)
    assert client.zcard(due_key(PREFIX)) == 10_000  # none released early
