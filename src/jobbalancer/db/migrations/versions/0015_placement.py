"""placement: a worker's capacity and labels, a job's requests and why it waits

``workers.cpus``, ``workers.memory``, ``workers.gpus`` (NULL: not limited) and
``workers.labels``; ``jobs.cpus``, ``jobs.memory``, ``jobs.gpus``, ``jobs.constraints``
(NULL: none, the job needs one slot as before) and ``jobs.pending_reason``;
``worker_classes.requests`` and ``scripts.requests``, what their jobs request unless
they say. New nullable
columns only: no data changes.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("worker_classes", "scripts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("requests", sa.JSON))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("cpus", sa.Double))
        batch.add_column(sa.Column("memory", sa.BigInteger))
        batch.add_column(sa.Column("gpus", sa.Integer))
        batch.add_column(sa.Column("labels", sa.JSON))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cpus", sa.Double))
        batch.add_column(sa.Column("memory", sa.BigInteger))
        batch.add_column(sa.Column("gpus", sa.Integer))
        batch.add_column(sa.Column("constraints", sa.JSON))
        batch.add_column(sa.Column("pending_reason", sa.String(300)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in ("pending_reason", "constraints", "gpus", "memory", "cpus"):
            batch.drop_column(name)
    with op.batch_alter_table("workers") as batch:
        for name in ("labels", "gpus", "memory", "cpus"):
            batch.drop_column(name)
    for table in ("scripts", "worker_classes"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("requests")
