"""aiecs on Redis Sentinel at all: a worker, the progress server and beat configured with
Celery's ``sentinel://`` form only (no plain Redis URL anywhere), against a real
deployment (master, replica, three sentinels). The master's death mid-run is the fault
suite's (tests/faults/test_sentinel_failover.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.server.helpers import Recorder, async_wait_until, uid, wait_until
from tests.support.processes import ServerProcess
from tests.support.sentinel import SentinelDeployment

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


@pytest.fixture
def sentinel():
    deployment = SentinelDeployment().start()
    yield deployment
    deployment.close()


def echo(**extra):
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": "via sentinel", "chunks": 2}, **extra}


def test_worker_server_and_beat_run_on_sentinel(sentinel, start_worker, start_server,
                                                start_beat):
    env = {**sentinel.env, "AIECS_SCHEDULE_MIN_PERIOD": "1"}
    server: ServerProcess = start_server(sentinel.url, env=env)
    assert server.health()[0] == 200  # its pub/sub listener hears its probes
    worker = start_worker(redis_url=sentinel.url, env=env)
    # `aiecs health` (the probes' command) finds the broker, the state Redis, the worker's
    # node and loops, and the server through the sentinels
    health = subprocess.run(
        [sys.executable, "-m", "aiecs_worker.cli", "health", "--worker", "--node",
         f"{worker.name}@%h", "--server", server.url],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stdout + health.stderr
    user = uid()
    token = server.token(user)

    async def live_run() -> dict:
        rec = Recorder(server, token)
        await rec.connect()
        try:
            status, out = server.http("POST", "/tasks", echo(), token=token)
            assert status == 202, out
            await rec.subscribe(out["task_id"])
            await async_wait_until(
                lambda: any(e.get("status") in TERMINAL for e in rec.events(out["task_id"])),
                timeout=30, message="the terminal event over Socket.IO")
            return {"out": out, "live": rec.live(), "events": rec.events(out["task_id"])}
        finally:
            await rec.close()

    run = asyncio.run(live_run())
    assert [e["status"] for e in run["events"] if e["type"] == "status"] == [
        "pending", "running", "completed"]
    assert run["live"], "no event was delivered live through the pub/sub manager"
    status, view = server.http("GET", f"/tasks/{run['out']['task_id']}", token=token)
    assert status == 200 and view["result"]["text"] == "via sentinel", view

    # beat (celery-redbeat through the sentinels) runs a schedule made over HTTP
    status, made = server.http("POST", "/schedules", echo(every=1), token=token)
    assert status == 201, made
    start_beat(redis_url=sentinel.url, env=env).wait_lock()

    def two_done():
        status, v = server.http("GET", f"/tasks/{made['task_id']}", token=token)
        return status == 200 and sum(s["status"] == "completed" for s in v["steps"]) >= 2

    wait_until(two_done, timeout=30, message="two scheduled runs")
    # everything lives on the master the sentinels name, the replica has it too
    client = sentinel.client()
    assert client.exists(f"aiecs:t:{user}:{run['out']['task_id']}:log")
    assert client.zscore("aiecs:beat::schedule", f"aiecs:beat:{user}:{made['task_id']}")
    client.close()
