"""job dependencies: a job held until other jobs end (chains)

``job_dependencies`` holds one row per (child, parent): what the child waits for
(``on_end``: success, failure or any) and whether the parent's end met it. Indexed by
parent, which is how a job's end finds the jobs waiting for it. And an index on
``jobs.retry_of``: a child submitted after a failed parent waits for its retry, found by
it. A new table and an index: no data changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 23:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_dependencies",
        sa.Column("child_id", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.Integer, nullable=False),
        sa.Column("on_end", sa.String(8), nullable=False),
        sa.Column("met", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name=op.f("pk_job_dependencies")),
    )
    op.create_index(op.f("ix_job_dependencies_parent_id"), "job_dependencies", ["parent_id"])
    op.create_index(op.f("ix_jobs_retry_of"), "jobs", ["retry_of"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_retry_of"), table_name="jobs")
    op.drop_index(op.f("ix_job_dependencies_parent_id"), table_name="job_dependencies")
    op.drop_table("job_dependencies")
