"""Connecting to the history database and bringing its schema up to date.

:func:`connect` makes the engine: SQLite in WAL mode (readers never block the recorder's
writes, the recorder never blocks readers) or PostgreSQL through psycopg 3.
:func:`upgrade` applies the Alembic migrations shipped in :mod:`aiecs_history.migrations`;
several processes may call it at once (a lock serialises them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

__all__ = ["HEAD", "connect", "current_revision", "is_sqlite", "upgrade"]

#: The newest migration this package ships.
HEAD = "head"

_MIGRATIONS = "aiecs_history:migrations"
#: pg_advisory_xact_lock key of migrations ("aiecsmig" as an integer)
_LOCK_KEY = 0x616965637363


def is_sqlite(engine: Engine | Connection) -> bool:
    """Whether ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def connect(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    SQLite: the file's folder is created, the database is opened in WAL mode with
    ``synchronous=NORMAL`` (durable at each checkpoint, safe against a process crash) and
    waits up to 10 s for a lock instead of failing at once. ``kwargs`` go to
    :func:`sqlalchemy.create_engine`.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(os.path.expanduser(u.database)).parent.mkdir(parents=True, exist_ok=True)
            u = u.set(database=os.path.expanduser(u.database))
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 10)
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _config(connection: Connection) -> Any:
    from alembic.config import Config  # deferred: alembic is only needed to migrate

    cfg = Config()
    cfg.set_main_option("script_location", _MIGRATIONS)
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = HEAD) -> None:
    """Apply the migrations up to ``revision`` (default: the newest). Safe to call from
    several processes at once: PostgreSQL serialises them with an advisory lock, SQLite
    with a lock file beside the database."""
    from alembic import command  # deferred: alembic is only needed to migrate

    with _sqlite_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        command.upgrade(_config(conn), revision)


@contextlib.contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if is_sqlite(engine) else None
    if not database or database == ":memory:":
        yield
        return
    with open(database + ".migrate-lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
