"""What differs between SQLite, PostgreSQL and MariaDB/MySQL, one class per backend.

The rest of ``db/`` asks the backend object (:func:`for_url`, :func:`of`) instead of
comparing names, so adding a backend means adding a class here and listing it in
:data:`BACKENDS`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
import sqlalchemy.dialects.mysql  # db/types.py's column types load it anyway
import sqlalchemy.dialects.sqlite
from sqlalchemy import event
from sqlalchemy.engine import URL

from jobbalancer import procsec
from jobbalancer.db import schema
from jobbalancer.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# SQLite's files beside the database: WAL, shared memory, rollback journal, our lock.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal", ".migrate-lock")

# A client cut off mid-transaction (its host's link down) must not hold the `assign` lock
# until TCP gives up, hours later, stalling every balancer and the monitor meanwhile: the
# server ends a transaction left idle for 10 s (ours last milliseconds and never wait on a
# client), and keepalives and a send timeout let the client find a dead server. The server
# side gets the same keepalives (user-settable GUCs, so through `options`): a worker host
# that vanished has its backends ended in about 40 s instead of the OS's 2 h: probes start
# after 10 s of silence, and with TCP_USER_TIMEOUT set Linux ends the connection when they
# stay unanswered for that long (30 s; tcp(7)), before the 3 x 5 s count runs out.
KEEPALIVE_IDLE = 10  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 5  # seconds between probes
KEEPALIVE_COUNT = 3  # unanswered probes that end the connection
USER_TIMEOUT_MS = 30_000  # unacknowledged data that ends the connection
POSTGRES_LIVENESS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": USER_TIMEOUT_MS,
    "options": " ".join(
        f"-c {name}={value}"
        for name, value in (
            ("tcp_keepalives_idle", KEEPALIVE_IDLE),
            ("tcp_keepalives_interval", KEEPALIVE_INTERVAL),
            ("tcp_keepalives_count", KEEPALIVE_COUNT),
            ("tcp_user_timeout", USER_TIMEOUT_MS),
            ("idle_in_transaction_session_timeout", 10_000),
        )
    ),
}
# MariaDB ends a session idle this long (its default, 8 h, kept a dead worker host's
# connections open all that time; its TCP keepalive settings are global, the DBA's: see
# docs/operations.md). The pool pings a connection idle for a while before using it, and
# replaces one the server closed.
MARIADB_WAIT_TIMEOUT = 300


def postgres_connect_args() -> dict[str, Any]:
    """libpq's connection arguments for every connection to PostgreSQL: the pool's and the
    wake listener's (idle for ever, so keepalives matter most there)."""
    return {"connect_timeout": 10, **POSTGRES_LIVENESS}


# Taken by every submission on PostgreSQL and MariaDB: built once (building it cost about
# as much as its round trip).
_LOCK_ROW = (
    sa.select(schema.locks.c.name)
    .where(schema.locks.c.name == sa.bindparam("b_name"))
    .with_for_update()
)


