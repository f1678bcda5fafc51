"""Events an operation emits just before it ends leave with its terminal transition, in one
round trip to Redis: the runner queues the terminal step when it is decided, not one loop
turn later (a task wrapper around it would let the publisher send the events alone first).
"""

from __future__ import annotations

from aiecs_core import ServiceRegistry
from aiecs_core.testing import echo
from aiecs_worker.runner.runtime import Runtime
from aiecs_worker.settings import load_settings

from tests.support.events import read_events


def test_an_operations_last_events_and_its_terminal_step_share_one_pipeline(redis_server):
    registry = ServiceRegistry()
    registry.register_plugin(echo, "echo")
    runtime = Runtime(load_settings(redis_url=redis_server.url,
                                    celery_broker_url=redis_server.url), registry)
    batches: list[list[str]] = []
    send = runtime.publisher._pipeline

    async def recording(items):
        batches.append([event.type if finish is None else f"terminal:{event.status.value}"
                        for event, _, finish in items])
        return await send(items)

    runtime.publisher._pipeline = recording
    try:
        outcome = runtime.run((), {
            "task_name": "echo", "user_id": "alice", "task_id": "t1", "step": 0,
            "mode": "test", "service": "echo", "input_data": {"text": "hi", "chunks": 1},
            "context": {}}, celery_id="c1")
    finally:
        runtime.close()
    assert outcome.status.value == "completed"
    # RUNNING went out with the begin transition (its own script, awaited); everything
    # after it in one pipeline (sent twice: a fresh Redis answers NOSCRIPT the first time)
    assert {tuple(b) for b in batches} == {("stream", "progress", "terminal:completed")}
    events = read_events(redis_server.client(), "alice", "t1")
    assert [(e["type"], e["status"]) for e in events] == [
        ("status", "running"), ("stream", "running"), ("progress", "running"),
        ("status", "completed")]
