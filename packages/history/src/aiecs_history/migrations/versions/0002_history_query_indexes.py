"""Indexes of the history's selective filters (GET /executions, aiecs history).

A user's history newest first is served by ``ix_executions_user_finished`` (0001); these
serve the filters that select few of a user's rows, which that index would have to scan
past: a status (``failed``), a batch, a workflow, a template. The last three are partial
(most executions belong to no batch, workflow or template). On PostgreSQL an index of the
partitioned table is created on every partition.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PARTIAL = ("batch_id", "workflow_id", "template_name")


def upgrade() -> None:
    op.create_index("ix_executions_user_status_finished", "executions",
                    ["user_id", "status", "finished_at", "id"])
    for column in _PARTIAL:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(f"ix_executions_{column}", "executions",
                        [column, "finished_at", "id"],
                        sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for column in reversed(_PARTIAL):
        op.drop_index(f"ix_executions_{column}", table_name="executions")
    op.drop_index("ix_executions_user_status_finished", table_name="executions")
