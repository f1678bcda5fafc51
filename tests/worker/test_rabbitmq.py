"""RabbitMQ as broker (``CELERY_BROKER_URL=amqp://...``), Redis for state and events.

Against the machine's RabbitMQ, in a private vhost per test (``tests/support/rabbitmq``);
the state Redis is the session's. Submissions come from a client process through the
public API (``execute_task.delay`` / ``apply_async``), as an application would make them.
A worker's main process SIGKILLed mid-run, under both pools, is a fault run
(``tests/faults/test_rabbitmq_faults.py``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid

import pytest
from aiecs_core import ConfigurationError

from tests.faults.harness import send_from_client
from tests.support.events import read_events, wait_terminal, wait_until

USER = "rabbit"
FAST = "aiecs.tasks.worker.execute_task"
DEADLETTER = "aiecs:deadletter"


def call(task_id: str, **inp) -> dict:
    inp.setdefault("text", "one two three four")
    return dict(task_name="echo", user_id=USER, task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def new_id() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


def state(client, task_id: str) -> dict:
    raw = client.hgetall(f"aiecs:t:{USER}:{task_id}:1:state")
    return {k.decode(): v.decode() for k, v in raw.items()}


def on_rabbit(start_worker, vhost, **kwargs):
    """A worker whose broker is the test's vhost (state and results: the session Redis)."""
    env = {"CELERY_BROKER_URL": vhost.url, **kwargs.pop("env", {})}
    return start_worker(env=env, **kwargs)


def test_settings_accept_amqp_and_require_a_redis_for_state():
    from aiecs_worker.settings import load_settings

    s = load_settings(celery_broker_url="amqp://guest:guest@localhost:5672//",
                      redis_url="redis://localhost:6379/1")
    assert s.broker_is_amqp
    assert s.result_backend == "redis://localhost:6379/1"  # not the broker
    assert s.state_redis_url == "redis://localhost:6379/1"
    with pytest.raises(ConfigurationError, match="REDIS_URL is required"):
        load_settings(celery_broker_url="amqp://localhost//", redis_url=None)
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        load_settings(celery_broker_url="amqp://localhost//", redis_url="amqp://localhost//")
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL"):
        load_settings(celery_broker_url="sqs://queue")


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_tasks_complete_through_rabbitmq(aiecs_redis, start_worker, rabbit_vhost, pool):
    from aiecs_worker import execute_task

    on_rabbit(start_worker, rabbit_vhost, pool=pool, concurrency=2)
    ids = [new_id() for _ in range(4)]
    send_from_client([call(t, chunks=3) for t in ids], broker_url=rabbit_vhost.url,
                     redis_url=aiecs_redis.url)
    client = aiecs_redis.client()
    for t in ids:
        terminal, events = wait_terminal(client, USER, t, timeout=60)
        assert terminal["status"] == "completed", terminal
        assert [e["type"] for e in events].count("stream") == 3
        # the result is in Celery's result backend: the state Redis, not the broker
        result = execute_task.AsyncResult(state(client, t)["celery_id"])
        assert result.get(timeout=10)["result"]["chunks"] == 3
    assert rabbit_vhost.queue_depth("fast_tasks") == 0


def test_priorities_are_honoured(aiecs_redis, start_worker, rabbit_vhost):
    """A queue filled while no worker runs is drained highest priority first."""
    priorities = [3, 7, 1, 9, 5, 0, 8, 4, 6, 2]
    ids = {p: new_id() for p in priorities}
    send_from_client([{**call(ids[p], chunks=1), "__options__": {"priority": p}}
                      for p in priorities], broker_url=rabbit_vhost.url,
                     redis_url=aiecs_redis.url)
    assert rabbit_vhost.queue_depth("fast_tasks") == len(priorities)
    on_rabbit(start_worker, rabbit_vhost, pool="threads", concurrency=1)
    client = aiecs_redis.client()
    for t in ids.values():
        wait_terminal(client, USER, t, timeout=60)
    started = sorted(priorities, key=lambda p: float(state(client, ids[p])["started"]))
    assert started == sorted(priorities, reverse=True)


