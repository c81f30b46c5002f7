"""The database layer: engines per backend, transactions, schema upgrades, and the few
statements that differ between SQLite, PostgreSQL and MariaDB/MySQL, side by side."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import random
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.dialects.mysql
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

from jobbalancer import procsec
from jobbalancer.db import schema
from jobbalancer.db.types import utcnow
from jobbalancer.errors import ConfigError, DatabaseUnavailable

__all__ = ["connect", "normalize_url", "read", "schema", "upgrade", "utcnow", "write"]

log = logging.getLogger(__name__)

# What "the database is away" looks like to a caller: our own translation, or a driver error
# that _translate_errors() let through (a lock timeout, "database is locked"). Retry later.
UNAVAILABLE: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
)

# The drivers we ship; a bare "postgresql://" or "mysql://" URL gets ours.
_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "mariadb+pymysql": "mysql+pymysql",
}
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> URL:
    """Parse a database URL, filling in the driver jobbalancer ships for each backend."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"database URL {url!r} is not a valid SQLAlchemy URL") from exc
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"database backend {parsed.get_backend_name()!r} is not supported: "
            "use sqlite:///PATH, postgresql://… or mysql://…"
        )
    return parsed


# A client cut off mid-transaction (its host's link down) must not hold the `assign` lock
# until TCP gives up, hours later, stalling every balancer and the monitor meanwhile: the
# server ends a transaction left idle for 10 s (ours last milliseconds and never wait on a
# client), and keepalives and a send timeout let the client find a dead server.
POSTGRES_LIVENESS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
    "options": "-c idle_in_transaction_session_timeout=10000",
}


def connect(url: str, *, pool_size: int = 10) -> sa.Engine:
    """An engine for ``url``, set up for its backend."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_recycle": 3600,
        # The connection used last is used next: it is the one least likely to be stale.
        "pool_use_lifo": True,
    }
    if backend == "mysql":
        # A queue needs to see rows other sessions just committed, not a snapshot.
        kwargs["isolation_level"] = "READ COMMITTED"
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        kwargs["connect_args"] = {"connect_timeout": 10, "write_timeout": 30}
    else:
        kwargs["connect_args"] = {"connect_timeout": 10, **POSTGRES_LIVENESS}
    engine = sa.create_engine(parsed, **kwargs)
    _ping_after_idle(engine)
    if backend == "mysql":
        _end_idle_transactions_on_mariadb(engine)
    return engine


def _end_idle_transactions_on_mariadb(engine: sa.Engine) -> None:
    """MariaDB's counterpart of PostgreSQL's idle transaction limit (MySQL has none): a
    client cut off mid-transaction does not hold the `assign` lock past 10 s. A failed
    write gives up after 30 s (``write_timeout``), as PostgreSQL's ``tcp_user_timeout``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        if "mariadb" in str(dbapi_conn.get_server_info()).lower():
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SET SESSION idle_transaction_timeout = 10")


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


# SQLite's files beside the database: WAL, shared memory, rollback journal, our lock.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal", ".migrate-lock")


def _sqlite_engine(url: URL) -> sa.Engine:
    if url.database and url.database != ":memory:":
        private_sqlite_files(Path(url.database))
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=5,
        max_overflow=10,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so pysqlite must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A write transaction takes the write lock up front: a deferred one that upgrades
        # later gets SQLITE_BUSY at once in WAL mode instead of waiting its turn.
        if conn.get_execution_options().get("immediate", False):
            _begin_immediate(conn.connection.driver_connection)
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


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


def _begin_immediate(raw: Any) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in short, jittered steps.

    SQLite's own busy handler sleeps in steps of up to 100 ms, so with several processes
    writing small transactions most of the time goes to sleeping while the lock is free.
    Waiting here in steps of at most a few milliseconds keeps the lock busy instead.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
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
                    raise
            time.sleep(step * (0.5 + random.random()))  # noqa: S311 - jitter, not security
            step = min(step * 1.5, 0.004)
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


