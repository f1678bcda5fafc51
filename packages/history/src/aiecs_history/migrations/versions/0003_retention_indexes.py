"""Indexes on finished_at of the payload and event tables: retention deletes their
expired rows in small batches (SQLite, PostgreSQL's DEFAULT partition) without scanning
the whole table for each batch.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_execution_payloads_finished_at", "execution_payloads", ["finished_at"])
    op.create_index("ix_execution_events_finished_at", "execution_events", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_execution_events_finished_at", "execution_events")
    op.drop_index("ix_execution_payloads_finished_at", "execution_payloads")
