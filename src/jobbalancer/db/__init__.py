"""The database layer. Callers use it through this package's names (``db.write``,
``db.read``, ``db.upgrade`` …); the modules behind them:

* ``connections``: engines, the three kinds of connection (write, read, one statement),
  "the database is unavailable" (:data:`UNAVAILABLE`), the database clock;
* ``backends``: what differs between SQLite, PostgreSQL and MariaDB/MySQL, one class each;
* ``locks``: row locks and leases;
* ``migrate``: schema upgrades (alembic scripts in ``migrations/``), and checking that a
  database's schema is this version's;
* ``grants``: the least-privilege database role for workers;
* ``wake``: waking workers after a commit (datagram, NOTIFY);
* ``schema`` and ``types``: the tables and the column types they share.
"""

from __future__ import annotations

from jobbalancer.db import backends, connections, grants, locks, migrate, schema, types, wake
from jobbalancer.db.connections import (
    UNAVAILABLE,
    after_commit,
    backend,
    connect,
    count_up,
    is_disconnect,
    normalize_url,
    now,
    one_statement,
    read,
    writable_ctes,
    write,
)
from jobbalancer.db.locks import lock_row, lock_rows, release_lease, take_lease
from jobbalancer.db.migrate import (
    MIGRATIONS,
    check_schema,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    schema_revision,
    upgrade,
)
from jobbalancer.db.types import utcnow
from jobbalancer.db.wake import WAKE_CHANNEL, WakeListener, wake_address, wake_workers

__all__ = [
    "MIGRATIONS",
    "UNAVAILABLE",
    "WAKE_CHANNEL",
    "WakeListener",
    "after_commit",
    "backend",
    "backends",
    "check_schema",
    "connect",
    "connections",
    "count_up",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "grants",
    "head_revision",
    "is_disconnect",
    "lock_row",
    "lock_rows",
    "locks",
    "migrate",
    "normalize_url",
    "now",
    "one_statement",
    "read",
    "release_lease",
    "schema",
    "schema_revision",
    "take_lease",
    "types",
    "upgrade",
    "utcnow",
    "wake",
    "wake_address",
    "wake_workers",
    "writable_ctes",
    "write",
]
