"""Batches on real Redis and real worker processes: counts, events, results, cancel."""

from __future__ import annotations

import pytest
from aiecs_core import TaskEvent
from aiecs_worker.producer.batch import cancel_batch, get_batch, submit_batch
from aiecs_worker.producer.groups import GroupError

from tests.support.events import read_events, wait_until


def recorded(client) -> list[bytes]:
    """Executions, batches, workflows and messages in Redis (not a worker's lease)."""
    return [k for pattern in ("aiecs:t:*", "aiecs:batch:*", "aiecs:flow:*", "*_tasks*")
            for k in client.keys(pattern)]


def echo(text: str, **extra) -> dict:
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": text, **extra}}


def finished(user: str, batch_id: str, timeout: float = 40.0) -> dict:
    return wait_until(lambda: (b := get_batch(user, batch_id)) and b["finished"] and b,
                      timeout=timeout, message=f"batch {batch_id} to finish")


def test_batch_all_complete_with_events_and_results(aiecs_redis, worker):
    out = submit_batch("alice", [echo(f"item {i}") for i in range(20)], batch_id="b1")
    assert out["total"] == 20 and out["items"][3] == {"task_id": "b1.3", "step": 1}
    batch = finished("alice", "b1")
    assert batch["status"] == "completed" and not batch["partial_failure"]
    assert batch["counts"] == {"total": 20, "completed": 20, "failed": 0, "timed_out": 0,
                               "cancelled": 0, "done": 20}
    assert [i["result"]["text"] for i in batch["items"]] == [f"item {i}" for i in range(20)]
    client = aiecs_redis.client()
    # the batch's own log: numbered like a task's, one event per item plus the first
    events = read_events(client, "alice", "b1")
    for e in events:
        TaskEvent.model_validate(e)
    assert [e["seq"] for e in events] == list(range(1, 22))
    assert events[0]["status"] == "pending" and events[-1]["type"] == "status"
    assert events[-1]["status"] == "completed" and events[-1]["result"]["completed"] == 20
    assert [e["result"]["done"] for e in events[1:]] == list(range(1, 21))
    # each item is an ordinary execution with its own log
    item = read_events(client, "alice", "b1.7")
    assert [e["status"] for e in item if e["type"] == "status"] == [
        "pending", "running", "completed"]


def test_partial_failure_is_never_success(aiecs_redis, worker):
    items = [echo("ok"), echo("bad", fail="invalid"), echo("ok 2")]
    submit_batch("alice", items, batch_id="b2")
    batch = finished("alice", "b2")
    assert batch["status"] == "failed" and batch["partial_failure"]
    assert batch["counts"]["completed"] == 2 and batch["counts"]["failed"] == 1
    assert [(p["task_id"], p["status"]) for p in batch["problems"]] == [("b2.1", "failed")]
    assert batch["problems"][0]["error"]["type"] == "InvalidRequestError"
    last = read_events(aiecs_redis.client(), "alice", "b2")[-1]
    assert last["status"] == "failed" and last["message"].startswith("partial failure")


def test_bad_item_refuses_whole_batch_before_anything_runs(aiecs_redis):
    client = aiecs_redis.client()
    with pytest.raises(GroupError, match="item 1: .*text"):
        submit_batch("alice", [echo("ok"), {"mode": "test", "service": "echo",
                                            "task_name": "echo", "input_data": {}}],
                     batch_id="b3")
    with pytest.raises(GroupError, match="item 0: ServiceNotFoundError"):
        submit_batch("alice", [{"mode": "test", "service": "nope", "task_name": "x"}])
    assert recorded(client) == []
    submit_batch("alice", [echo("x")], batch_id="b4")
    with pytest.raises(GroupError, match="already exists"):
        submit_batch("alice", [echo("x")], batch_id="b4")


def test_cancel_batch(aiecs_redis, worker):
    items = [echo("quick")] + [echo("slow", chunks=20, delay=0.1) for _ in range(9)]
    submit_batch("alice", items, batch_id="b5")
    client = aiecs_redis.client()
    # the quick item finished and the slow ones run (concurrency 8); one is still queued
    wait_until(lambda: get_batch("alice", "b5")["counts"]["completed"] == 1, timeout=30)
    wait_until(lambda: sum(1 for i in get_batch("alice", "b5")["items"]
                           if i["status"] == "running") >= 7, timeout=30)
    out = cancel_batch("alice", "b5")
    assert out["cancelling"] == 9
    batch = finished("alice", "b5")
    assert batch["status"] == "cancelled" and batch["partial_failure"]
    assert batch["counts"]["completed"] == 1 and batch["counts"]["cancelled"] == 9
    assert batch["items"][0]["result"]["text"] == "quick"  # finished items keep results
    ran = [i for i in range(1, 10) if any(
        e["status"] == "running" for e in read_events(client, "alice", f"b5.{i}"))]
    assert 7 <= len(ran) <= 8  # the queued ones never ran
    with pytest.raises(KeyError):
        cancel_batch("alice", "nope")

