"""Serializing writers: a row lock for the length of a transaction, and leases (a lock
held across transactions, with an expiry, such as the monitor's leadership)."""

from __future__ import annotations

import weakref
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
    PostgreSQL and MariaDB: a row lock on the ``locks`` table, released at commit. Taken
    once per transaction: asked again in the same one (a worker recording an end decides
    its chains, then fills its slot, each under the ``assign`` lock), it is a round trip
    saved. A lock taken inside a savepoint is not counted as held (on PostgreSQL, rolling
    back to the savepoint releases it), nor one taken on a connection whose statements
    commit each (``isolation_level="AUTOCOMMIT"`` in its execution options; an engine made
    to autocommit everything would defeat this: none is).
    """
    txn = conn.get_transaction()
    held: tuple[weakref.ref[sa.RootTransaction], set[str]] | None = conn.info.get(_HELD)
    if held is not None and txn is not None and held[0]() is txn and name in held[1]:
        return
    backends.of(conn).lock_row(conn, name)
    if txn is None or conn.in_nested_transaction():
        return
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return  # each statement commits: nothing is held after it
    if held is None or held[0]() is not txn:
        # conn.info outlives the transaction (it is the pooled connection's): the names
        # are kept with (a weak reference to) the transaction they were taken in, which a
        # later one never is.
        conn.info[_HELD] = held = (weakref.ref(txn), set())
    held[1].add(name)


_HELD = "jobbalancer.locks_held"


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
