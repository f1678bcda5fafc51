"""Retention per kind, without long locks or bloat.

PostgreSQL: the execution tables are partitioned by ``finished_at`` (see the migrations);
:func:`ensure_partitions` creates one partition per UTC day ahead of time (a partition must
exist before the DEFAULT partition receives rows in its range), and :func:`drop_expired`
detaches and drops the partitions wholly older than a kind's retention (no DELETE); rows
that fell into the DEFAULT partition (written before their day's partition existed) are
deleted in small batches.

SQLite: :func:`drop_expired` deletes in small batches (``batch`` rows per transaction), so
the recorder's writes and the readers are never held up for long.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, text

__all__ = ["DAY", "KINDS", "drop_expired", "ensure_partitions", "partitions"]

DAY = 86_400
#: The kinds of history, each its own table: rows, payloads, events.
KINDS = {"rows": "executions", "payloads": "execution_payloads", "events": "execution_events"}
_PART = re.compile(r"^(executions|execution_payloads|execution_events)_p(\d{8})$")


def _day_start(ts: float) -> int:
    return int(ts // DAY * DAY)


def _name(table: str, day: int) -> str:
    return f"{table}_p{datetime.fromtimestamp(day, UTC):%Y%m%d}"


def partitions(engine: Engine, table: str) -> list[tuple[str, int]]:
    """The daily partitions of ``table`` (PostgreSQL): ``(name, day start)``, oldest first."""
    with engine.connect() as conn:
        names = conn.execute(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t"), {"t": table}
        ).scalars().all()
    out = []
    for name in names:
        m = _PART.match(name)
        if m and m.group(1) == table:
            day = datetime.strptime(m.group(2), "%Y%m%d").replace(tzinfo=UTC)
            out.append((name, int(day.timestamp())))
    return sorted(out, key=lambda p: p[1])


def ensure_partitions(engine: Engine, now: float | None = None, ahead: int = 3,
                      tables: Iterable[str] = KINDS.values()) -> list[str]:
    """Create the daily partitions of today through ``ahead`` days on (PostgreSQL; nothing
    on SQLite); the names created. A day whose range already has rows in the DEFAULT
    partition is skipped (its rows stay there until retention deletes them)."""
    if engine.dialect.name != "postgresql":
        return []
    now = time.time() if now is None else now
    today = _day_start(now)
    created = []
    for table in tables:
        have = {name for name, _ in partitions(engine, table)}
        for i in range(ahead + 1):
            day = today + i * DAY
            name = _name(table, day)
            if name in have:
                continue
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                busy = conn.execute(text(
                    f"SELECT 1 FROM {table}_default WHERE finished_at >= :a AND "
                    "finished_at < :b LIMIT 1"), {"a": day, "b": day + DAY}).first()
                if busy:
                    continue
                conn.execute(text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                    f"FOR VALUES FROM ({day}) TO ({day + DAY})"))
            created.append(name)
    return created


def drop_expired(engine: Engine, table: str, days: float, now: float | None = None,
                 batch: int = 1000) -> int:
    """Remove what ``table`` holds that finished more than ``days`` ago: PostgreSQL drops
    whole daily partitions (and deletes the DEFAULT partition's expired rows in batches),
    SQLite deletes in batches of ``batch`` rows, one transaction each. Returns the number
    of partitions dropped plus rows deleted."""
    now = time.time() if now is None else now
    cutoff = now - days * DAY
    done = 0
    if engine.dialect.name == "postgresql":
        for name, day in partitions(engine, table):
            if day + DAY > cutoff:
                break
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
                conn.execute(text(f"DROP TABLE {name}"))
            done += 1
        target, key = f"{table}_default", "ctid"
    else:
        target, key = table, "rowid"
    while True:
        with engine.begin() as conn:
            n = conn.execute(text(
                f"DELETE FROM {target} WHERE {key} IN (SELECT {key} FROM {target} "
                f"WHERE finished_at < :c LIMIT :n)"), {"c": cutoff, "n": batch}).rowcount
        done += max(n or 0, 0)
        if not n or n < batch:
            return done
