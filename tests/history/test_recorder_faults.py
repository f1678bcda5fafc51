"""The recorder under faults, on real processes: a database outage of 60 s during 1,000
tasks, and a recorder SIGKILLed mid-batch. Counted against the submitted ids and the
tasks' event logs: 0 lost, 0 duplicated rows. Marked ``faults`` (``uv run pytest -m
faults tests/history``)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from tests.support.events import TERMINAL, read_events, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

N = 1000


def _submit(n: int, prefix: str) -> list[str]:
    from aiecs_worker import execute_task

    ids = [f"{prefix}{i}" for i in range(n)]
    for task_id in ids:
        execute_task.delay(task_name="echo", user_id="carol", task_id=task_id, step=1,
                           mode="test", service="echo", input_data={"text": "a b c"},
                           context={})
    return ids


def _count(engine) -> tuple[int, int]:
    """(rows, distinct executions) of user carol; 0, 0 while the database is away."""
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text(
                "SELECT count(*), count(DISTINCT task_id || ':' || step) FROM executions "
                "WHERE user_id = 'carol'")).one())
    except sa.exc.OperationalError:
        return 0, 0


def _check(engine, client, ids: list[str]) -> None:
    """Every submitted execution has exactly one row, whose status is its log's terminal
    event's; the outbox is empty."""
    with engine.connect() as conn:
        got = conn.execute(sa.text(
            "SELECT task_id, status, count(*) OVER (PARTITION BY task_id, step) FROM "
            "executions WHERE user_id = 'carol'")).all()
    assert len(got) == len(ids), f"{len(got)} rows for {len(ids)} executions"
    assert not [r for r in got if r[2] != 1], "duplicated rows"
    status = {r[0]: r[1] for r in got}
    assert set(status) == set(ids), "lost rows"
    for task_id in ids[:: max(1, len(ids) // 100)]:  # against the event logs (a sample)
        terminal = [e for e in read_events(client, "carol", task_id)
                    if e["type"] == "status" and e["status"] in TERMINAL]
        assert len(terminal) == 1 and terminal[0]["status"] == status[task_id]
    assert client.xlen("aiecs:outbox") == 0


def _terminal_count(client, ids):
    return sum(1 for t in ids if any(
        e["status"] in TERMINAL for e in read_events(client, "carol", t)[-1:]))


def test_a_database_outage_of_60s_slows_no_task_and_loses_no_row(
        aiecs_redis, postgres_server, start_worker, start_recorder):
    from aiecs_history import db

    url = postgres_server.create_database()
    engine = db.connect(url)
    start_recorder(database_url=url)
    start_worker(concurrency=32)
    client = aiecs_redis.client()
    ids = _submit(N // 5, "a")
    wait_until(lambda: _count(engine)[0] == N // 5, timeout=120, message="the first rows")

    outage = threading.Thread(target=lambda: (postgres_server.stop(), time.sleep(60),
                                              postgres_server.start()))
    down_at = time.monotonic()
    outage.start()
    more = _submit(N - N // 5, "b")
    # the tasks are not slowed: all end while the database is still away
    wait_until(lambda: _terminal_count(client, more) == len(more), timeout=55,
               interval=0.5, message="every task terminal during the outage")
    assert outage.is_alive() and time.monotonic() - down_at < 60
    assert client.xlen("aiecs:outbox") >= len(more)  # the backlog, held in Redis
    outage.join()
    engine.dispose()
    wait_until(lambda: _count(engine)[0] == N, timeout=180, interval=0.5,
               message="the recorder caught up")
    wait_until(lambda: client.xlen("aiecs:outbox") == 0, timeout=30, message="empty outbox")
    _check(engine, client, ids + more)


def test_a_recorder_sigkilled_mid_batch_loses_and_duplicates_nothing(
        database_url, aiecs_redis, start_worker, start_recorder):
    from aiecs_history import db

    engine = db.connect(database_url)
    env = {"AIECS_RECORDER_BATCH": "50", "AIECS_RECORDER_CLAIM_IDLE": "2"}
    first = start_recorder(database_url=database_url, env=env)
    start_worker(concurrency=32)
    client = aiecs_redis.client()
    ids = _submit(N, f"k{uuid.uuid4().hex[:4]}.")
    wait_until(lambda: _count(engine)[0] >= 100, timeout=120, interval=0.01,
               message="the first batches")
    first.kill()  # mid-stream: batches read, some written and not acknowledged
    killed_at = _count(engine)[0]
    assert killed_at < N, "killed before it finished"
    start_recorder(database_url=database_url, env=env)
    wait_until(lambda: _count(engine)[0] == N and client.xlen("aiecs:outbox") == 0,
               timeout=180, interval=0.5, message="the second recorder caught up")
    _check(engine, client, ids)
