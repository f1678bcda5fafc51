"""Repeated background failures (the workflow sweeper, the lease loop) show at WARNING,
once a minute per kind, and in ``aiecs_background_failures_total{kind}``.

Its own module: a worker consuming the queues (test_flow_limits's module worker) would run
the step this module's test records as a dead process would."""

from __future__ import annotations

from aiecs_core import TaskStatus
from aiecs_worker.producer.flow import submit_workflow
from aiecs_worker.store.events import TaskKeys
from aiecs_worker.store.keys import PREFIX, flows_due_key
from aiecs_worker.store.records import state_redis

from tests.support.events import wait_until
from tests.support.metrics import metrics_url, scrape, total
from tests.support.processes import WorkerProcess
from tests.workflows.test_flow_recovery import _record, _steps


def test_repeated_sweeper_failures_warn_once_count_each_and_spare_other_workflows(
        aiecs_redis, start_worker):
    """A workflow the sweeper cannot advance (its record is corrupt) fails on every
    sweep (each second here): one WARNING line, a counter that counts every failure, and
    the other workflows due still advance (they used to wait behind it forever)."""
    worker = start_worker(queues="nothing_here", env={
        "AIECS_LEASE_SECONDS": "3", "AIECS_METRICS_PORT": "0",
        "AIECS_METRICS_HOST": "127.0.0.1"})
    url = metrics_url(worker.log)
    client = aiecs_redis.client()
    bad = "aiecs:flow:mallory:corrupt"
    client.hset(bad, mapping={"spec": "{not json", "ver": 0, "user": "mallory",
                              "task": "corrupt"})
    client.zadd(flows_due_key(PREFIX), {bad: 0})  # first in line
    submit_workflow("alice", _steps("ignored"), task_id="r1")
    _record("r1", 1, TaskStatus.COMPLETED, {"text": "from step 1"})

    step2 = TaskKeys("alice", "r1").state(2)  # released (this module's other worker may run it)
    wait_until(lambda: state_redis().hget(step2, "released")
               or state_redis().hget(step2, "status") != b"pending",
               timeout=30, message="the sweeper to release step 2 of r1")
    wait_until(lambda: total(scrape(url), "aiecs_background_failures_total",
                             kind="workflow_sweep") >= 4,
               timeout=30, message="four counted sweeper failures")
    lines = [line for line in worker.log().splitlines()
             if "background workflow_sweep failed" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0]
    assert f"advancing workflow {bad}: JSONDecodeError" in lines[0]


def test_a_lease_loop_failing_every_half_second_warns_once_and_counts(redis_server):
    """Redis away: the lease loop fails every 0.5 s (it used to log each at DEBUG only)."""
    worker = WorkerProcess(redis_url=redis_server.url, env={
        "AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1"}).start()
    try:
        url = metrics_url(worker.log)
        redis_server.stop()
        wait_until(lambda: total(scrape(url), "aiecs_background_failures_total",
                                 kind="lease") >= 5,
                   timeout=60, message="five counted lease failures")
        lines = [line for line in worker.log().splitlines()
                 if "background lease failed" in line]
        assert len(lines) == 1, lines
        assert "WARNING" in lines[0] and "renewing this process's lease" in lines[0]
        assert worker.alive()
    finally:
        worker.stop()
        worker.log_path.unlink(missing_ok=True)
