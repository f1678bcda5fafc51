"""Alembic migrations of the history database (script_location ``aiecs_history:migrations``)."""
