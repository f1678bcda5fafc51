"""Stream events of one execution that wait together leave as one event, in order."""

from __future__ import annotations

import asyncio

from aiecs_core import TaskEvent, TaskStatus
from aiecs_worker.store.events import RedisEventPublisher

from tests.support.events import read_events


def ev(task: str, type_: str = "stream", **kw) -> TaskEvent:
    return TaskEvent(type=type_, task_id=task, step=1, user_id="alice", task_name="echo",
                     status=TaskStatus.RUNNING, **kw)


def test_queued_deltas_merge_per_execution_and_keep_order(redis_server):
    async def main():
        pub = RedisEventPublisher(redis_server.url)
        try:
            # all queued before the publisher runs: one batch
            for i in range(5):
                pub.publish_nowait(ev("a", delta=f"a{i} "))
                pub.publish_nowait(ev("b", delta=f"b{i} "))
            pub.publish_nowait(ev("a", "progress", message="half", progress=0.5))
            for i in range(5, 8):
                pub.publish_nowait(ev("a", delta=f"a{i} "))
            return await pub.publish(ev("b", "progress", message="done"))
        finally:
            await pub.aclose()

    asyncio.run(main())
    client = redis_server.client()
    a = read_events(client, "alice", "a")
    assert [(e["type"], e["delta"]) for e in a] == [
        ("stream", "a0 a1 a2 a3 a4 "), ("progress", None), ("stream", "a5 a6 a7 ")]
    assert [e["seq"] for e in a] == [1, 2, 3]
    b = read_events(client, "alice", "b")
    assert [(e["type"], e["delta"]) for e in b] == [
        ("stream", "b0 b1 b2 b3 b4 "), ("progress", None)]


def test_an_idle_publisher_sends_each_delta_as_it_comes(redis_server):
    async def main():
        pub = RedisEventPublisher(redis_server.url)
        try:
            for i in range(3):
                pub.publish_nowait(ev("a", delta=f"a{i} "))
                await pub.publish(ev("barrier", "progress"))  # sent: the queue is empty
        finally:
            await pub.aclose()

    asyncio.run(main())
    deltas = [e["delta"] for e in read_events(redis_server.client(), "alice", "a")]
    assert deltas == ["a0 ", "a1 ", "a2 "]
