"""index jobs (state, id): the job list filtered by state, newest first

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 18:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_jobs_state_id"), "jobs", ["state", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_state_id"), table_name="jobs")
