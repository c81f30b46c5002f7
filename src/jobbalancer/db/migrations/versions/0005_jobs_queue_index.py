"""the queue's index in the queue's order: (state, worker_class_id, priority DESC, id)

The balancer takes waiting jobs highest priority first, then oldest. With priority
ascending in the index, that mixed order cannot be read off the index, so every pick-up
sorted all waiting jobs of the class: its cost grew with the queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 18:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_queue", "jobs", ["state", "worker_class_id", sa.text("priority DESC"), "id"]
    )
    op.drop_index(op.f("ix_jobs_state_worker_class_id_priority_id"), table_name="jobs")


def downgrade() -> None:
    op.create_index(
        op.f("ix_jobs_state_worker_class_id_priority_id"),
        "jobs",
        ["state", "worker_class_id", "priority", "id"],
    )
    op.drop_index("ix_jobs_queue", table_name="jobs")
