"""A real worker's /metrics after real tasks: the specification's three Grafana queries
(section 7.1) have their series, under the threads pool and under prefork (where the
tasks run in pool children and the main process serves their sum)."""

from __future__ import annotations

import uuid

import pytest
from aiecs_worker import execute_task

from tests.support.events import wait_for_event, wait_terminal, wait_until
from tests.support.metrics import by, histogram_quantile, metrics_url, scrape, total

ENV = {"AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1"}


def submit(**input_data) -> str:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(task_name="echo", user_id="alice", task_id=task_id, step=1,
                       mode="test", service="echo", input_data=input_data, context={})
    return task_id


@pytest.mark.parametrize("pool", ["threads", "prefork", "asyncio"])
def test_the_specification_queries_have_their_series(aiecs_redis, start_worker, pool):
    worker = start_worker(pool=pool, concurrency=2, env=ENV)
    url = metrics_url(worker.log)
    client = aiecs_redis.client()

    # a slow one first: it is an active task while it runs
    slow = submit(text="slow one", chunks=4, delay=0.5)
    wait_for_event(client, "alice", slow, lambda e: e["type"] == "stream")
    wait_until(lambda: total(scrape(url), "celery_active_tasks") == 1, timeout=10,
               message="celery_active_tasks == 1 while the slow task runs")

    done = [submit(text="one two three") for _ in range(2)]
    failed = [submit(text="x", fail="auth") for _ in range(2)]
    for task_id in [slow, *done]:
        assert wait_terminal(client, "alice", task_id)[0]["status"] == "completed"
    for task_id in failed:
        assert wait_terminal(client, "alice", task_id)[0]["status"] == "failed"

    def counted() -> bool:
        s = scrape(url)
        return total(s, "celery_task_executions_total", status="completed") == 3 and \
            total(s, "celery_task_executions_total", status="failed") == 2
    wait_until(counted, timeout=10, message="3 completed and 2 failed executions counted")
    s = scrape(url)

    # sum(rate(celery_task_executions_total[5m])) by (status)
    # (pending: counted by the worker as it begins what this process, which loaded no
    # metrics, submitted; every status is there from the start)
    statuses = by(s, "celery_task_executions_total", "status")
    assert statuses == {"pending": 5.0, "running": 5.0, "completed": 3.0, "failed": 2.0,
                        "timed_out": 0.0, "cancelled": 0.0}, statuses
    assert total(s, "celery_task_executions_total", queue="fast_tasks", mode="test",
                 service="echo", operation="echo") == 15

    # histogram_quantile(0.95, sum by (le) (rate(celery_task_duration_seconds_bucket[5m])))
    assert total(s, "celery_task_duration_seconds_count", operation="echo") == 5
    p95 = histogram_quantile(0.95, s, "celery_task_duration_seconds")
    assert 0.5 <= p95 <= 5.0, p95  # the slow task took about 2 s of the five
    assert total(s, "celery_task_duration_seconds_sum") >= 2.0

    # celery_active_tasks
    assert "celery_active_tasks" in s and total(s, "celery_active_tasks") == 0

    # the provider's: every attempt, its errors by type, its latency, its tokens
    assert total(s, "aiecs_provider_requests_total", provider="echo", operation="echo") == 5
    assert by(s, "aiecs_provider_errors_total", "error_type") == {"AuthenticationError": 2.0}
    assert total(s, "aiecs_provider_call_duration_seconds_count", provider="echo") == 5
    assert total(s, "aiecs_provider_tokens_total", model="echo-1", direction="input") == 8
    assert total(s, "aiecs_provider_calls_in_flight") == 0
    # each process that ran tasks reports its memory
    assert total(s, "aiecs_process_resident_memory_bytes") > 10_000_000
    if pool == "prefork":
        pids = {lab["pid"] for lab, _ in s["aiecs_process_resident_memory_bytes"]}
        assert pids & set(map(str, worker.children())), (pids, worker.children())


@pytest.mark.faults
def test_a_killed_child_leaves_the_gauges_and_keeps_its_counts(aiecs_redis, start_worker):
    """A prefork child SIGKILLed mid-task never runs its exit hook: the next scrape finds
    it gone and drops its gauges (active tasks, calls in flight) from the sum."""
    import os
    import signal

    # its redelivery then ends FAILED at once, without running again
    worker = start_worker(pool="prefork", concurrency=1,
                          env={**ENV, "AIECS_MAX_DELIVERIES": "1"})
    url = metrics_url(worker.log)
    client = aiecs_redis.client()
    slow = submit(text="a b c d", chunks=4, delay=30)
    wait_for_event(client, "alice", slow, lambda e: e["type"] == "status"
                   and e["status"] == "running")
    wait_until(lambda: total(scrape(url), "celery_active_tasks") == 1, timeout=10,
               message="the slow task active")
    assert total(scrape(url), "aiecs_provider_calls_in_flight") == 1
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: child not in worker.children(), timeout=20, message="child gone")
    s = scrape(url)
    assert total(s, "celery_active_tasks") == 0
    assert total(s, "aiecs_provider_calls_in_flight") == 0
    assert total(s, "celery_task_executions_total", status="running") == 1
    assert str(child) not in {lab["pid"] for lab, _ in s["aiecs_process_resident_memory_bytes"]}
    assert wait_terminal(client, "alice", slow)[0]["status"] == "failed"
    wait_until(lambda: total(scrape(url), "celery_task_executions_total", status="failed")
               == 1, timeout=10, message="the redelivery counted failed")
    s = scrape(url)
    assert total(s, "celery_active_tasks") == 0
    # the redelivery is counted, once; refused (out of deliveries), it is not running again
    assert total(s, "aiecs_execution_redeliveries_total", queue="fast_tasks") == 1
    assert total(s, "celery_task_executions_total", status="running") == 1
    assert total(s, "celery_task_executions_total", status="pending") == 1


def test_metrics_listen_on_loopback_unless_configured(aiecs_redis, start_worker):
    """Issue 16 row 11: the unauthenticated metrics endpoint listened on 0.0.0.0."""
    import socket

    worker = start_worker(pool="threads", concurrency=1, env={"AIECS_METRICS_PORT": "0"})
    url = metrics_url(worker.log)
    assert url.startswith("http://127.0.0.1:"), url
    assert total(scrape(url), "celery_active_tasks") == 0  # served, on loopback
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    # from another interface of this machine, nothing listens
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        address = None
    finally:
        probe.close()
    if address and not address.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()


def test_the_metrics_url_is_printed_at_celerys_default_log_level(aiecs_redis):
    """Issue 21: `AIECS_METRICS_PORT=0` picks a port, logged at INFO only, and Celery's
    default level is WARNING: nothing said where the metrics were."""
    from tests.support.processes import WorkerProcess

    worker = WorkerProcess(redis_url=aiecs_redis.url, env=ENV, loglevel="WARNING",
                           concurrency=1)
    worker.spawn()
    try:
        url = metrics_url(worker.log)
        assert "aiecs worker: metrics served on http://127.0.0.1:" in worker.log()
        assert total(scrape(url), "celery_active_tasks") == 0
    finally:
        worker.close()
