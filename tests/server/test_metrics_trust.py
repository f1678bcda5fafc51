"""Metrics an SRE trusts (issue 19, item 4), on a real worker and a real progress server:

- every status of every declared (queue, mode, service, operation) is 0 from the start, so
  the first count shows in ``rate()``; names nothing declares count as ``unknown`` (30
  made-up operations in raw Celery calls make no new series);
- each process exports only its own families;
- the counters agree with the event logs in Redis after a mixed run, whoever submits:
  ``.delay()`` from a script that loads no metrics, the HTTP API, completions, failures,
  timeouts, cancels of queued and of running executions.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import uuid

from aiecs_worker import app
from aiecs_worker.routing import FAST_TASK

from tests.support.events import read_events, wait_for_event, wait_terminal, wait_until
from tests.support.metrics import by, metrics_url, scrape, total

ENV = {"AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1"}
STATUSES = ("pending", "running", "completed", "failed", "timed_out", "cancelled")
WORKER_ONLY = ("celery_task_duration_seconds", "celery_active_tasks", "aiecs_provider_",
               "aiecs_background_", "aiecs_events_", "aiecs_execution_redeliveries",
               "aiecs_queue_depth", "aiecs_redis_up")


def test_statuses_start_at_zero_and_only_declared_names_make_series(
        aiecs_redis, start_worker, start_server):
    worker = start_worker(pool="threads", concurrency=4, env=ENV)
    url = metrics_url(worker.log)
    s = scrape(url)
    for queue in ("fast_tasks", "heavy_tasks"):
        for status in STATUSES:
            labels = dict(queue=queue, mode="test", service="echo", operation="echo",
                          status=status)
            assert any(lab == labels and v == 0 for lab, v in
                       s["celery_task_executions_total"]), labels
        assert any(lab == dict(queue=queue, mode="test", service="echo", operation="echo",
                               le="+Inf") for lab, _ in s["celery_task_duration_seconds_bucket"])
    series = {tuple(sorted(lab.items())) for lab, _ in s["celery_task_executions_total"]}

    # raw Celery calls naming 30 operations nothing declares
    client = aiecs_redis.client()
    ids = [f"t{uuid.uuid4().hex[:10]}" for _ in range(30)]
    for i, task_id in enumerate(ids):
        app.send_task(FAST_TASK, kwargs=dict(
            task_name=f"made-up-{i}", user_id="mallory", task_id=task_id, step=1, mode="test",
            service=f"nothing-{i}", input_data={}, context={}))
    for task_id in ids:
        assert wait_terminal(client, "mallory", task_id)[0]["status"] == "failed"
    wait_until(lambda: total(scrape(url), "celery_task_executions_total", status="failed")
               == 30, timeout=10, message="30 failures counted")
    s = scrape(url)
    assert {tuple(sorted(lab.items())) for lab, _ in s["celery_task_executions_total"]} \
        == series  # not one new series
    assert total(s, "celery_task_executions_total", queue="fast_tasks", mode="unknown",
                 service="unknown", operation="unknown", status="failed") == 30
    # they failed before their operation started: never RUNNING, in the log or the counts
    assert total(s, "celery_task_executions_total", status="running") == 0
    assert not [e for t in ids for e in read_events(client, "mallory", t)
                if e.get("status") == "running"]
    # nor is invalid input of a declared operation
    bad = f"t{uuid.uuid4().hex[:10]}"
    app.send_task(FAST_TASK, kwargs=dict(
        task_name="echo", user_id="mallory", task_id=bad, step=1, mode="test",
        service="echo", input_data={"chunks": "many"}, context={}))
    assert wait_terminal(client, "mallory", bad)[0]["status"] == "failed"
    assert [e["status"] for e in read_events(client, "mallory", bad)] == ["failed"]
    wait_until(lambda: total(scrape(url), "celery_task_executions_total", operation="echo",
                             status="failed") == 1, timeout=10, message="counted failed")
    assert total(scrape(url), "celery_task_executions_total", status="running") == 0

    # each process exports its own families only
    server = start_server(aiecs_redis.url)
    ss = scrape(server.url + "/metrics")
    assert not [n for n in s if n.startswith("aiecs_server_")]
    assert "aiecs_server_connected_sockets" in ss
    assert not [n for n in ss if n.startswith(WORKER_ONLY)], sorted(ss)
    assert any(lab.get("status") == "pending" and v == 0
               for lab, v in ss["celery_task_executions_total"])


SCRIPT = textwrap.dedent("""
    import json, sys
    from aiecs_worker import execute_task
    from aiecs_worker.ops import metrics
    for task_id, data in json.loads(sys.argv[1]):
        execute_task.delay(task_name="echo", user_id="alice", task_id=task_id, step=1,
                           mode="test", service="echo", input_data=data, context={})
    assert not metrics.loaded(), "this script must not count anything"
