"""ids are never reused; failed logins are throttled per account and address

Ids: a new user got the id of a deleted one on SQLite, and with it the deleted user's
jobs (``jobs.user_id`` still named the id). Every table whose ids others refer to
(users, api_keys, worker_classes, workers, scripts, jobs) must never hand an id out twice:

* SQLite reuses the highest id after a delete unless the table is ``AUTOINCREMENT``, which
  only ``CREATE TABLE`` can say: each table is rebuilt (Alembic's batch mode; the
  foreign keys are off meanwhile, see ``db.upgrade``, so dropping the old ``users`` does
  not cascade into ``api_keys`` and ``web_sessions``). Its counter then starts past every
  id the database still refers to, so an id deleted before this upgrade but named by a
  job is not handed out either.
* PostgreSQL: no change. A ``SERIAL``'s sequence never goes back (nothing here calls
  ``setval`` lower), deleted ids included.
* MariaDB/MySQL: no change. InnoDB's ``AUTO_INCREMENT`` counter is persisted since
  MariaDB 10.2.4 and MySQL 8.0; an older server resets it to the highest id + 1 when it
  restarts, so this migration warns on one (tested on MariaDB 10.11).

Logins: ``users.failed_logins``/``locked_until`` locked an account for anyone after five
failures from anywhere. They give way to ``login_failures``, keyed by (account, address).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:30:00
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

import jobbalancer.db.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Each table whose ids others refer to, and the columns elsewhere that hold its ids.
REFERRED = {
    "worker_classes": [("workers", "worker_class_id"), ("jobs", "worker_class_id")],
    "users": [("jobs", "user_id"), ("api_keys", "user_id"), ("web_sessions", "user_id")],
    "api_keys": [],
    "scripts": [("jobs", "script_id")],
    "workers": [("jobs", "worker_id")],
    "jobs": [("jobs", "retry_of"), ("jobs", "restarted_from"), ("job_output", "job_id")],
}


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", jobbalancer.db.types.UTCDateTime(), nullable=False),
        sa.Column("next_try_at", jobbalancer.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account", "address", name=op.f("pk_login_failures")),
    )
    op.create_index(
        op.f("ix_login_failures_last_failure_at"), "login_failures", ["last_failure_at"]
    )
    with op.batch_alter_table("users") as batch:
        batch.drop_column("locked_until")
        batch.drop_column("failed_logins")
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for table in REFERRED:
            _rebuild(table, autoincrement=True)
        _start_counters_past_references()
    elif bind.dialect.name in ("mysql", "mariadb"):
        _warn_if_counters_are_forgotten(bind)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in REFERRED:
            _rebuild(table, autoincrement=False)
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("locked_until", jobbalancer.db.types.UTCDateTime()))
    op.drop_index(op.f("ix_login_failures_last_failure_at"), table_name="login_failures")
    op.drop_table("login_failures")


def _rebuild(table: str, *, autoincrement: bool) -> None:
    with op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    if table == "jobs":  # the copy lost the index's DESC (see 0005): made again as it was
        op.drop_index("ix_jobs_queue", table_name="jobs")
        op.create_index(
            "ix_jobs_queue", "jobs", ["state", "worker_class_id", sa.text("priority DESC"), "id"]
        )


def _warn_if_counters_are_forgotten(bind: sa.Connection) -> None:
    version = bind.dialect.server_version_info or ()
    is_mariadb = bool(getattr(bind.dialect, "is_mariadb", False))
    if version < ((10, 2, 4) if is_mariadb else (8, 0)):
        logging.getLogger(__name__).warning(
            "this %s server (%s) forgets AUTO_INCREMENT counters when it restarts: the id "
            "of the newest user, job or script deleted before a restart can be given "
            "again. Upgrade to MariaDB 10.2.4 or MySQL 8.0 or later.",
            "MariaDB" if is_mariadb else "MySQL",
            ".".join(str(part) for part in version),
        )


def _start_counters_past_references() -> None:
    """SQLite: each table's next id is past the highest id anything names, deleted or not."""
    for table, references in REFERRED.items():
        highest = " UNION ALL ".join(
            [f"SELECT MAX(id) AS id FROM {table}"]  # noqa: S608 - names from REFERRED
            + [f"SELECT MAX({column}) FROM {other}" for other, column in references]  # noqa: S608
        )
        op.execute(f"DELETE FROM sqlite_sequence WHERE name = '{table}'")  # noqa: S608
        op.execute(
            f"INSERT INTO sqlite_sequence (name, seq) "  # noqa: S608
            f"SELECT '{table}', COALESCE(MAX(id), 0) FROM ({highest})"
        )
