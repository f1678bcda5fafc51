"""The history database's schema: the migrations build it from empty and from each
earlier revision, on SQLite and on a real PostgreSQL, and agree with the tables the code
uses."""

from __future__ import annotations

import threading

from aiecs_history import db, tables
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select, text


def _revisions() -> list[str]:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "aiecs_history:migrations")
    script = ScriptDirectory.from_config(cfg)
    assert len(script.get_heads()) == 1, f"several migration heads: {script.get_heads()}"
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _of_a_partition(diff) -> bool:
    obj = diff[1]
    table = obj if diff[0].endswith("_table") else getattr(obj, "table", None)
    return table is not None and table.name.endswith("_default")


def test_upgrade_from_empty_matches_the_tables(database_url):
    engine = db.connect(database_url)
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == _revisions()[-1]
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), tables.metadata)
    # PostgreSQL lists each partition (its indexes too) as a table of its own
    diffs = [d for d in diffs if not _of_a_partition(d)]
    assert diffs == []
    engine.dispose()


def test_upgrade_from_every_earlier_revision(database_url):
    """Each release's database upgrades to the newest schema (rows kept)."""
    revisions = _revisions()
    for i, start in enumerate(revisions):
        url = database_url if i == 0 else None
        if url is None:
            return  # one revision only so far: upgrading from it is the test above
        engine = db.connect(url)
        db.upgrade(engine, start)
        with engine.begin() as conn:
            conn.execute(insert(tables.executions).values(
                user_id="u", task_id="t", step=1, mode="m", service="s", operation="o",
                status="completed", finished_at=1.0))
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(select(tables.executions.c.task_id)).scalars().all() == ["t"]
        engine.dispose()


def test_concurrent_upgrades_apply_once(database_url):
    """Several recorders starting together: one applies the migrations, none fails."""
    engines = [db.connect(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def run(engine):
        try:
            db.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db.current_revision(engines[0]) == _revisions()[-1]
    for e in engines:
        e.dispose()


def test_identity_is_unique(database_url):
    """Writing one terminal record twice is refused by the identity constraint."""
    engine = db.connect(database_url)
    db.upgrade(engine)
    row = dict(user_id="u", task_id="t", step=1, mode="m", service="s", operation="o",
               status="completed", finished_at=12.5)
    with engine.begin() as conn:
        conn.execute(insert(tables.executions).values(**row))
    import sqlalchemy.exc

    try:
        with engine.begin() as conn:
            conn.execute(insert(tables.executions).values(**row))
    except sqlalchemy.exc.IntegrityError:
        pass
    else:
        raise AssertionError("the same execution was written twice")
    engine.dispose()


def test_sqlite_is_in_wal_mode(tmp_path):
    engine = db.connect(f"sqlite:///{tmp_path}/sub/dir/h.db")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "sub" / "dir" / "h.db").exists()
    engine.dispose()


def test_postgres_execution_tables_are_partitioned_by_finish_time(postgres_server):
    engine = db.connect(postgres_server.create_database())
    db.upgrade(engine)
    with engine.connect() as conn:
        parted = conn.execute(text(
            "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
        )).scalars().all()
        assert sorted(parted) == ["execution_events", "execution_payloads", "executions"]
        assert "executions_default" in inspect(conn).get_table_names()
    engine.dispose()