def test_waiting_executions_are_not_sent_again(aiecs_redis, start_worker, rabbit_vhost):
    """With Redis as broker the sweeper re-sends an execution still PENDING after
    2 x CELERY_VISIBILITY_TIMEOUT whose queue is empty (its message was lost in transit).
    RabbitMQ cannot lose it, and its queues are not Redis lists: nothing is re-sent, however
    long the executions wait."""
    ids = [new_id() for _ in range(3)]
    send_from_client([call(t) for t in ids], broker_url=rabbit_vhost.url,
                     redis_url=aiecs_redis.url)
    assert rabbit_vhost.queue_depth("fast_tasks") == 3
    # a worker that sweeps every second but does not consume fast_tasks
    on_rabbit(start_worker, rabbit_vhost, queues="heavy_tasks",
              env={"CELERY_VISIBILITY_TIMEOUT": "1", "AIECS_LEASE_SECONDS": "3"})
    client = aiecs_redis.client()
    due = max(float(state(client, t)["submitted"]) for t in ids) + 2  # 2 x the timeout

    def renewal() -> float:
        """When the worker last renewed its lease (ZADD: renewal time + 3 s), which it
        does right before each sweep."""
        owners = client.zrange("aiecs:owners", 0, -1, withscores=True)
        return max((score / 1000 - 3 for _, score in owners), default=0.0)

    first = wait_until(lambda: (r := renewal()) > due and r, timeout=60,
                       message="a lease renewal past the due time")
    # the next renewal comes after the sweep that followed ``first`` has ended
    wait_until(lambda: renewal() > first + 0.5, timeout=30, message="the next renewal")
    assert rabbit_vhost.queue_depth("fast_tasks") == 3
    assert [state(client, t)["status"] for t in ids] == ["pending"] * 3


def test_sigkilled_prefork_child_is_redelivered_and_completes_once(
        aiecs_redis, start_worker, rabbit_vhost):
    worker = on_rabbit(start_worker, rabbit_vhost, pool="prefork", concurrency=1)
    task_id = new_id()
    send_from_client([call(task_id, text="x" * 24, chunks=24, delay=0.2)],
                     broker_url=rabbit_vhost.url, redis_url=aiecs_redis.url)
    client = aiecs_redis.client()
    wait_until(lambda: any(e["type"] == "stream" for e in read_events(client, USER, task_id)),
               timeout=60, message="the first streamed chunk")
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)
    terminal, events = wait_terminal(client, USER, task_id, timeout=60)
    assert terminal["status"] == "completed"
    running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
    assert len(running) == 2
    assert "redelivered after worker loss (delivery 2)" in running[1]["message"]
    assert sum(e["type"] == "status" and e["status"] == "completed" for e in events) == 1


def test_threads_worker_consumes_again_after_its_connections_close(
        aiecs_redis, start_worker, rabbit_vhost):
    """RabbitMQ closes the connection while eight executions run (a broker restart, as the
    worker sees it). Their messages go back to the queue; the copies the worker gets back
    are dropped because this process is still executing them (each runs once: one RUNNING
    event, one delivery); then, as the executions received after the reconnect are
    acknowledged, Celery raises its prefetch count again from the consumer's thread (see
    aiecs_worker.runner.upstream_fixes: from pool threads it deadlocked the AMQP connection and the
    worker took no message again), and the rest of the queue drains."""
    worker = on_rabbit(start_worker, rabbit_vhost, pool="threads", concurrency=8)
    first = [new_id() for _ in range(8)]
    rest = [new_id() for _ in range(32)]
    # the last of the eight ends first: its pool thread takes the returned copy of the
    # first while that one still runs here. The seven run 12 s: the sender is a process
    # of its own, and on a loaded machine it has been seen to exit 4 s after its sends
    send_from_client([call(t, chunks=8, delay=1.5) for t in first[:-1]]
                     + [call(first[-1], chunks=4, delay=0.3)]
                     + [call(t, chunks=1, delay=0.02) for t in rest],
                     broker_url=rabbit_vhost.url, redis_url=aiecs_redis.url)
    client = aiecs_redis.client()
    def all_running() -> bool:
        statuses = [state(client, t).get("status") for t in first]
        assert not {"completed", "failed"} & set(statuses[:-1]), \
            f"one of the seven long executions ended before all eight ran: {statuses}"
        return all(s == "running" for s in statuses)

    wait_until(all_running, timeout=60, message="the first eight executions running")
    rabbit_vhost.close_connections()
    for t in first + rest:
        terminal, events = wait_terminal(client, USER, t, timeout=60)
        assert terminal["status"] == "completed", (t, terminal)
        running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
        assert len(running) == 1, (t, [e["message"] for e in running])
        assert state(client, t)["deliveries"] == "1"
    assert "this delivery is a duplicate, dropped" in worker.log()
    assert worker.alive()


