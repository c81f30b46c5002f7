"""schedules: cron schedules, their occurrences, and jobs.schedule_id

``schedules`` (a job body, a cron expression and zone, the overlap and catch-up policies,
the next fire time the leader's tick looks for, indexed), ``schedule_occurrences`` (one
row per occurrence decided, unique per schedule and time: the exactly-once guarantee),
``schedule_counters`` (the Prometheus counters, seeded here) and ``jobs.schedule_id``
with an index (schedule_id, state). New tables and one nullable column: no data changes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobbalancer.db.types

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UTC = jobbalancer.db.types.UTCDateTime
COUNTERS = (
    "fired", "late", "skipped:overlap", "skipped:queue_full", "skipped:owner",
    "skipped:refused", "skipped:missed",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("job", sa.JSON(), nullable=False),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("overlap", sa.String(8), nullable=False),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("catch_up_max", sa.Integer(), nullable=False),
        sa.Column("start_at", UTC(), nullable=True),
        sa.Column("end_at", UTC(), nullable=True),
        sa.Column("next_fire_at", UTC(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(200), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("updated_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_schedules_name")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_schedules_next_fire_at"), "schedules", ["next_fire_at"])
    op.create_index(op.f("ix_schedules_user_id"), "schedules", ["user_id"])
    op.create_table(
        "schedule_occurrences",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("fire_at", UTC(), nullable=False),
        sa.Column("recorded_at", UTC(), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.String(16), nullable=True),
        sa.Column("late_ms", sa.BigInteger(), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_occurrences")),
        sa.UniqueConstraint(
            "schedule_id", "fire_at", name=op.f("uq_schedule_occurrences_schedule_id_fire_at")
        ),
        sqlite_autoincrement=True,
    )
    counters = op.create_table(
        "schedule_counters",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedule_counters")),
    )
    op.bulk_insert(counters, [{"name": name, "count": 0} for name in COUNTERS])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("schedule_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_jobs_schedule_id_state"), "jobs", ["schedule_id", "state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_schedule_id_state"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("schedule_id")
    op.drop_table("schedule_counters")
    op.drop_table("schedule_occurrences")
    op.drop_index(op.f("ix_schedules_user_id"), table_name="schedules")
    op.drop_index(op.f("ix_schedules_next_fire_at"), table_name="schedules")
    op.drop_table("schedules")
