"""script parameters: the typed parameters a stored script declares

``scripts.parameters`` (JSON, nullable): a list of ``{"name", "type", …}`` checked by
``scriptparams`` when saved; null for a script that declares none (its params are passed
as given, as before). One nullable column: no data changes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scripts") as batch:
        batch.add_column(sa.Column("parameters", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("scripts") as batch:
        batch.drop_column("parameters")