""")


def test_counts_agree_with_the_event_logs_whoever_submits(aiecs_redis, start_worker,
                                                         start_server):
    worker = start_worker(pool="threads", concurrency=4, env={
        **ENV, "CELERY_TASK_SOFT_TIME_LIMIT": "2", "CELERY_TASK_TIME_LIMIT": "10"})
    server = start_server(aiecs_redis.url)
    client = aiecs_redis.client()
    wurl, surl = metrics_url(worker.log), server.url + "/metrics"

    # 40 submissions by .delay() from a script that loads no metrics
    slow = {"text": "a b c d", "chunks": 4, "delay": 1.5}  # 6 s: past the 2 s limit
    plan = [(f"py{i}-{uuid.uuid4().hex[:6]}",
             {"text": "one two"} if i < 30 else {"text": "x", "fail": "auth"} if i < 35
             else slow) for i in range(40)]
    out = subprocess.run([sys.executable, "-c", SCRIPT, __import__("json").dumps(plan)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    owned = [("alice", task_id) for task_id, _ in plan]

    # HTTP: 10 completions, 5 queued for later and cancelled before any worker saw them,
    # 2 cancelled while running
    bob = f"bob{uuid.uuid4().hex[:6]}"
    token = server.token(bob)

    def post(data, **extra):
        status, body = server.http("POST", "/tasks", {"mode": "test", "service": "echo",
                                                      "task_name": "echo", "input_data": data,
                                                      **extra}, token=token)
        assert status == 202, body
        owned.append((bob, body["task_id"]))
        return body["task_id"]

    for _ in range(10):
        post({"text": "via http"})
    for task_id in [post({"text": "later"}, countdown=300) for _ in range(5)]:
        assert server.http("DELETE", f"/tasks/{task_id}", token=token)[0] == 202
    for task_id in [post({"text": "a b c d e f", "chunks": 6, "delay": 0.2})
                    for _ in range(2)]:
        wait_for_event(client, bob, task_id, lambda e: e["type"] == "stream")
        assert server.http("DELETE", f"/tasks/{task_id}", token=token)[0] == 202

    for user, task_id in owned:
        wait_terminal(client, user, task_id, timeout=60)
    logged = collections.Counter(
        e["status"] for user, task_id in owned for e in read_events(client, user, task_id)
        if e["type"] == "status")
    assert logged["pending"] == 57 and logged["timed_out"] == 5, logged
    assert logged["cancelled"] == 7 and logged["failed"] == 5, logged

    def counted() -> dict[str, float]:
        out: dict[str, float] = collections.Counter()
        for url in (wurl, surl):
            for status, value in by(scrape(url), "celery_task_executions_total",
                                    "status").items():
                out[status] += value
        return {k: v for k, v in out.items() if v}

    wait_until(lambda: counted() == dict(logged), timeout=15,
               message=f"the counters agree with the logs {dict(logged)}")
    # the queued cancels were counted by the server, which ended them
    server_side = by(scrape(surl), "celery_task_executions_total", "status")
    assert server_side["pending"] == 5 and server_side["cancelled"] == 5, server_side
