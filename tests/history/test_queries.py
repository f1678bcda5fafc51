"""aiecs_history.queries on SQLite and a real PostgreSQL: keyset pages, filters, usage
sums, the export iterator, forgetting a user."""

from __future__ import annotations

import json

import pytest
from aiecs_history import queries, tables
from aiecs_history.queries import CursorError, Filters
from sqlalchemy import func, insert, select, text

from tests.history.rows import execution, fresh_engine, insert_rows

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z


@pytest.fixture
def engine(database_url):
    engine = fresh_engine(database_url)
    yield engine
    engine.dispose()


def _all_pages(engine, filters, limit):
    items, cursor, pages = [], None, 0
    while True:
        page = queries.list_executions(engine, filters, limit=limit, cursor=cursor)
        items += page.items
        pages += 1
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


def test_pages_newest_first_without_repeats_or_gaps(engine):
    # 25 rows of u1 in 10 distinct times (ties on finished_at are broken by id), 5 of u2
    rows = [execution("u1", f"t{i}", T0 + i // 3) for i in range(25)]
    rows += [execution("u2", f"v{i}", T0 + i) for i in range(5)]
    insert_rows(engine, rows)
    items, pages = _all_pages(engine, Filters(user_id="u1"), limit=4)
    assert pages == 7
    assert sorted(i["task_id"] for i in items) == sorted(f"t{i}" for i in range(25))
    keys = [(i["finished_at"], i["id"]) for i in items]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 25
    assert {i["user_id"] for i in items} == {"u1"}
    # every user's (operators)
    everyone, _ = _all_pages(engine, Filters(), limit=500)
    assert len(everyone) == 30
    # the JSON row: the table's column names, times ISO-8601 UTC
    first = items[0]
    assert set(first) == {c.name for c in tables.executions.columns}
    assert first["finished_at"] == "2026-05-28T20:26:48Z"
    assert first["created_at"] == "2026-05-28T20:26:46Z" and first["recorded_at"] is None


def test_a_row_recorded_between_pages_is_neither_repeated_nor_skipped(engine):
    insert_rows(engine, [execution("u1", f"t{i}", T0 + i) for i in range(6)])
    first = queries.list_executions(engine, Filters(user_id="u1"), limit=3)
    assert [i["task_id"] for i in first.items] == ["t5", "t4", "t3"]
    insert_rows(engine, [execution("u1", "late", T0 + 100)])  # newer than every page
    second = queries.list_executions(engine, Filters(user_id="u1"), limit=3,
                                     cursor=first.next_cursor)
    assert [i["task_id"] for i in second.items] == ["t2", "t1", "t0"]
    assert second.next_cursor is None


def test_filters(engine):
    insert_rows(engine, [
        execution("u1", "a", T0 + 1, status="failed", error_type="RateLimitError"),
        execution("u1", "b", T0 + 2, service="xai", model="grok-3"),
        execution("u1", "c", T0 + 3, operation="embed", batch_id="B1"),
        execution("u1", "d", T0 + 4, workflow_id="W1", step=2),
        execution("u1", "e", T0 + 5, template_name="summarize", template_version=2),
        execution("u1", "f", T0 + 6, template_name="summarize", template_version=3),
        execution("u2", "g", T0 + 7, status="failed"),
    ])

    def tasks(**kw):
        page = queries.list_executions(engine, Filters(**kw), limit=50)
        return [i["task_id"] for i in page.items]

    assert tasks(user_id="u1", status="failed") == ["a"]
    assert tasks(status="failed") == ["g", "a"]
    assert tasks(user_id="u1", service="xai") == ["b"]
    assert tasks(user_id="u1", model="grok-3") == ["b"]
    assert tasks(user_id="u1", operation="embed") == ["c"]
    assert tasks(user_id="u1", batch_id="B1") == ["c"]
    assert tasks(user_id="u1", workflow_id="W1") == ["d"]
    assert tasks(user_id="u1", template="summarize") == ["f", "e"]
    assert tasks(user_id="u1", template="summarize", template_version=2) == ["e"]
    assert tasks(user_id="u1", since=T0 + 2, until=T0 + 4) == ["c", "b"]
    assert tasks(user_id="u1", status="failed", service="xai") == []


def test_bad_cursors_are_refused(engine):
    for bad in ["", "x", "!!!!", "W10", queries.encode_cursor(1.0, 1)[:-2] + "??",
                "eyJhIjoxfQ", "WzEsInh5Il0"]:  # {"a":1}, [1,"xy"]
        with pytest.raises(CursorError):
            queries.list_executions(engine, Filters(user_id="u"), cursor=bad)
    with pytest.raises(ValueError):
        queries.list_executions(engine, Filters(user_id="u"), limit=501)


def test_get_execution_with_its_events(engine):
    events = json.dumps([{"seq": 1, "type": "status", "status": "pending"},
                         {"seq": 2, "type": "status", "status": "completed"}])
    insert_rows(engine, [execution("u1", "t", T0, step=3), execution("u2", "t", T0, step=3),
                         execution("u1", "t", T0 + 1, step=4)],
                events={("u1", "t", 3): events})
    row, evs = queries.get_execution(engine, "u1", "t", 3)
    assert (row["user_id"], row["task_id"], row["step"]) == ("u1", "t", 3)
    assert [e["seq"] for e in evs] == [1, 2]
    row, evs = queries.get_execution(engine, "u1", "t", 4)
    assert row["step"] == 4 and evs is None
    assert queries.get_execution(engine, "u1", "t", 5) is None
    assert queries.get_execution(engine, "u3", "t", 3) is None


def test_usage_grouped(engine):
    day = 86_400.0
    insert_rows(engine, [
        execution("u1", "a", T0, input_tokens=100, output_tokens=10, cost=0.5),
        execution("u1", "b", T0 + 60, input_tokens=1, output_tokens=2, cost=None,
                  model="local", service="vertex"),
        execution("u1", "c", T0 + day, input_tokens=5, output_tokens=5, cost=0.25,
                  template_name="summarize", template_version=2),
        execution("u2", "d", T0, input_tokens=1000, output_tokens=1000, cost=9.0),
    ])
    mine = Filters(user_id="u1")
    by_day = queries.usage(engine, mine, "day")
    assert by_day["group_by"] == "day"
    assert by_day["groups"] == [
        {"key": "2026-05-28", "executions": 2, "input_tokens": 101, "output_tokens": 12,
         "cost": 0.5, "unpriced": 1},
        {"key": "2026-05-29", "executions": 1, "input_tokens": 5, "output_tokens": 5,
         "cost": 0.25, "unpriced": 0},
    ]
    assert by_day["total"] == {"executions": 3, "input_tokens": 106, "output_tokens": 17,
                               "cost": 0.75, "unpriced": 1}
    by_provider = {g["key"]: g for g in queries.usage(engine, mine, "provider")["groups"]}
    assert by_provider["vertex"]["cost"] is None and by_provider["openai"]["executions"] == 2
    by_model = {g["key"]: g["executions"] for g in queries.usage(engine, mine, "model")["groups"]}
    assert by_model == {"gpt-4o-mini": 2, "local": 1}
    by_template = {g["key"]: g["executions"]
                   for g in queries.usage(engine, mine, "template")["groups"]}
    assert by_template == {None: 2, "summarize@2": 1}
    everyone = queries.usage(engine, Filters(since=T0, until=T0 + 1), "provider")
    assert everyone["total"]["executions"] == 2 and everyone["total"]["cost"] == 9.5
    with pytest.raises(ValueError):
        queries.usage(engine, mine, "week")


def test_export_iterates_every_match_in_batches(engine):
    insert_rows(engine, [execution("u1", f"t{i}", T0 + i) for i in range(23)]
                + [execution("u2", "x", T0)])
    out = list(queries.iter_executions(engine, Filters(user_id="u1"), batch=5))
    assert [i["task_id"] for i in out] == [f"t{i}" for i in reversed(range(23))]
    assert list(queries.iter_executions(engine, Filters(user_id="nobody"), batch=5)) == []


def test_forget_deletes_one_users_rows_payloads_and_events(engine, monkeypatch):
    monkeypatch.setattr(queries, "FORGET_BATCH", 7)  # several batches on SQLite
    rows = [execution("u1", f"t{i}", T0 + i) for i in range(20)]
    rows += [execution("u2", f"t{i}", T0 + i) for i in range(3)]
    insert_rows(engine, rows, events={(r["user_id"], r["task_id"], 1): "[]" for r in rows})
    with engine.begin() as conn:
        conn.execute(insert(tables.execution_payloads), [
            dict(user_id=r["user_id"], task_id=r["task_id"], step=1,
                 finished_at=r["finished_at"], input_json="{}") for r in rows])
    assert queries.forget(engine, "u1") == {"payloads": 20, "events": 20, "executions": 20}
    with engine.connect() as conn:
        for table in (tables.executions, tables.execution_payloads, tables.execution_events):
            users = conn.execute(select(table.c.user_id, func.count())
                                 .group_by(table.c.user_id)).all()
            assert users == [("u2", 3)]
    assert queries.forget(engine, "u1") == {"payloads": 0, "events": 0, "executions": 0}


def test_sqlite_pages_come_from_the_indexes(tmp_path):
    """The plans, not timings: no sort of the table, no full scan (bench/ measures)."""
    engine = fresh_engine(f"sqlite:///{tmp_path}/h.db")
    insert_rows(engine, [execution("u1", f"t{i}", T0 + i) for i in range(3)])
    from sqlalchemy import event

    cursor = queries.encode_cursor(T0 + 2, 3)
    cases = {
        "ix_executions_user_finished": Filters(user_id="u1"),
        "ix_executions_user_status_finished": Filters(user_id="u1", status="failed"),
        "ix_executions_batch_id": Filters(user_id="u1", batch_id="B"),
        "ix_executions_workflow_id": Filters(user_id="u1", workflow_id="W"),
        "ix_executions_template_name": Filters(user_id="u1", template="s"),
        "ix_executions_finished": Filters(),
    }
    for index, filters in cases.items():
        captured = []
        with engine.connect() as conn:
            def grab(conn_, cursor_, statement, parameters, context, executemany,
                     captured=captured):
                captured.append((statement, parameters))

            event.listen(engine, "before_cursor_execute", grab)
            try:
                queries.list_executions(conn, filters, limit=50, cursor=cursor)
            finally:
                event.remove(engine, "before_cursor_execute", grab)
            statement, parameters = captured[0]
            plan = " / ".join(r[-1] for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters))
        assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    engine.dispose()


def test_postgres_partitions_keep_the_indexes(postgres_server):
    engine = fresh_engine(postgres_server.create_database())
    with engine.connect() as conn:
        names = set(conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'executions_default'"
        )).scalars())
    assert any("user_id_status" in n or "user_status" in n for n in names), names
    assert len([n for n in names if "batch_id" in n]) == 1, names
    engine.dispose()
