"""The gauges a worker's /metrics reads from Redis at scrape time (issue 19, "queue length"
and "metrics" rows): queue depth with kombu's priority lists summed (``LLEN fast_tasks``
reads 0 while aiecs's messages wait in ``fast_tasks\\x06\\x169``), ``aiecs:pending``, the
dead letters, and whether each Redis answers."""

from __future__ import annotations

import socket
import uuid

from aiecs_worker import execute_task

from tests.support.events import wait_until
from tests.support.metrics import metrics_url, scrape, total

ENV = {"AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1"}


def test_queue_depth_pending_and_dead_letters(aiecs_redis, start_worker):
    from aiecs_worker.store.gauges import priority_lists

    # a worker of the heavy queue only: what is sent to the fast queue waits there
    worker = start_worker(pool="threads", concurrency=1, queues="heavy_tasks", env=ENV)
    url = metrics_url(worker.log)
    client = aiecs_redis.client()
    s = scrape(url)
    assert total(s, "aiecs_queue_depth", queue="fast_tasks") == 0
    assert total(s, "aiecs_redis_up", role="broker") == 1
    assert total(s, "aiecs_redis_up", role="state") == 1

    for _ in range(5):
        execute_task.delay(task_name="echo", user_id="alice", task_id=f"t{uuid.uuid4().hex[:8]}",
                           step=1, mode="test", service="echo", input_data={"text": "a"},
                           context={})
    # the messages sit in a priority list, not in the list named after the queue
    assert client.llen("fast_tasks") == 0
    assert sum(client.llen(name) for name in priority_lists("fast_tasks")) == 5
    s = scrape(url)
    assert total(s, "aiecs_queue_depth", queue="fast_tasks") == 5
    assert total(s, "aiecs_queue_depth", queue="heavy_tasks") == 0
    assert total(s, "aiecs_pending_executions") == 5

    # a malformed message on the consumed queue is dead-lettered, and counted
    client.lpush("heavy_tasks", b"this is not a message")
    wait_until(lambda: client.llen("aiecs:deadletter") == 1, timeout=30,
               message="the malformed message dead-lettered")
    assert total(scrape(url), "aiecs_deadletter_length") == 1


def test_a_redis_that_does_not_answer_reads_down(monkeypatch):
    """Nothing listens at the URLs: each Redis reads 0, and the scrape still answers
    (fast: the gauges use a short timeout)."""
    from aiecs_worker.settings import get_settings
    from aiecs_worker.store.gauges import RedisGauges

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    monkeypatch.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/1")
    get_settings.cache_clear()
    try:
        families = {f.name: f for f in RedisGauges().collect()}
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    up = {s.labels["role"]: s.value for s in families["aiecs_redis_up"].samples}
    assert up == {"broker": 0, "state": 0}
    assert "aiecs_queue_depth" not in families and "aiecs_pending_executions" not in families
