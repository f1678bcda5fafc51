"""The terminal state and the terminal event are one atomic step, in order after the task's
other events; the loser of a race records and appends nothing."""

from __future__ import annotations

import asyncio
import json

from aiecs_core import TaskEvent, TaskStatus
from aiecs_worker.store.events import RedisEventPublisher, TaskKeys, finish_sync

from tests.support.events import read_events


def event(status: TaskStatus, type_: str = "status", **kw) -> TaskEvent:
    return TaskEvent(type=type_, task_id="t1", step=1, user_id="alice", task_name="echo",
                     status=status, **kw)


def fields(status: str, result: dict | None = None) -> list:
    return [status, json.dumps(result) if result else "", "", "[]", 1.0, 600]


def test_terminal_state_and_event_together_after_the_queued_events(redis_server):
    keys = TaskKeys("alice", "t1")
    state_key = keys.state(1)

    async def main():
        pub = RedisEventPublisher(redis_server.url)
        pub.publish_nowait(event(TaskStatus.RUNNING))
        for word in ("a ", "b ", "c"):
            pub.publish_nowait(event(TaskStatus.RUNNING, "stream", delta=word))
        won = await pub.publish_terminal(event(TaskStatus.COMPLETED, result={"n": 1}),
                                         state_key, fields("completed", {"result": {"n": 1}}))
        lost = await pub.publish_terminal(event(TaskStatus.CANCELLED), state_key,
                                          fields("cancelled"))
        await pub.aclose()
        return won, lost

    won, lost = asyncio.run(main())
    client = redis_server.client()
    events = read_events(client, "alice", "t1")
    # the three deltas queued together leave as one stream event (see test_coalesce.py)
    assert won == 3 and lost == 0
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert [e["type"] for e in events] == ["status", "stream", "status"]
    assert events[1]["delta"] == "a b c"
    assert events[-1]["status"] == "completed" and events[-1]["result"] == {"n": 1}
    state = {k.decode(): v.decode() for k, v in client.hgetall(state_key).items()}
    assert state["status"] == "completed"
    assert json.loads(state["result"]) == {"result": {"n": 1}}
    assert client.ttl(state_key) > 0 and client.ttl(keys.log) > 0

    # the synchronous path (control.record_cancelled) loses the same way
    assert finish_sync(client, event(TaskStatus.CANCELLED), state_key, fields("cancelled"),
                       "socketio", 100, 600) == 0
    assert len(read_events(client, "alice", "t1")) == 3


def test_sync_finish_on_a_fresh_execution_appends_exactly_one_event(redis_server):
    client = redis_server.client()
    state_key = TaskKeys("alice", "t1").state(1)
    seq = finish_sync(client, event(TaskStatus.CANCELLED, message="cancelled before it ran"),
                      state_key, fields("cancelled"), "socketio", 100, 600)
    assert seq == 1
    (only,) = read_events(client, "alice", "t1")
    assert only["status"] == "cancelled" and only["seq"] == 1
    assert client.hget(state_key, "status") == b"cancelled"


def test_terminal_transition_waits_out_a_redis_outage_and_is_recorded_once(redis_server):
    """Progress events are dropped while Redis is away; the terminal one is retried until
    Redis answers, then recorded (with its event) exactly once, after what came before."""
    state_key = TaskKeys("alice", "t1").state(1)
    redis_server.stop()

    async def main():
        pub = RedisEventPublisher(redis_server.url)
        try:
            pub.publish_nowait(event(TaskStatus.RUNNING, "progress", message="lost"))
            terminal = asyncio.ensure_future(pub.publish_terminal(
                event(TaskStatus.COMPLETED), state_key, fields("completed", {"n": 1})))
            # still waiting for Redis after several attempts: not dropped
            await asyncio.sleep(1.0)
            assert not terminal.done()
            await asyncio.to_thread(redis_server.start)
            return await asyncio.wait_for(terminal, 30)
        finally:
            await pub.aclose()

    seq = asyncio.run(main())
    client = redis_server.client()
    assert seq == 1
    (only,) = read_events(client, "alice", "t1")
    assert only["status"] == "completed" and only["seq"] == 1
    assert client.hget(state_key, "status") == b"completed"


def test_order_holds_when_redis_knows_the_terminal_script_but_not_the_event_one(
        redis_server):
    """Another process (a server cancelling, say) loaded the terminal transition's script
    into a Redis that had none, and not the events' one. The publisher's first pipeline
    carries a task's last events and its terminal transition: before, Redis refused the
    events (NOSCRIPT) and ran the terminal transition, and the events, sent again, went
    into the log after it (seen in CI: pending, running, completed, stream, progress...)."""
    from aiecs_worker.store.events import FINISH_PUBLISH_LUA

    client = redis_server.client()
    client.script_flush()
    client.script_load(FINISH_PUBLISH_LUA)
    keys = TaskKeys("alice", "t2")

    def ev(status: TaskStatus, type_: str = "status", **kw) -> TaskEvent:
        return TaskEvent(type=type_, task_id="t2", step=1, user_id="alice",
                         task_name="echo", status=status, **kw)

    async def main():
        pub = RedisEventPublisher(redis_server.url)
        pub.publish_nowait(ev(TaskStatus.RUNNING))
        pub.publish_nowait(ev(TaskStatus.RUNNING, "progress", progress=0.5))
        won = await pub.publish_terminal(ev(TaskStatus.COMPLETED), keys.state(1),
                                         fields("completed"))
        await pub.aclose()
        return won

    assert asyncio.run(main()) == 3
    events = read_events(client, "alice", "t2")
    assert [(e["type"], e["status"]) for e in events] == [
        ("status", "running"), ("progress", "running"), ("status", "completed")]


def test_a_process_loading_one_event_script_loads_both(redis_server):
    """Whoever loads the terminal transition's script (run_script, pipelined) loads the
    events' script with it, so no publisher finds one known and not the other."""
    from aiecs_worker.store.events import FINISH_PUBLISH_LUA, PUBLISH_LUA
    from aiecs_worker.store.scripts import sha1

    client = redis_server.client()
    client.script_flush()
    keys = TaskKeys("alice", "t3")
    finish_sync(client, event(TaskStatus.CANCELLED), keys.state(1), fields("cancelled"),
                "socketio", 100, 600)
    assert client.script_exists(sha1(FINISH_PUBLISH_LUA), sha1(PUBLISH_LUA)) == [True, True]
    # and again after Redis lost them
    client.script_flush()
    finish_sync(client, event(TaskStatus.CANCELLED), keys.state(2), fields("cancelled"),
                "socketio", 100, 600)
    assert client.script_exists(sha1(FINISH_PUBLISH_LUA), sha1(PUBLISH_LUA)) == [True, True]