def _publish_raw(vhost, body: bytes, headers: dict, content_type="application/json") -> None:
    """Put one message on ``fast_tasks`` as any AMQP client could, bypassing Celery."""
    from aiecs_worker.app import app
    from kombu import Connection

    [fast] = [q for q in app.conf.task_queues if q.name == "fast_tasks"]
    with Connection(vhost.url) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=fast.exchange, routing_key="fast_tasks",
                         declare=[fast], headers=headers, content_type=content_type,
                         content_encoding="utf-8")


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_poison_is_dead_lettered_under_rabbitmq(aiecs_redis, start_worker, rabbit_vhost, pool):
    """Malformed messages go to ``aiecs:deadletter`` in the state Redis, with their reason;
    one naming a routable execution ends it FAILED; the worker serves the next task."""
    victim = new_id()
    kwargs = call(victim)
    good = {"lang": "py", "task": FAST, "id": str(uuid.uuid4())}
    _publish_raw(rabbit_vhost, b"{not json", good)
    _publish_raw(rabbit_vhost, base64.b64encode(b"\x80\x04K\x01."), good,
                 content_type="application/x-python-serialize")
    _publish_raw(rabbit_vhost, json.dumps({"a": 1}).encode(), good)
    _publish_raw(rabbit_vhost, json.dumps([[], {}, None]).encode(), {"lang": "py"})
    _publish_raw(rabbit_vhost, json.dumps([[], kwargs, None]).encode(),
                 {**good, "timelimit": "soon"})
    on_rabbit(start_worker, rabbit_vhost, pool=pool, concurrency=2)
    healthy = new_id()
    send_from_client([call(healthy)], broker_url=rabbit_vhost.url, redis_url=aiecs_redis.url)

    client = aiecs_redis.client()
    terminal, _ = wait_terminal(client, USER, healthy, timeout=60)
    assert terminal["status"] == "completed"
    entries = wait_until(lambda: (lambda xs: xs if len(xs) >= 5 else None)(
        [json.loads(x) for x in client.lrange(DEADLETTER, 0, -1)]), timeout=30,
        message="five dead-lettered messages")
    reasons = " | ".join(e["reason"] for e in entries)
    assert "does not decode" in reasons
    assert "refused (this worker accepts JSON only)" in reasons
    assert "[args, kwargs, embed]" in reasons
    assert "no 'task' header" in reasons
    assert "header 'timelimit'" in reasons
    assert all(e["queue"] == "fast_tasks" and e["layer"] == "consumer" for e in entries)
    # the routable one ended its (unstarted) execution FAILED, with the reason
    terminal, _ = wait_terminal(client, USER, victim, timeout=10)
    assert terminal["status"] == "failed"
    assert "malformed broker message" in terminal["error"]["message"]
    # acknowledged: nothing is left in the queue or comes back
    assert rabbit_vhost.queue_depth("fast_tasks") == 0
