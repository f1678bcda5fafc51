"""Retention per kind while writes go on: PostgreSQL drops whole daily partitions (created
ahead of time), SQLite deletes in small batches; one recorder at a time runs the job."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

DAY = 86_400


def _row(task_id: str, finished: float) -> dict:
    return dict(user_id="u", task_id=task_id, step=1, mode="test", service="echo",
                operation="echo", status="completed", finished_at=finished)


def _ident(row: dict) -> dict:
    return {k: row[k] for k in ("user_id", "task_id", "step", "finished_at")}


def _write(engine, rows):
    from aiecs_history import writes

    with engine.begin() as conn:
        writes.write_batch(conn, rows,
                           [{**_ident(r), "events_json": "[]"} for r in rows],
                           [{**_ident(r), "input_json": "{}", "result_json": "{}"} for r in rows])


def _oldest(engine, table) -> float | None:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT min(finished_at) FROM {table}")).scalar()


def test_retention_per_kind_while_writes_go_on(database_url, aiecs_redis):
    from aiecs_history import db
    from aiecs_history import retention as r
    from aiecs_worker.history.metrics import RecorderMetrics
    from aiecs_worker.history.retention import RetentionJob
    from aiecs_worker.settings import load_settings

    engine = db.connect(database_url)
    db.upgrade(engine)
    now = time.time()
    postgres = engine.dialect.name == "postgresql"
    if postgres:  # partitions made ahead over the last ten days, as the job would have
        for back in range(10, -1, -1):
            r.ensure_partitions(engine, now - back * DAY, ahead=0)
    # ten days of history (plus some older than any partition, in DEFAULT on PostgreSQL)
    old = [_row(f"old{d}.{i}", now - d * DAY - 60) for d in range(0, 12) for i in range(30)]
    _write(engine, old)

    written: list[dict] = []
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            batch = [_row(f"new{n}.{i}", time.time()) for i in range(50)]
            _write(engine, batch)
            written.extend(batch)
            n += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        settings = load_settings(aiecs_history_days=5, aiecs_history_event_days=3,
                                 aiecs_history_payload_days=1)
        job = RetentionJob(engine, aiecs_redis.client(), settings, RecorderMetrics())
        removed = job.run(now)
        time.sleep(0.3)  # let the writer go on a little after the job
    finally:
        stop.set()
        t.join(30)
    assert written, "the writer wrote while retention ran"
    assert all(removed.values())
    # PostgreSQL drops whole days: what is kept is at least N days, less than N + 1
    slack = DAY if postgres else 0
    for table, days in (("executions", 5), ("execution_events", 3),
                        ("execution_payloads", 1)):
        assert _oldest(engine, table) >= now - days * DAY - slack, table
    with engine.connect() as conn:
        new_rows = conn.execute(sa.text(
            "SELECT count(*) FROM executions WHERE task_id LIKE 'new%'")).scalar()
        kept = conn.execute(sa.text(
            "SELECT count(*) FROM executions WHERE task_id LIKE 'old%'")).scalar()
    assert new_rows == len(written)
    assert kept == 30 * 5 or (postgres and kept == 30 * 6)  # days 0..4 (and 5) kept
    if postgres:
        names = {n for n, _ in r.partitions(engine, "executions")}
        days = {n for n, day in r.partitions(engine, "executions")
                if day + DAY <= now - 5 * DAY}
        assert not days, "expired partitions are dropped"
        today = int(now // DAY * DAY)
        for i in range(4):  # today and three days ahead exist before rows arrive
            assert r._name("executions", today + i * DAY) in names
    engine.dispose()


def test_one_recorder_at_a_time_runs_the_job(tmp_path, aiecs_redis):
    from aiecs_history import db
    from aiecs_worker.history.metrics import RecorderMetrics
    from aiecs_worker.history.retention import RetentionJob
    from aiecs_worker.settings import load_settings

    engine = db.connect(f"sqlite:///{tmp_path}/h.db")
    db.upgrade(engine)
    settings = load_settings()
    jobs = [RetentionJob(engine, aiecs_redis.client(), settings, RecorderMetrics(),
                         owner=f"r{i}") for i in range(3)]
    ran = [job.maybe_run() is not None for job in jobs]
    assert ran.count(True) == 1
    assert [job.maybe_run() for job in jobs] == [None] * 3  # not due again yet
    engine.dispose()
