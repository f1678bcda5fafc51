"""The outbox and the recorder: a finished execution becomes one history row, with its
compacted event log, written idempotently and acknowledged only after the commit."""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid

import sqlalchemy as sa
from aiecs_core import TaskEvent, TaskStatus

from tests.support.events import wait_terminal, wait_until


def kwargs(task_id: str, **inp):
    inp.setdefault("text", "one two three four five six")
    return dict(task_name="echo", user_id="alice", task_id=task_id, step=1, mode="test",
                service="echo", input_data=inp, context={})


def rows(engine, **where):
    from aiecs_history.tables import executions

    q = sa.select(executions)
    for k, v in where.items():
        q = q.where(executions.c[k] == v)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def events_of(engine, task_id):
    from aiecs_history.tables import execution_events

    with engine.connect() as conn:
        raw = conn.execute(sa.select(execution_events.c.events_json).where(
            execution_events.c.task_id == task_id)).scalars().all()
    return [json.loads(r) for r in raw]


def test_a_finished_task_becomes_one_row_with_its_facts(database_url, aiecs_redis, worker,
                                                       make_recorder):
    from aiecs_worker import execute_task

    rec = make_recorder(database_url).start()
    ok, bad = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    execute_task.delay(**kwargs(ok, chunks=4, delay=0.02))
    execute_task.delay(**kwargs(bad, fail="invalid"))
    client = aiecs_redis.client()
    wait_terminal(client, "alice", ok)
    wait_terminal(client, "alice", bad)

    row = wait_until(lambda: rows(rec.engine, task_id=ok), message="the row")[0]
    assert row["user_id"] == "alice" and row["step"] == 1
    assert (row["mode"], row["service"], row["operation"]) == ("test", "echo", "echo")
    assert row["status"] == "completed" and row["error_type"] is None
    assert row["queue"] and row["celery_id"]
    assert row["worker"] == socket.gethostname()
    assert row["plugin_dist"] == "aiecs-testplugin" and row["plugin_version"] == "0.1.0"
    assert row["deliveries"] == 1
    assert row["created_at"] <= row["started_at"] <= row["first_output_at"] <= row["finished_at"]
    assert row["run_ms"] == round((row["finished_at"] - row["started_at"]) * 1000)
    assert row["queue_wait_ms"] >= 0
    assert row["input_tokens"] > 0 and row["usage_source"] == "reported"
    assert row["recorded_at"] >= row["finished_at"]

    (events,) = events_of(rec.engine, ok)
    streams = [e for e in events if e["type"] == "stream"]
    assert len(streams) == 1, "the deltas are merged into one event"
    assert streams[0]["delta"].split() == ["one", "two", "three", "four", "five", "six"]
    assert events[-1]["status"] == "completed"

    failed = wait_until(lambda: rows(rec.engine, task_id=bad), message="the failed row")[0]
    assert failed["status"] == "failed" and failed["error_type"] == "InvalidRequestError"
    assert failed["error_message"]
    # acknowledged and deleted: nothing left in the outbox
    wait_until(lambda: client.xlen("aiecs:outbox") == 0, message="an empty outbox")


def _finish(client, task_id: str, step: int = 1) -> None:
    """An execution ended by the terminal script (as a revocation ends one)."""
    from aiecs_worker.settings import get_settings
    from aiecs_worker.store.events import TaskKeys, finish_sync
    from aiecs_worker.store.records import terminal_fields

    s = get_settings()
    event = TaskEvent(type="status", task_id=task_id, step=step, user_id="bob",
                      task_name="echo", status=TaskStatus.CANCELLED)
    assert finish_sync(client, event, TaskKeys("bob", task_id).state(step),
                       terminal_fields(TaskStatus.CANCELLED, 600),
                       s.aiecs_socketio_channel, s.aiecs_events_maxlen, s.aiecs_events_ttl)


def test_the_terminal_script_adds_one_outbox_entry_and_none_to_a_loser(aiecs_redis):
    client = aiecs_redis.client()
    _finish(client, "t1")
    from aiecs_worker.settings import get_settings
    from aiecs_worker.store.events import TaskKeys, finish_sync
    from aiecs_worker.store.records import terminal_fields

    s = get_settings()
    event = TaskEvent(type="status", task_id="t1", step=1, user_id="bob",
                      task_name="echo", status=TaskStatus.FAILED)
    assert finish_sync(client, event, TaskKeys("bob", "t1").state(1),
                       terminal_fields(TaskStatus.FAILED, 600), s.aiecs_socketio_channel,
                       s.aiecs_events_maxlen, s.aiecs_events_ttl) == 0
    entries = client.xrange("aiecs:outbox")
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["key"] == "aiecs:t:bob:t1:1:state"
    assert fields["status"] == "cancelled"


def test_the_same_entries_recorded_twice_make_one_row(database_url, aiecs_redis,
                                                      make_recorder):
    client = aiecs_redis.client()
    ids = [f"t{i}" for i in range(20)]
    for task_id in ids:
        _finish(client, task_id)
    client.hset("aiecs:sched:bob:t0", "spec", "{}")  # t0's steps are a schedule's runs
    rec = make_recorder(database_url, retention=False)
    server = rec.metrics.serve(0, "127.0.0.1")
    try:
        rec._gauges(force=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics") as r:
            assert "aiecs_outbox_backlog 20.0" in r.read().decode()  # the backlog, exported
    finally:
        server.shutdown()
    entries = rec._read()
    assert len(entries) == 20
    assert rec.record(entries) == 20
    assert rec.record(entries) == 20  # a second write of the same batch adds nothing
    assert len(rows(rec.engine, user_id="bob")) == 20
    assert rows(rec.engine, task_id="t0")[0]["schedule_id"] == "t0"
    assert rows(rec.engine, task_id="t1")[0]["schedule_id"] is None
    assert rec.metrics.rows._value.get() == 20
    assert rec.metrics.duplicates._value.get() == 20
    assert client.xlen("aiecs:outbox") == 0


def test_entries_of_a_recorder_that_died_before_acknowledging_are_taken_over(
        database_url, aiecs_redis, make_recorder):
    client = aiecs_redis.client()
    for i in range(30):
        _finish(client, f"d{i}")
    dead = make_recorder(database_url, consumer="dead:1", retention=False)
    half = dead._xread(15, 10)
    assert len(half) == 15
    dead._write([r for r in (dead_build(e) for e in half[:5]) if r])  # committed, no ack
    # ... and the process is gone. Another recorder takes its entries over once idle.
    alive = make_recorder(database_url, consumer="alive:1", retention=False,
                          aiecs_recorder_claim_idle=0.2).start()
    wait_until(lambda: len(rows(alive.engine, user_id="bob")) == 30, timeout=20,
               message="30 rows")
    wait_until(lambda: client.xlen("aiecs:outbox") == 0, message="an empty outbox")
    assert sorted(r["task_id"] for r in rows(alive.engine, user_id="bob")) == sorted(
        f"d{i}" for i in range(30))
    assert alive.metrics.claimed._value.get() >= 15


def dead_build(entry):
    from aiecs_worker.history.rows import build

    return build(*entry)
