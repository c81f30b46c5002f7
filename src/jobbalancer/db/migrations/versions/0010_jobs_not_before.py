"""jobs that start later, and retry policies: ``jobs.not_before`` and the retry fields

``not_before``: a ``delayed`` job is not run before it. ``retry_delay``, ``retry_backoff``,
``retry_max_delay``, ``retry_jitter`` and ``retry_on``: how a failed attempt is retried
(NULL: as before, at once, for failed and lost ends). An index on (state, not_before)
finds the due delayed jobs and the earliest one. New nullable columns: no data changes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobbalancer.db.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_RETRY_NUMBERS = ("retry_delay", "retry_backoff", "retry_max_delay", "retry_jitter")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", UTCDateTime))
        for name in _RETRY_NUMBERS:
            batch.add_column(sa.Column(name, sa.Double))
        batch.add_column(sa.Column("retry_on", sa.JSON))
    op.create_index(op.f("ix_jobs_state_not_before"), "jobs", ["state", "not_before"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_state_not_before"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_on")
        for name in reversed(_RETRY_NUMBERS):
            batch.drop_column(name)
        batch.drop_column("not_before")
