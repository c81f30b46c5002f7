"""metric tallies: counters and histograms of job starts and ends for /metrics

``metric_counts`` holds the counters (jobs ended, by class and state) and the histograms
(wait and run time, by class and bucket); ``metric_cursors`` how far the scrapes have
folded jobs in, one cursor in the order of ``jobs.finished_at`` and one of
``jobs.started_at`` (with a new index on it). Both cursors start at the first scrape
(``at`` NULL until then): jobs that ended before it are not counted. New tables, two
cursor rows and an index: no data changes.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobbalancer.db.types

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UTC = jobbalancer.db.types.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "metric_counts",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("worker_class", sa.String(200), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", "worker_class", "label", name=op.f("pk_metric_counts")),
    )
    cursors = op.create_table(
        "metric_cursors",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("at", UTC(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_metric_cursors")),
    )
    assert cursors is not None
    op.bulk_insert(cursors, [{"name": n, "at": None, "job_id": 0} for n in ("ended", "started")])
    op.create_index("ix_jobs_started_at", "jobs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_started_at", table_name="jobs")
    op.drop_table("metric_cursors")
    op.drop_table("metric_counts")
