"""Reading the history: the executions of a user (or of everyone, for operators) with
filters and keyset pagination, one execution with its event log, usage sums, an export
iterator, and forgetting a user.

Every list is newest first, ordered by ``(finished_at, id)`` descending, and paged by a
keyset cursor (an opaque token naming the last row seen), never by OFFSET: page 1,000 costs
what page 1 does, and rows written meanwhile neither repeat nor vanish from the pages
already read. The indexes that make these queries cheap on SQLite and PostgreSQL are
declared in :mod:`.tables` (``ix_executions_user_finished``, ``ix_executions_finished``,
and those of revision 0002 for the selective filters).

Rows come back as JSON-ready dicts whose keys are the ``executions`` table's column names
(:func:`row_json`: times as ISO-8601 UTC strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, literal_column, select
from sqlalchemy import tuple_ as row_value

from .tables import execution_events, execution_payloads, executions

__all__ = [
    "GROUPS",
    "MAX_LIMIT",
    "TIME_COLUMNS",
    "CursorError",
    "Filters",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "forget",
    "get_execution",
    "iter_executions",
    "list_executions",
    "row_json",
    "usage",
]

#: The most rows one page may hold.
MAX_LIMIT = 500
#: The ways :func:`usage` groups (``provider`` is the execution's service).
GROUPS = ("day", "provider", "model", "template")
#: The columns holding times (UNIX seconds in the table, ISO-8601 in :func:`row_json`).
TIME_COLUMNS = frozenset({"created_at", "started_at", "first_output_at", "finished_at",
                          "recorded_at"})
#: Rows deleted per transaction when forgetting a user on SQLite (short write locks).
FORGET_BATCH = 2000

_ORDER = (executions.c.finished_at.desc(), executions.c.id.desc())


class CursorError(ValueError):
    """A cursor that this module did not make (or that was altered)."""


@dataclass(frozen=True)
class Filters:
    """What to select. ``user_id=None`` selects every user's executions (operators);
    every other field left None does not filter; ``since`` / ``until`` are UNIX seconds
    of ``finished_at`` (``since`` included, ``until`` excluded)."""

    user_id: str | None = None
    status: str | None = None
    service: str | None = None
    operation: str | None = None
    model: str | None = None
    template: str | None = None
    template_version: int | None = None
    batch_id: str | None = None
    workflow_id: str | None = None
    since: float | None = None
    until: float | None = None

    def clauses(self) -> list[Any]:
        """The WHERE clauses of these filters."""
        c = executions.c
        out: list[Any] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name in ("since", "until", "template"):
                continue
            out.append(getattr(c, f.name) == value)
        if self.template is not None:
            out.append(c.template_name == self.template)
        if self.since is not None:
            out.append(c.finished_at >= self.since)
        if self.until is not None:
            out.append(c.finished_at < self.until)
        return out


@dataclass(frozen=True)
class Page:
    """One page of executions, newest first; ``next_cursor`` is None on the last page."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(finished_at: float, row_id: int) -> str:
    """The opaque cursor of a page that ends with the row ``(finished_at, row_id)``."""
    raw = json.dumps([finished_at, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """``(finished_at, id)`` of a cursor made by :func:`encode_cursor`, or CursorError."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 200:
        raise CursorError("invalid cursor (pass the next_cursor of the previous page)")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        finished_at, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise CursorError("invalid cursor (pass the next_cursor of the previous page)") from None
    if not (isinstance(finished_at, int | float) and not isinstance(finished_at, bool)
            and math.isfinite(finished_at)
            and isinstance(row_id, int) and not isinstance(row_id, bool)):
        raise CursorError("invalid cursor (pass the next_cursor of the previous page)")
    return float(finished_at), row_id


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return (_EPOCH + timedelta(seconds=value)).isoformat().replace("+00:00", "Z")


def row_json(row: Any) -> dict[str, Any]:
    """An ``executions`` row (a Row or a mapping) as JSON: its column names, times as
    ISO-8601 UTC."""
    data = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    return {k: _iso(v) if k in TIME_COLUMNS else v for k, v in data.items()}


def _rows_json(names: tuple[str, ...], rows: list[Any]) -> list[dict[str, Any]]:
    """:func:`row_json` of many rows of one query (its column names read once: this runs
    for every row of every page and export)."""
    positions = [i for i, n in enumerate(names) if n in TIME_COLUMNS]
    out = []
    for row in rows:
        values = list(row)
        for i in positions:
            if values[i] is not None:
                values[i] = _iso(values[i])
        out.append(dict(zip(names, values, strict=True)))
    return out


def _connection(bind: Engine | Connection):
    return bind.connect() if isinstance(bind, Engine) else _Borrowed(bind)


class _Borrowed:
    """A connection the caller owns, used as a context manager without closing it."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


def list_executions(bind: Engine | Connection, filters: Filters, *, limit: int = 50,
                    cursor: str | None = None) -> Page:
    """One page of the executions ``filters`` selects, newest first, after ``cursor``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    after = decode_cursor(cursor) if cursor is not None else None
    names, rows = _page(bind, filters, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].finished_at, rows[-1].id) if more else None
    return Page(_rows_json(names, rows), next_cursor)


def _page(bind: Engine | Connection, filters: Filters, limit: int,
          after: tuple[float, int] | None) -> tuple[tuple[str, ...], list[Any]]:
    """The column names and rows of one keyset page."""
    c = executions.c
    clauses = filters.clauses()
    if after is not None:
        # the keyset: rows strictly older than the last one seen (a row value, which
        # both SQLite and PostgreSQL answer from the (…, finished_at, id) indexes)
        clauses.append(row_value(c.finished_at, c.id) < row_value(*after))
    stmt = select(executions).where(*clauses).order_by(*_ORDER).limit(limit)
    with _connection(bind) as conn:
        result = conn.execute(stmt)
        return tuple(result.keys()), result.all()


def iter_executions(bind: Engine | Connection, filters: Filters, *,
                    batch: int = MAX_LIMIT) -> Iterator[dict[str, Any]]:
    """Every execution ``filters`` selects, newest first, read in keyset batches of
    ``batch`` rows (each its own short query: constant memory, no long transaction)."""
    after: tuple[float, int] | None = None
    while True:
        names, rows = _page(bind, filters, batch, after)
        yield from _rows_json(names, rows)
        if len(rows) < batch:
            return
        after = (rows[-1].finished_at, rows[-1].id)


def get_execution(bind: Engine | Connection, user_id: str, task_id: str, step: int
                  ) -> tuple[dict[str, Any], list[Any] | None] | None:
    """The newest recorded execution ``(user_id, task_id, step)`` and its compacted event
    log (None when it has none, e.g. removed by retention), or None when not recorded."""
    c = executions.c
    stmt = (select(executions)
            .where(c.user_id == user_id, c.task_id == task_id, c.step == step)
            .order_by(c.finished_at.desc()).limit(1))
    with _connection(bind) as conn:
        row = conn.execute(stmt).first()
        if row is None:
            return None
        e = execution_events.c
        events = conn.execute(select(e.events_json).where(
            e.user_id == user_id, e.task_id == task_id, e.step == step,
            e.finished_at == row.finished_at)).scalar()
    return row_json(row), (json.loads(events) if events is not None else None)


def _day_key(bind: Engine | Connection) -> Any:
    """``finished_at``'s UTC day, ``YYYY-MM-DD``, in the database's dialect."""
    if bind.dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d", executions.c.finished_at, "unixepoch")
    return func.to_char(func.timezone("UTC", func.to_timestamp(executions.c.finished_at)),
                        "YYYY-MM-DD")


def usage(bind: Engine | Connection, filters: Filters, group_by: str) -> dict[str, Any]:
    """Executions, tokens and cost of the executions ``filters`` selects, summed per
    ``group_by`` (``day``: UTC day of ``finished_at``; ``provider``: the service;
    ``model``; ``template``: name and version; else ValueError) and in total.

    ``cost`` is None when no execution of a group has a price; ``unpriced`` counts the
    executions without one (their cost is not in the sum)."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    c = executions.c
    keys: list[Any] = {
        "day": [_day_key(bind).label("k")],
        "provider": [c.service.label("k")],
        "model": [c.model.label("k")],
        "template": [c.template_name.label("k"), c.template_version.label("v")],
    }[group_by]
    sums = [
        func.count().label("executions"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.sum(c.cost).label("cost"),
        func.sum(case((c.cost.is_(None), 1), else_=0)).label("unpriced"),
    ]
    stmt = (select(*keys, *sums).where(*filters.clauses())
            .group_by(*[k.element for k in keys]).order_by(*[k.element for k in keys]))
    groups: list[dict[str, Any]] = []
    with _connection(bind) as conn:
        for row in conn.execute(stmt):
            key = row.k
            if group_by == "template" and key is not None and row.v is not None:
                key = f"{key}@{row.v}"
            groups.append({"key": key, **_sums(row)})
    total = {"executions": sum(g["executions"] for g in groups),
             "input_tokens": sum(g["input_tokens"] for g in groups),
             "output_tokens": sum(g["output_tokens"] for g in groups),
             "cost": (None if all(g["cost"] is None for g in groups)
                      else sum(g["cost"] or 0.0 for g in groups)),
             "unpriced": sum(g["unpriced"] for g in groups)}
    return {"group_by": group_by, "groups": groups, "total": total}


def _sums(row: Any) -> dict[str, Any]:
    return {"executions": int(row.executions), "input_tokens": int(row.input_tokens),
            "output_tokens": int(row.output_tokens),
            "cost": float(row.cost) if row.cost is not None else None,
            "unpriced": int(row.unpriced or 0)}


def forget(engine: Engine, user_id: str) -> dict[str, int]:
    """Delete every row of ``user_id``: executions, payloads and event logs; the counts.

    Payloads and events go first, the executions last, so an interrupted forget leaves
    the rows listed and a second run finishes it. On SQLite the rows go in transactions of
    :data:`FORGET_BATCH` (the recorder's writes wait milliseconds, not the whole forget);
    on PostgreSQL one DELETE per table (row locks only: writers are not blocked).
    """
    counts = {}
    for name, table in (("payloads", execution_payloads), ("events", execution_events),
                        ("executions", executions)):
        counts[name] = _delete_user(engine, table, user_id)
    return counts


def _delete_user(engine: Engine, table: Any, user_id: str) -> int:
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            return conn.execute(delete(table).where(table.c.user_id == user_id)).rowcount
    rowid = literal_column("rowid")
    total = 0
    while True:
        with engine.begin() as conn:
            chosen = (select(rowid).select_from(table).where(table.c.user_id == user_id)
                      .limit(FORGET_BATCH).scalar_subquery())
            n = conn.execute(delete(table).where(rowid.in_(chosen))).rowcount
        total += n
        if n < FORGET_BATCH:
            return total
