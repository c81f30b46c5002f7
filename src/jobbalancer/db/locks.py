"""Serializing writers: a row lock for the length of a transaction, and leases (a lock
held across transactions, with an expiry, such as the monitor's leadership)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

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


def lock_rows(conn: sa.Connection, query: sa.Select[Any]) -> Sequence[sa.Row[Any]]:
    """The rows of ``query``, each locked against other writers until this transaction ends
    (SELECT ... FOR UPDATE; a locking read sees the latest committed rows, and on
    PostgreSQL a row changed meanwhile is checked against the WHERE again). Order the
    query (by key) so two callers take the locks in one order and cannot deadlock.

    SQLite: the plain rows; its write transaction already excludes every other writer.
    """
    return conn.execute(query.with_for_update()).all()


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