class Backend:
    """A database server jobbalancer runs on. The defaults are those of a networked server
    with row locks (PostgreSQL, MariaDB); SQLite overrides most of them."""

    name: ClassVar[str]
    # URL driver names that mean this backend, and the driver we ship for them.
    aliases: ClassVar[tuple[str, ...]] = ()
    driver: ClassVar[str] = ""
    example: ClassVar[str]  # how a URL of this backend starts, for error messages
    # Pooled connections are pinged after idling (see connections._ping_after_idle).
    pooled: ClassVar[bool] = True
    # A change may run as one statement outside a transaction (connections.one_statement).
    one_statement_ok: ClassVar[bool] = True
    # An UPDATE … RETURNING may sit in a WITH of a SELECT.
    writable_ctes: ClassVar[bool] = False
    # Workers are woken across hosts by NOTIFY and LISTEN (db/wake.py).
    notifies: ClassVar[bool] = False

    def engine(self, url: URL, pool_size: int) -> sa.Engine:
        raise NotImplementedError

    @staticmethod
    def _pool(pool_size: int) -> dict[str, Any]:
        return {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "pool_recycle": 3600,
            # The connection used last is used next: it is the one least likely to be stale.
            "pool_use_lifo": True,
        }

    def lock_row(self, conn: sa.Connection, name: str) -> None:
        """A row lock on the ``locks`` table, released at commit."""
        conn.execute(_LOCK_ROW, {"b_name": name}).first()

    def count_up(
        self, table: sa.Table, row: dict[str, Any], key: list[str], add: dict[str, Any]
    ) -> sa.Executable:
        """INSERT ``row``, or on a clash of ``key`` UPDATE with ``add`` (ON CONFLICT)."""
        insert = self._insert(table).values(row)
        statement: sa.Executable = insert.on_conflict_do_update(index_elements=key, set_=add)
        return statement

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, the one with ON CONFLICT or its counterpart."""
        raise NotImplementedError

    @contextlib.contextmanager
    def upgrade_lock(self, engine: sa.Engine) -> Iterator[None]:
        """Held across a migration: a session-level advisory lock on its own connection."""
        take, release = self._advisory_lock()
        with engine.connect() as conn:
            conn.exec_driver_sql(take)
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql(release)
                conn.commit()

    def _advisory_lock(self) -> tuple[str, str]:
        raise NotImplementedError

    @contextlib.contextmanager
    def migrating(self, conn: sa.Connection) -> Iterator[None]:
        """Around a migration on ``conn``: nothing to do by default."""
        yield

    def wake_ident(self, url: URL) -> str:
        """What names the database for wake-up sockets (see db/wake.py)."""
        return f"{url.get_backend_name()}://{url.host}:{url.port}/{url.database}"


class SQLite(Backend):
    name = "sqlite"
    example = "sqlite:///PATH"
    pooled = False
    # Its transactions are begun by us (see _sqlite_on_begin), never left to the driver.
    one_statement_ok = False

    def _insert(self, table: sa.Table) -> Any:
        return sa.dialects.sqlite.insert(table)

    def engine(self, url: URL, pool_size: int) -> sa.Engine:
        if url.database and url.database != ":memory:":
            private_sqlite_files(Path(url.database))
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=5,
            max_overflow=10,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    def lock_row(self, conn: sa.Connection, name: str) -> None:
        """Nothing: a write transaction (BEGIN IMMEDIATE) already excludes every other writer."""

    @contextlib.contextmanager
    def upgrade_lock(self, engine: sa.Engine) -> Iterator[None]:
        """An flock on a file beside the database (none for an in-memory one)."""
        path = engine.url.database
        if not path or path == ":memory:":
            yield
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            lock_fd = os.open(f"{path}.migrate-lock", flags, procsec.PRIVATE_FILE_MODE)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot use the SQLite database {path}: {exc}") from exc
        with os.fdopen(lock_fd, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def migrating(self, conn: sa.Connection) -> Iterator[None]:
        """Migrate without enforcing foreign keys, as SQLite prescribes for rebuilding a
        table (a DROP TABLE of the old copy of ``users`` would otherwise cascade its deletes
        into ``api_keys``); checked at the end instead. The pragma is a no-op inside a
        transaction, so it is set on the driver's connection before anything begins and
        after the commit."""
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            yield
            broken = raw.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise ConfigError(f"the database has rows whose references are broken: {broken}")
        except BaseException:
            conn.rollback()
            raise
        finally:
            raw.execute("PRAGMA foreign_keys=ON")
            if raw.execute("PRAGMA foreign_keys").fetchone() != (1,):
                conn.invalidate()  # never back into the pool without foreign keys

    def wake_ident(self, url: URL) -> str:
        return os.path.realpath(url.database or "")


class PostgreSQL(Backend):
    name = "postgresql"
    aliases = ("postgresql", "postgres")
    driver = "postgresql+psycopg"
    example = "postgresql://…"
    writable_ctes = True
    notifies = True

    def _insert(self, table: sa.Table) -> Any:
        # Imported here, as an engine imports its own dialect: a process on SQLite or
        # MariaDB never loads it (about 2 MiB).
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    def engine(self, url: URL, pool_size: int) -> sa.Engine:
        return sa.create_engine(url, connect_args=postgres_connect_args(), **self._pool(pool_size))

    def _advisory_lock(self) -> tuple[str, str]:
        return "SELECT pg_advisory_lock(727274)", "SELECT pg_advisory_unlock(727274)"


class MySQL(Backend):
    """MariaDB and MySQL."""

    name = "mysql"
    aliases = ("mysql", "mariadb", "mariadb+pymysql")
    driver = "mysql+pymysql"
    example = "mysql://…"

    def engine(self, url: URL, pool_size: int) -> sa.Engine:
        engine = sa.create_engine(
            url.update_query_dict({"charset": "utf8mb4"}),
            # A queue needs to see rows other sessions just committed, not a snapshot.
            isolation_level="READ COMMITTED",
            connect_args={"connect_timeout": 10, "write_timeout": 30},
            **self._pool(pool_size),
        )
        event.listen(engine, "do_connect", _connect_with_keepalives)
        event.listen(engine, "connect", _end_idle_transactions_on_mariadb)
        return engine

    def count_up(
        self, table: sa.Table, row: dict[str, Any], key: list[str], add: dict[str, Any]
    ) -> sa.Executable:
        statement: sa.Executable = self._insert(table).values(row).on_duplicate_key_update(add)
        return statement

    def _insert(self, table: sa.Table) -> Any:
        return sa.dialects.mysql.insert(table)

    def _advisory_lock(self) -> tuple[str, str]:
        return (
            "SELECT GET_LOCK('jobbalancer_migrate', 300)",
            "SELECT RELEASE_LOCK('jobbalancer_migrate')",
        )


BACKENDS: tuple[Backend, ...] = (SQLite(), PostgreSQL(), MySQL())
_BY_NAME = {b.name: b for b in BACKENDS}
# The drivers we ship; a bare "postgresql://" or "mysql://" URL gets ours.
DRIVERS = {alias: b.driver for b in BACKENDS for alias in b.aliases}


def for_url(url: URL) -> Backend:
    """The backend of a (normalized) URL; :class:`ConfigError` for one we do not support."""
    try:
        return _BY_NAME[url.get_backend_name()]
    except KeyError:
        examples = [b.example for b in BACKENDS]
        raise ConfigError(
            f"database backend {url.get_backend_name()!r} is not supported: "
            f"use {', '.join(examples[:-1])} or {examples[-1]}"
        ) from None


def of(conn_or_engine: sa.Connection | sa.Engine) -> Backend:
    """The backend an engine or connection talks to."""
    name = conn_or_engine.dialect.name
    return _BY_NAME["mysql" if name == "mariadb" else name]


# -- SQLite's engine -----------------------------------------------------------------------


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # We issue BEGIN ourselves (below), so pysqlite must not.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock up front: a deferred one that upgrades
    # later gets SQLITE_BUSY at once in WAL mode instead of waiting its turn.
    options = conn.get_execution_options()
    if options.get("immediate", False):
        _begin_immediate(conn.connection.driver_connection, options.get("immediate_wait"))
    else:
        conn.exec_driver_sql("BEGIN")


def private_sqlite_files(path: Path) -> None:
    """The SQLite database at ``path`` and its side files readable by this user alone.

    The database holds every job's environment and every password hash, so a job (or
    any local user) must not read it. A missing database is created empty with mode 0600
    before SQLite opens it: SQLite gives its ``-wal`` and ``-shm`` files the database's
    mode, whatever the umask. A missing directory is created 0700. Files an older version
    left readable by others are made 0600, and the log says so once.
    """
    if not path.parent.exists():
        procsec.make_private_dir(path.parent)
    # Exists already, or cannot be made here: then SQLite's own error says so, as before.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, procsec.PRIVATE_FILE_MODE))
    candidates = [path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)]
    repaired = [r for r in map(procsec.make_private_file, candidates) if r]
    if repaired:
        log.warning(
            "made the SQLite database private to its user (others could read it): %s",
            "; ".join(repaired),
        )


def _begin_immediate(raw: Any, wait: float | None = None) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in short, jittered steps (up to ``wait``
    seconds, by default as long as SQLite's busy timeout).

    SQLite's own busy handler sleeps in steps of up to 100 ms, so with several processes
    writing small transactions most of the time goes to sleeping while the lock is free.
    Waiting here in steps of at most a few milliseconds keeps the lock busy instead.
    """
    deadline = time.monotonic() + (SQLITE_BUSY_TIMEOUT_MS / 1000 if wait is None else wait)
    step = 0.0002
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    # As SQLAlchemy wraps a statement's error (it does not wrap one raised
                    # here, in its begin event): callers catch db.UNAVAILABLE.
                    raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(step * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            step = min(step * 1.5, 0.004)
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


# -- MariaDB's engine ----------------------------------------------------------------------


def _end_idle_transactions_on_mariadb(dbapi_conn: Any, _record: Any) -> None:
    """MariaDB's counterpart of PostgreSQL's idle transaction limit (MySQL has none): a
    client cut off mid-transaction does not hold the `assign` lock past 10 s. A failed
    write gives up after 30 s (``write_timeout``), as PostgreSQL's ``tcp_user_timeout``.
    An idle session ends after :data:`MARIADB_WAIT_TIMEOUT`."""
    with dbapi_conn.cursor() as cursor:
        cursor.execute(f"SET SESSION wait_timeout = {MARIADB_WAIT_TIMEOUT}")
        if "mariadb" in str(dbapi_conn.get_server_info()).lower():
            cursor.execute("SET SESSION idle_transaction_timeout = 10")


def _connect_with_keepalives(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """PyMySQL's connection over a TCP socket of ours with the keepalives libpq has
    (PyMySQL sets SO_KEEPALIVE with the OS's 2 h): an idle dead link is noticed in about
    40 s, unacknowledged data after 30 s (both measured, docs/operations.md). PyMySQL
    takes a socket only through ``defer_connect`` and ``connect(sock)``; TLS still works
    (PyMySQL wraps the socket afterwards). A UNIX socket is left to PyMySQL."""
    pymysql = dialect.loaded_dbapi
    conn = pymysql.connect(*cargs, **{**cparams, "defer_connect": True})
    if conn.unix_socket:
        conn.connect()
        return conn
    source = (conn.bind_address, 0) if conn.bind_address else None
    try:
        sock = socket.create_connection((conn.host, conn.port), conn.connect_timeout, source)
    except OSError as exc:  # as PyMySQL words it: the pool and callers know this one
        raise pymysql.err.OperationalError(
            2003, f"Can't connect to MySQL server on {conn.host!r} ({exc})"
        ) from exc
    tune_socket(sock)
    conn.host_info = f"socket {conn.host}:{conn.port}"
    conn.connect(sock)
    return conn


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and the liveness options of :data:`POSTGRES_LIVENESS` on a TCP socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    linux_only = (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    )
    for name, value in linux_only:
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