@contextlib.contextmanager
def write(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that will write: committed on success, rolled back on error.

    Workers it named to :func:`wake_workers` are woken once it has committed.
    """
    with _translate_errors(), engine.connect() as conn:
        conn = conn.execution_options(immediate=True)
        conn.info.pop(_WAKE_KEY, None)
        with conn.begin():
            yield conn
        _send_wakes(conn, conn.info.pop(_WAKE_KEY, ()))


@contextlib.contextmanager
def one_statement(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection outside any transaction, for a change that is one statement (atomic by
    itself): no BEGIN and no COMMIT, two round trips less. PostgreSQL and MariaDB only:
    SQLite's transactions are begun by this module (see :func:`_sqlite_engine`)."""
    if backend(engine) == "sqlite":
        raise ValueError("one_statement() is for PostgreSQL and MariaDB")
    with _translate_errors(), engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def read(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reading (one consistent transaction, never writing)."""
    with _translate_errors(), engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if is_disconnect(exc):
            raise DatabaseUnavailable() from exc
        raise


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
    return backend(engine) == "postgresql"


def backend(conn_or_engine: sa.Connection | sa.Engine) -> str:
    """'sqlite', 'postgresql' or 'mysql'."""
    name = conn_or_engine.dialect.name
    return "mysql" if name == "mariadb" else name


def now(conn: sa.Connection) -> datetime:
    """The database clock, the one every timestamp in the database is written with."""
    value = conn.execute(sa.select(utcnow())).scalar_one()
    assert isinstance(value, datetime)
    return value


def count_up(conn: sa.Connection, table: sa.Table, key: dict[str, Any], column: str,
             values: dict[str, Any]) -> int:  # fmt: skip
    """Add one to ``column`` of the row ``key`` (a new row starts at 1) and set ``values``,
    in one statement that cannot race another's insert; the count it reached."""
    row = {**key, column: 1, **values}
    kind = backend(conn)
    if kind == "mysql":
        mysql_insert = sa.dialects.mysql.insert(table).values(row)
        statement: Any = mysql_insert.on_duplicate_key_update(
            {column: table.c[column] + 1, **values}
        )
    else:
        dialect = sa.dialects.postgresql if kind == "postgresql" else sa.dialects.sqlite
        insert = dialect.insert(table).values(row)
        statement = insert.on_conflict_do_update(
            index_elements=list(key), set_={column: table.c[column] + 1, **values}
        )
    conn.execute(statement)
    where = [table.c[name] == value for name, value in key.items()]
    return int(conn.execute(sa.select(table.c[column]).where(*where)).scalar_one())


# -- locks -------------------------------------------------------------------------------


def lock_row(conn: sa.Connection, name: str) -> None:
    """Serialize writers on ``name`` until this transaction ends.

    SQLite: a write transaction (BEGIN IMMEDIATE) already excludes every other writer.
    PostgreSQL and MariaDB: a row lock on the ``locks`` table, released at commit.
    """
    if backend(conn) == "sqlite":
        return
    t = schema.locks
    conn.execute(sa.select(t.c.name).where(t.c.name == name).with_for_update()).first()


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


# -- schema upgrades ----------------------------------------------------------------------

MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; safe when several processes start at once."""
    from alembic import command

    _migrate(engine, command.upgrade, revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (for going back to an older release)."""
    from alembic import command

    _migrate(engine, command.downgrade, revision)


def _migrate(engine: sa.Engine, step: Callable[[Any, str], None], revision: str) -> None:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _upgrade_lock(engine), engine.connect() as conn, _foreign_keys_off(conn):
        cfg.attributes["connection"] = conn
        step(cfg, revision)
        conn.commit()


@contextlib.contextmanager
def _foreign_keys_off(conn: sa.Connection) -> Iterator[None]:
    """SQLite: migrate without enforcing foreign keys, as SQLite prescribes for rebuilding a
    table (a DROP TABLE of the old copy of ``users`` would otherwise cascade its deletes into
    ``api_keys``); checked at the end instead. The pragma is a no-op inside a transaction,
    so it is set on the driver's connection before anything begins and after the commit."""
    if backend(conn) != "sqlite":
        yield
        return
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


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _upgrade_lock(engine: sa.Engine) -> Iterator[None]:
    kind = backend(engine)
    if kind == "sqlite":
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
        return
    # A session-level advisory lock on its own connection, held across the migration.
    with engine.connect() as conn:
        if kind == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")
            release = "SELECT pg_advisory_unlock(727274)"
        else:
            conn.exec_driver_sql("SELECT GET_LOCK('jobbalancer_migrate', 300)")
            release = "SELECT RELEASE_LOCK('jobbalancer_migrate')"
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(release)
            conn.commit()


# -- waking workers -----------------------------------------------------------------------

WAKE_CHANNEL = "jobbalancer_wake"


def wake_workers(conn: sa.Connection, worker_ids: Iterable[int]) -> None:
    """Tell workers they have something to do, when this :func:`write` transaction commits.

    After the commit, a datagram to each worker's local wake-up socket (workers on this
    host: the quickest way). On PostgreSQL, a NOTIFY with the id of each worker no local
    socket took (workers on other hosts); elsewhere those find out by polling.
    """
    conn.info.setdefault(_WAKE_KEY, set()).update(worker_ids)


_WAKE_KEY = "jobbalancer.wake"
_wake_socket: socket.socket | None = None


def wake_address(url: URL, worker_id: int) -> str | None:
    """The local wake-up socket of a worker of the database at ``url``: a Linux abstract
    UNIX socket (no file to clean up), named after the database so that clusters on one
    host do not wake each other. None where there are no abstract sockets."""
    prefix = _wake_prefix(url)
    return None if prefix is None else f"{prefix}{worker_id}"


@functools.lru_cache(maxsize=16)
def _wake_prefix(url: URL) -> str | None:
    """The database's part of the address: worked out once per database, not on every
    assignment (on SQLite it resolves the file's path)."""
    if not sys.platform.startswith("linux"):
        return None
    if url.get_backend_name() == "sqlite":
        ident = os.path.realpath(url.database or "")
    else:
        ident = f"{url.get_backend_name()}://{url.host}:{url.port}/{url.database}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return f"\0jobbalancer-wake-{digest}-"


def _send_wakes(conn: sa.Connection, worker_ids: Iterable[int]) -> None:
    """Wake workers after a commit: by datagram where one listens on this host, else (on
    PostgreSQL) by NOTIFY. A NOTIFY inside the transaction was a round trip more on every
    submission, and woke a worker on this host a second time, for a poll that found
    nothing."""
    far = [w for w in sorted(worker_ids) if not _send_datagram(conn.engine.url, w)]
    if far and backend(conn) == "postgresql":
        _notify(conn, far)


def _send_datagram(url: URL, worker_id: int) -> bool:
    """True when the worker's local wake-up socket took it (or is full: it has been told)."""
    global _wake_socket
    address = wake_address(url, worker_id)
    if address is None:
        return False
    try:
        if _wake_socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)  # a worker that does not read must not stop us
            _wake_socket = sock
        _wake_socket.sendto(b"w", address)
    except BlockingIOError:
        return True  # its buffer is full of wake-ups it has not read yet
    except OSError:
        return False  # nobody listens there: no such worker on this host
    return True


def _notify(conn: sa.Connection, worker_ids: list[int]) -> None:
    """NOTIFY each worker, in one statement outside any transaction (the one that made the
    change has committed). A failure only delays the job until the worker polls."""
    raw: Any = conn.connection.driver_connection
    try:
        raw.autocommit = True
        try:
            raw.execute(
                "SELECT pg_notify(%s, w) FROM unnest(%s::text[]) AS w",
                (WAKE_CHANNEL, [str(w) for w in worker_ids]),
            )
        finally:
            raw.autocommit = False
    except Exception as exc:
        log.debug("could not NOTIFY workers %s (%s); they will poll", worker_ids, exc)


class WakeListener:
    """Calls ``on_wake`` whenever this worker is told it has something to do: a NOTIFY on
    PostgreSQL, a datagram on its local wake-up socket elsewhere."""

    def __init__(
        self, engine: sa.Engine, worker_id: Callable[[], int], on_wake: Callable[[], None]
    ):
        self.engine = engine
        self.worker_id = worker_id
        self.on_wake = on_wake
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if backend(self.engine) == "postgresql":
            self._start(self._run)
        sock = self._bind()
        if sock is not None:
            self._start(functools.partial(self._run_local, sock))

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name="wake-listener", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _bind(self) -> socket.socket | None:
        address = wake_address(self.engine.url, self.worker_id())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if address is None:
                raise OSError("no abstract UNIX sockets here")
            sock.bind(address)
        except OSError as exc:
            sock.close()
            log.info("no local wake-up socket (%s); polling only", exc)
            return None
        sock.settimeout(1.0)
        return sock

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _run_local(self, sock: socket.socket) -> None:
        with sock:
            while not self._stop.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                except OSError as exc:
                    log.warning("local wake-up socket failed (%s); polling only", exc)
                    return
                self.on_wake()

    def _run(self) -> None:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    delay = 0.5
                    self._listen(conn)
            except psycopg.Error as exc:
                log.debug("wake listener: %s; reconnecting in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _listen(self, conn: Any) -> None:
        while not self._stop.is_set():
            for note in conn.notifies(timeout=1.0):
                if note.payload == str(self.worker_id()):
                    self.on_wake()
