"""Engines and transactions: opening a database, the three kinds of connection a caller
takes (:func:`write`, :func:`read`, :func:`one_statement`), and what "the database is
away" looks like."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

from jobbalancer.db import backends, wake
from jobbalancer.db.types import utcnow
from jobbalancer.errors import ConfigError, DatabaseRefused, DatabaseUnavailable

# What "the database is away" looks like to a caller: our own translation, or a driver error
# that translate_errors() let through (a lock timeout, "database is locked"). Retry later.
UNAVAILABLE: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)


def normalize_url(url: str) -> URL:
    """Parse a database URL, filling in the driver jobbalancer ships for each backend."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"database URL {url!r} is not a valid SQLAlchemy URL") from exc
    if parsed.drivername in backends.DRIVERS:
        parsed = parsed.set(drivername=backends.DRIVERS[parsed.drivername])
    backends.for_url(parsed)  # one we support
    return parsed


def connect(url: str, *, pool_size: int = 10) -> sa.Engine:
    """An engine for ``url``, set up for its backend."""
    parsed = normalize_url(url)
    kind = backends.for_url(parsed)
    engine = kind.engine(parsed, pool_size)
    if kind.pooled:
        _ping_after_idle(engine)
    return engine


# A connection back from the pool is checked (a round trip) only when it has been idle
# this long: one in steady use answered a moment ago, and a ping on every checkout was a
# round trip more on every transaction (a worker's report, a submission).
PING_AFTER_IDLE = 1.0
_IDLE_SINCE = "jobbalancer.idle_since"


def _ping_after_idle(engine: sa.Engine) -> None:
    """SQLAlchemy's pre-ping, skipped for a connection checked in less than
    :data:`PING_AFTER_IDLE` ago. A server that went away in between fails the first
    statement instead, as it would have a moment later: callers handle that anyway
    (:class:`DatabaseUnavailable`), and the pool then replaces every older connection."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # just connected, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool drops this connection and checks out a fresh one.
            raise sa.exc.DisconnectionError(str(exc)) from exc


@contextlib.contextmanager
def write(engine: sa.Engine, *, wait: float | None = None) -> Iterator[sa.Connection]:
    """A transaction that will write: committed on success, rolled back on error.

    Workers it named to :func:`wake.wake_workers` are woken once it has committed.
    ``wait``: SQLite only, the longest it waits for the write lock (seconds; by default
    SQLite's busy timeout), then "database is locked" (an OperationalError).
    """
    with translate_errors(), engine.connect() as conn:
        conn = conn.execution_options(immediate=True, immediate_wait=wait)
        wake.forget(conn)
        conn.info.pop(_AFTER_COMMIT, None)
        with conn.begin():
            yield conn
        for call in conn.info.pop(_AFTER_COMMIT, ()):
            call()
        wake.send_wakes(conn)


_AFTER_COMMIT = "jobbalancer.after_commit"


def after_commit(conn: sa.Connection, call: Callable[[], None]) -> None:
    """Call ``call`` once this :func:`write` transaction has committed (SQLAlchemy's own
    ``commit`` event comes before the database's commit)."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(call)


@contextlib.contextmanager
def one_statement(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection outside any transaction, for a change that is one statement (atomic by
    itself): no BEGIN and no COMMIT, two round trips less. PostgreSQL and MariaDB only:
    SQLite's transactions are begun by this package (see backends.SQLite)."""
    if not backends.of(engine).one_statement_ok:
        raise ValueError("one_statement() is for PostgreSQL and MariaDB")
    with translate_errors(), engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def read(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reading (one consistent transaction, never writing)."""
    with translate_errors(), engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if is_refusal(exc):
            raise refused(exc) from exc
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) and is_disconnect(exc):
            raise DatabaseUnavailable() from exc
        raise


# A statement the database role may not run: PostgreSQL's SQLSTATE, MariaDB's error numbers
# (table, column, database access denied; a global privilege such as CREATE USER missing).
_REFUSED_SQLSTATES = frozenset({"42501"})
_REFUSED_MYSQL_ERRORS = frozenset({1044, 1142, 1143, 1227})


def is_refusal(exc: BaseException) -> bool:
    """True when the database refused ``exc``'s statement for want of a privilege."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _REFUSED_SQLSTATES:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _REFUSED_MYSQL_ERRORS


def refused(exc: BaseException) -> DatabaseRefused:
    """The error a person reads for a refusal: the driver's first line, and what to do."""
    orig = getattr(exc, "orig", exc)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    # PyMySQL's args are (number, message); psycopg's str() is the message.
    text = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(orig)
    first = (text.strip().splitlines() or ["(no message)"])[0]
    return DatabaseRefused(
        f"the database refused: {first}. This database role may not do that (a worker's "
        "role cannot manage users or keys): use the server's credentials"
    )


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unreachable rather than the statement wrong."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.InterfaceError):
        return True
    text = str(exc).lower()
    needles = (
        "connection refused",
        "could not connect",
        "can't connect",
        "server closed the connection",
        "lost connection",
        "gone away",
        "terminating connection",
        "connection is closed",
        "the database system is",
        "unable to open database file",
        "connection timeout",
        "timed out",
    )
    return any(n in text for n in needles)


def writable_ctes(engine: sa.Engine) -> bool:
    """Whether an UPDATE … RETURNING may sit in a WITH of a SELECT (PostgreSQL): then a
    change and the reads around it are one statement (see :func:`one_statement`)."""
    return backends.of(engine).writable_ctes


def backend(conn_or_engine: sa.Connection | sa.Engine) -> str:
    """'sqlite', 'postgresql' or 'mysql'."""
    return backends.of(conn_or_engine).name


def now(conn: sa.Connection) -> datetime:
    """The database clock, the one every timestamp in the database is written with."""
    value = conn.execute(sa.select(utcnow())).scalar_one()
    assert isinstance(value, datetime)
    return value


def count_up(conn: sa.Connection, table: sa.Table, key: dict[str, Any], column: str,
             values: dict[str, Any], new: dict[str, Any] | None = None) -> int:  # fmt: skip
    """Add one to ``column`` of the row ``key`` (a new row starts at 1) and set ``values``
    (and ``new`` on a new row only), in one statement that cannot race another's insert;
    the count it reached. On PostgreSQL and MariaDB the row stays locked until commit."""
    row = {**key, column: 1, **values, **(new or {})}
    add = {column: table.c[column] + 1, **values}
    conn.execute(backends.of(conn).count_up(table, row, list(key), add))
    where = [table.c[name] == value for name, value in key.items()]
    return int(conn.execute(sa.select(table.c[column]).where(*where)).scalar_one())
