"""Execution rows written straight into a history database, for the query tests (the
recorder writes them in production)."""

from __future__ import annotations

from typing import Any

from aiecs_history import db, tables
from sqlalchemy import Engine, insert

__all__ = ["execution", "fresh_engine", "insert_rows"]


def execution(user_id: str, task_id: str, finished_at: float, **fields: Any) -> dict[str, Any]:
    """One ``executions`` row: a completed openai chat of step 1 unless ``fields`` say
    otherwise."""
    row = dict(user_id=user_id, task_id=task_id, step=1, mode="llm", service="openai",
               operation="chat", model="gpt-4o-mini", status="completed",
               created_at=finished_at - 2, started_at=finished_at - 1,
               finished_at=finished_at, input_tokens=10, output_tokens=20, cost=0.001,
               usage_source="reported", deliveries=1, queue="aiecs.fast")
    row.update(fields)
    return row


def fresh_engine(url: str) -> Engine:
    engine = db.connect(url)
    db.upgrade(engine)
    return engine


def insert_rows(engine: Engine, rows: list[dict[str, Any]],
                events: dict[tuple[str, str, int], str] | None = None) -> None:
    """``rows`` (and, per ``(user, task, step)``, an event log JSON) in one transaction."""
    with engine.begin() as conn:
        if rows:
            names = set().union(*rows)  # one executemany needs the same keys in each
            conn.execute(insert(tables.executions),
                         [{n: r.get(n) for n in names} for r in rows])
        by_key = {(r["user_id"], r["task_id"], r["step"]): r for r in rows}
        for key, events_json in (events or {}).items():
            r = by_key[key]
            conn.execute(insert(tables.execution_events).values(
                user_id=r["user_id"], task_id=r["task_id"], step=r["step"],
                finished_at=r["finished_at"], events_json=events_json))
