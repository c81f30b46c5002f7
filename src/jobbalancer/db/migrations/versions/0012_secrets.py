"""secrets: named, encrypted secrets for jobs; jobs name them (secret_env, secret_args)

A new table ``secrets`` (the value is AES-GCM ciphertext; the key is not in the database)
and two nullable JSON columns on ``jobs``. Notification targets' signing secrets are
encrypted by the server the next time they are written; ones stored in clear by an older
version are still read (jobbalancer/vault.py, ``unseal``), and this migration cannot
encrypt them (it has no key): the server does at its start (``notify.seal_stored``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobbalancer.db.types import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("worker_classes", sa.JSON),
        sa.Column("users", sa.JSON),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(200)),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("updated_by", sa.String(200)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("name", name=op.f("uq_secrets_name")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("secret_env", sa.JSON))
        batch.add_column(sa.Column("secret_args", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("secret_args")
        batch.drop_column("secret_env")
    op.drop_table("secrets")
