"""Serializing writers: a row lock for the length of a transaction, and leases (a lock
held across transactions, with an expiry, such as the monitor's leadership)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from jobbalancer.db import backends, schema
from jobbalancer.db.connections import now
from jobbalancer.db.types import utcnow


def lock_row(conn: sa.Connection, name: str) -> None:
    """Serialize writers on ``name`` until this transaction ends.

    SQLite: a write transaction (BEGIN IMMEDIATE) already excludes every other writer.
    PostgreSQL and MariaDB: a row lock on the ``locks`` table, released at commit.
    """
    backends.of(conn).lock_row(conn, name)


def take_lease(conn: sa.Connection, name: str, holder: str, seconds: float) -> bool:
    """Hold the lease ``name`` for ``seconds`` more if it is free, expired, or ours."""
    t = schema.locks
    expires = now(conn) + timedelta(seconds=seconds)
    result = conn.execute(
        sa.update(t)
        .where(t.c.name == name)
        .where(sa.or_(t.c.holder == holder, t.c.holder.is_(None), t.c.expires_at < utcnow()))
        .values(holder=holder, expires_at=expires)
    )
    return result.rowcount == 1


def release_lease(conn: sa.Connection, name: str, holder: str) -> None:
    t = schema.locks
    conn.execute(
        sa.update(t)
        .where(t.c.name == name, t.c.holder == holder)
        .values(holder=None, expires_at=None)
    )
