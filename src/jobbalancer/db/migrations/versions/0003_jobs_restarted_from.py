"""index jobs.restarted_from (a job's page links to its restarts)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 18:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_jobs_restarted_from"), "jobs", ["restarted_from"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_restarted_from"), table_name="jobs")
