"""audit log; scoped and expiring API keys

``audit_log`` holds one row per change (who, how, from where, what, on which object, a
short summary), written in the change's own transaction. ``api_keys`` gets ``scope``
(read, submit, operate or admin) and ``expires_at`` (NULL: never). Existing keys get the
scope of their user's role, so nobody's rights change.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import jobbalancer.db.types

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UTC = jobbalancer.db.types.UTCDateTime
LongText = jobbalancer.db.types.LongText

# A role's scope: a key of a viewer may read, of a submitter submit, and so on.
ROLE_SCOPES = {"viewer": "read", "submitter": "submit", "operator": "operate", "admin": "admin"}


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", UTC(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("via", sa.String(40), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(40), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=True),
        sa.Column("object_name", sa.String(200), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("summary", LongText, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_actor_name"), "audit_log", ["actor_name"])
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])
    op.create_index(
        op.f("ix_audit_log_object_type_object_id"), "audit_log", ["object_type", "object_id"]
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="read"))
        batch.add_column(sa.Column("expires_at", UTC(), nullable=True))
    keys, users = (
        sa.table("api_keys", sa.column("user_id"), sa.column("scope")),
        sa.table("users", sa.column("id"), sa.column("role")),
    )
    for role, scope in ROLE_SCOPES.items():
        owners = sa.select(users.c.id).where(users.c.role == role).scalar_subquery()
        op.execute(keys.update().where(keys.c.user_id.in_(owners)).values(scope=scope))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("scope")
    op.drop_index(op.f("ix_audit_log_object_type_object_id"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_actor_name"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_at"), table_name="audit_log")
    op.drop_table("audit_log")
