"""aiecs history: the durable record of executions, usage and templates.

:mod:`.tables` declares the schema (SQLAlchemy Core), :mod:`.db` connects to it and applies
the Alembic migrations in :mod:`aiecs_history.migrations`, :mod:`.writes` is the recorder's
idempotent batch insert and :mod:`.retention` the per-kind clean-up (daily partitions on
PostgreSQL, small batched deletes on SQLite). Nothing here talks to Redis or Celery.
"""

__all__: list[str] = []
