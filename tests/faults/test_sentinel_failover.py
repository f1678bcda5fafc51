"""Redis Sentinel failover mid-run: the master is SIGKILLed while executions run, the
sentinels promote the replica, and every client (broker, result backend, state, events,
leases) follows it by itself. Every execution must end exactly once: 0 lost, 0
duplicated, 0 stuck. The time from the kill to the first execution that ended after it
is printed and recorded with the run's counts (test-output/faults/results.jsonl) for
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import redis

from tests.faults.harness import CONCURRENCY, POOLS, REPORT, USER, FaultRun
from tests.server.helpers import Recorder, async_wait_until
from tests.support.events import TERMINAL
from tests.support.sentinel import MASTER, SentinelDeployment

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

N = int(os.environ.get("AIECS_SENTINEL_FAULT_N", "300"))


@pytest.fixture
def sentinel(monkeypatch):
    deployment = SentinelDeployment().start()
    # the client process that submits (tests/faults/sender.py) inherits it
    monkeypatch.setenv("AIECS_SENTINEL_MASTER", MASTER)
    yield deployment
    deployment.close()


def _terminal(client, ids: list[str]) -> set[str]:
    pipe = client.pipeline()
    for t in ids:
        pipe.hget(f"aiecs:t:{USER}:{t}:1:state", "status")
    return {t for t, st in zip(ids, pipe.execute(), strict=True)
            if st and st.decode() in TERMINAL}


def _first_done(deployment: SentinelDeployment, ids: list[str], before: set[str],
                t_kill: float, timeout: float = 120.0) -> float:
    """Seconds from the kill until the new master holds an execution ended that had not
    ended on the old one (polled every 50 ms through the sentinels)."""
    client = deployment.client()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if _terminal(client, ids) - before:
                    return round(time.time() - t_kill, 2)
            except redis.RedisError:  # no master yet
                pass
            time.sleep(0.05)
        return float("nan")
    finally:
        client.close()


#: A message the master took with it (its LPUSH, or the BRPOP that handed it out, not yet
#: on the replica) leaves a PENDING record with an empty queue: the workers' sweep sends
#: it again after 2 x CELERY_VISIBILITY_TIMEOUT (10 minutes by default; 60 s here, so
#: the run counts that recovery instead of waiting for it).
VISIBILITY = "30"


@pytest.mark.parametrize("pool", POOLS)
def test_sentinel_master_sigkilled_mid_run(sentinel, start_worker, pool):
    start_worker(redis_url=sentinel.url, pool=pool, concurrency=CONCURRENCY[pool],
                 env={**sentinel.env, "CELERY_VISIBILITY_TIMEOUT": VISIBILITY})
    run = FaultRun(sentinel, N)  # type: ignore[arg-type] - .url and .client() suffice
    t0 = time.monotonic()
    run.send(delay=(0.05, 0.25), chunks=2)
    run.wait_started(20)
    old = sentinel.master.client()
    before = _terminal(old, run.ids)
    old.close()
    t_kill = time.time()
    sentinel.kill_master()
    sentinel.wait_failover()  # the sentinels' view: clients find out on their own
    failover = round(time.time() - t_kill, 2)
    first_done = _first_done(sentinel, run.ids, before, t_kill)
    run.settle(timeout=240)
    tally = run.tally(f"Sentinel master SIGKILL ({pool})", time.monotonic() - t0)
    with open(REPORT / "sentinel.jsonl", "a") as f:
        f.write(json.dumps({"pool": pool, "sent": N, "failover_s": failover,
                            "kill_to_first_done_s": first_done, **tally.row()}) + "\n")
    print(f"\n{pool}: replica promoted {failover}s after the kill; first execution done "
          f"{first_done}s after it; {tally.row()}")
    assert tally.ok, f"{tally.row()}\n" + "\n".join(tally.details[:20])
    assert tally.completed_once == tally.sent


def test_progress_server_follows_the_failover(sentinel, start_worker, start_server):
    """The progress server's log client and Socket.IO listener follow the new master:
    /healthz is 200 again, and a task submitted after the failover is delivered live to a
    client that stayed connected through it."""
    server = start_server(sentinel.url, env=sentinel.env)
    start_worker(redis_url=sentinel.url, env=sentinel.env)
    token = server.token(USER)

    async def scenario() -> dict:
        rec = Recorder(server, token)
        await rec.connect()
        try:
            t_kill = time.time()
            sentinel.kill_master()
            sentinel.wait_failover()
            await async_wait_until(lambda: server.health()[0] == 200, timeout=60,
                                   interval=0.2, message="/healthz 200 after the failover")
            healthy = round(time.time() - t_kill, 2)
            status, out = server.http("POST", "/tasks", {
                "mode": "test", "service": "echo", "task_name": "echo",
                "input_data": {"text": "after", "chunks": 2}}, token=token)
            assert status == 202, out
            await async_wait_until(
                lambda: any(e.get("task_id") == out["task_id"] and e.get("status") in TERMINAL
                            for e in rec.live()),
                timeout=60, message="the new task's terminal event, live")
            return {"healthy_after_s": healthy, "done_after_s": round(time.time() - t_kill, 2)}
        finally:
            await rec.close()

    result = asyncio.run(scenario())
    print(f"\nprogress server: {result}")
    REPORT.mkdir(parents=True, exist_ok=True)
    with open(REPORT / "sentinel.jsonl", "a") as f:
        f.write(json.dumps({"scenario": "Sentinel master SIGKILL (progress server)",
                            **result}) + "\n")
