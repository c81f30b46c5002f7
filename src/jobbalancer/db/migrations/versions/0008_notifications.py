"""notifications: targets, rules, the outbox, and a job's own rules

``notification_targets`` (webhook, Slack-compatible webhook, email), ``notification_rules``
(per worker class, or global), ``notifications`` (the outbox: one row per notification,
written with the job's change of state, delivered by the leader) and ``jobs.notify`` (the
rules a submission gave). New tables and one nullable column: no data changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 23:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobbalancer.db.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTC = jobbalancer.db.types.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "notification_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("recipients", sa.JSON(), nullable=True),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_notification_targets_name")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "notification_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("worker_class_id", sa.Integer(), nullable=True),
        sa.Column("on", sa.String(200), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_rules")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", UTC(), nullable=False),
        sa.Column("lease_until", UTC(), nullable=True),
        sa.Column("leased_by", sa.String(100), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("delivered_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("key", name=op.f("uq_notifications_key")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_notifications_state_next_at"), "notifications", ["state", "next_at"])
    op.create_index(op.f("ix_notifications_job_id"), "notifications", ["job_id"])
    op.create_index(op.f("ix_notifications_target_id_id"), "notifications", ["target_id", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notify")
    op.drop_table("notifications")
    op.drop_table("notification_rules")
    op.drop_table("notification_targets")
