"""Alembic environment: runs on the connection :func:`aiecs_history.db.upgrade` hands
over (``config.attributes["connection"]``), or on ``sqlalchemy.url`` when run by the
``alembic`` command."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from aiecs_history.tables import metadata

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
