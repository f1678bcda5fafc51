"""The schema: SQLAlchemy Core tables.

Times are UNIX seconds (``Double``): portable between SQLite and PostgreSQL, ordered, and
the range key of PostgreSQL's time partitions (``finished_at``). An execution is identified
by ``(user_id, task_id, step, finished_at)``: the terminal record's ``finished_at`` is set
once, by the one script that ends it, so a recorder writing the same outbox entry twice
writes one row.

Retention is per kind, each kind its own table so it can be dropped on its own schedule:
``executions`` (rows), ``execution_payloads`` (inputs and results, opt-in) and
``execution_events`` (the compacted event log). On PostgreSQL the three are partitioned by
``finished_at`` (see the migrations), which is why ``finished_at`` is part of every key.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = [
    "execution_events",
    "execution_payloads",
    "executions",
    "metadata",
    "template_label_moves",
    "template_labels",
    "template_versions",
    "templates",
]

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

#: SQLite makes only an ``INTEGER PRIMARY KEY`` column autoincrement.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

#: One row per finished execution, written by the recorder when it ends.
executions = Table(
    "executions", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    # identity
    Column("user_id", String(128), nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("step", Integer, nullable=False),
    Column("celery_id", String(64)),
    Column("batch_id", String(128)),
    Column("workflow_id", String(128)),
    Column("schedule_id", String(128)),
    # what ran, where
    Column("mode", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("operation", String(128), nullable=False),
    Column("model", String(256)),
    Column("queue", String(64)),
    Column("worker", String(256)),
    Column("plugin_dist", String(128)),
    Column("plugin_version", String(64)),
    Column("template_name", String(128)),
    Column("template_version", Integer),
    # outcome
    Column("status", String(16), nullable=False),
    Column("error_type", String(128)),
    Column("error_message", String(1000)),
    Column("deliveries", Integer, nullable=False, default=0),
    # times (UNIX seconds) and durations
    Column("created_at", Double),
    Column("started_at", Double),
    Column("first_output_at", Double),
    Column("finished_at", Double, nullable=False),
    Column("queue_wait_ms", Integer),
    Column("run_ms", Integer),
    # usage and cost
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("usage_source", String(16), nullable=False, default="unknown"),
    Column("cost", Double),
    Column("price_version", String(64)),
    Column("recorded_at", Double),
    UniqueConstraint("user_id", "task_id", "step", "finished_at",
                     name="uq_executions_identity"),
    # a user's history, newest first (keyset: finished_at, id)
    Index("ix_executions_user_finished", "user_id", "finished_at", "id"),
    # every user's (operators), and retention
    Index("ix_executions_finished", "finished_at", "id"),
    # the selective filters of GET /executions (revision 0002): a user's failures, a
    # batch's or workflow's executions, a template's runs (partial: most rows have none)
    Index("ix_executions_user_status_finished", "user_id", "status", "finished_at", "id"),
    Index("ix_executions_batch_id", "batch_id", "finished_at", "id",
          sqlite_where=text("batch_id IS NOT NULL"),
          postgresql_where=text("batch_id IS NOT NULL")),
    Index("ix_executions_workflow_id", "workflow_id", "finished_at", "id",
          sqlite_where=text("workflow_id IS NOT NULL"),
          postgresql_where=text("workflow_id IS NOT NULL")),
    Index("ix_executions_template_name", "template_name", "finished_at", "id",
          sqlite_where=text("template_name IS NOT NULL"),
          postgresql_where=text("template_name IS NOT NULL")),
)

#: Inputs and results, stored only when the operator opts in (size-capped, redacted).
execution_payloads = Table(
    "execution_payloads", metadata,
    Column("user_id", String(128), nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("step", Integer, nullable=False),
    Column("finished_at", Double, nullable=False),
    Column("input_json", Text),
    Column("result_json", Text),
    PrimaryKeyConstraint("user_id", "task_id", "step", "finished_at"),
    # retention (batched deletes on SQLite and in PostgreSQL's DEFAULT partition)
    Index("ix_execution_payloads_finished_at", "finished_at"),
)

#: The compacted event log of a finished execution (stream deltas merged), so it can be
#: replayed and shown after its Redis keys expire.
execution_events = Table(
    "execution_events", metadata,
    Column("user_id", String(128), nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("step", Integer, nullable=False),
    Column("finished_at", Double, nullable=False),
    Column("events_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "task_id", "step", "finished_at"),
    Index("ix_execution_events_finished_at", "finished_at"),
)

#: A template: a name; its content lives in immutable numbered versions.
templates = Table(
    "templates", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(128)),
    # who shipped it: an operator ("api", "file") or a plugin's distribution name
    Column("source", String(128)),
)

#: One immutable version of a template (identical content is not a new version).
template_versions = Table(
    "template_versions", metadata,
    Column("template_id", ForeignKey("templates.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("mode", String(64), nullable=False),
    Column("service", String(64), nullable=False),
    Column("operation", String(128), nullable=False),
    Column("input_json", Text, nullable=False),
    Column("variables_schema_json", Text, nullable=False),
    Column("defaults_json", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(128)),
    PrimaryKeyConstraint("template_id", "version"),
    UniqueConstraint("template_id", "content_hash", name="uq_template_versions_content"),
)

#: A label (``production``, ``staging``, ...) pointing at one version; moved by
#: compare-and-swap only.
template_labels = Table(
    "template_labels", metadata,
    Column("template_id", ForeignKey("templates.id", ondelete="CASCADE"), nullable=False),
    Column("label", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("updated_by", String(128)),
    PrimaryKeyConstraint("template_id", "label"),
)

#: Every move of a label: who moved it, from which version to which, when.
template_label_moves = Table(
    "template_label_moves", metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("template_id", ForeignKey("templates.id", ondelete="CASCADE"), nullable=False),
    Column("label", String(64), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("moved_at", Double, nullable=False),
    Column("moved_by", String(128)),
    Index("ix_template_label_moves_label", "template_id", "label", "id"),
)
