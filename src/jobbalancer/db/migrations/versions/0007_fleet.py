"""a worker's machine id and instance, and a job's working directory

``workers.machine_id`` and ``workers.instance`` tell two machines that share a host name
(cloned VMs, containers) and two processes that claim one worker name apart.
``jobs.workdir`` is the directory on the worker a job runs in (NULL: a private
temporary directory, as before). New nullable columns only: no data changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("machine_id", sa.String(64)))
        batch.add_column(sa.Column("instance", sa.String(160)))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("workdir", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("workdir")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("instance")
        batch.drop_column("machine_id")
