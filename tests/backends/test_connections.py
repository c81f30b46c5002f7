"""How connections are set up, per backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db


def test_postgresql_ends_a_transaction_its_client_abandoned(
    make_database_url: Callable[..., str],
) -> None:
    """A worker cut off mid-transaction must not hold the assignment lock for hours: the
    server ends any transaction left idle for 10 s, and the client's keepalives find
    a dead server."""
    engine = db.connect(make_database_url("postgresql"))
    try:
        with engine.connect() as conn:
            timeout = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
            assert timeout.scalar() == "10s"
            raw = conn.connection.dbapi_connection
            assert raw is not None
            assert raw.info.get_parameters()["keepalives"] == "1"
    finally:
        engine.dispose()


def test_mariadb_ends_a_transaction_its_client_abandoned(
    make_database_url: Callable[..., str],
) -> None:
    """The same limit on MariaDB (MySQL has no such setting: there it is not set)."""
    engine = db.connect(make_database_url("mysql"))
    try:
        with engine.connect() as conn:
            server = str(conn.exec_driver_sql("SELECT VERSION()").scalar())
            if "mariadb" not in server.lower():
                pytest.skip(f"{server} is MySQL, which has no idle transaction limit")
            limit = conn.exec_driver_sql("SELECT @@session.idle_transaction_timeout")
            assert limit.scalar() == 10
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_pooled_connection_is_pinged_only_after_being_idle(
    make_database_url: Callable[..., str], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection in steady use costs no ping per transaction; one idle for a while is
    checked, and a dead one is replaced before anyone uses it."""
    engine = db.connect(make_database_url(backend, migrated=True), pool_size=1)
    pings: list[object] = []
    real_ping = engine.dialect.do_ping

    def counting_ping(dbapi_conn: Any) -> bool:
        pings.append(dbapi_conn)
        return real_ping(dbapi_conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    try:
        # Used again at once: no ping
        for _ in range(3):
            with db.read(engine) as conn:
                conn.execute(sa.select(1))
        assert pings == []
        # Idle past the limit: pinged
        monkeypatch.setattr(db.connections, "PING_AFTER_IDLE", 0.0)
        with db.read(engine) as conn:
            conn.execute(sa.select(1))
        assert len(pings) == 1
        # Idle and dead: replaced by a fresh connection, the caller sees nothing
        with engine.connect() as conn:
            dead = conn.connection.dbapi_connection
        assert dead is not None
        dead.close()
        with db.read(engine) as conn:
            assert conn.execute(sa.select(1)).scalar_one() == 1
            assert conn.connection.dbapi_connection is not dead
    finally:
        engine.dispose()


def test_a_lock_asked_for_again_in_its_transaction_costs_no_statement(
    make_database_url: Callable[..., str], backend: str
) -> None:
    """An end that decides its chains and then fills its slot asks for the assign lock
    twice: one locking read. A new transaction on the same pooled connection takes it
    again, and so does one asked for after a savepoint that took it was rolled back."""
    engine = db.connect(make_database_url(backend, migrated=True), pool_size=1)
    locks: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        if "FOR UPDATE" in statement:
            locks.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    per_lock = 0 if backend == "sqlite" else 1  # SQLite: BEGIN IMMEDIATE excludes writers
    try:
        # Asked for twice in one transaction: taken once
        with db.write(engine) as conn:
            db.lock_row(conn, "assign")
            db.lock_row(conn, "assign")
        assert len(locks) == per_lock
        # A new transaction (the same connection: pool_size=1): taken again
        with db.write(engine) as conn:
            db.lock_row(conn, "assign")
            with conn.begin_nested():  # held by the transaction: held in its savepoints
                db.lock_row(conn, "assign")
        assert len(locks) == 2 * per_lock
        # Taken in a savepoint rolled back: taken again after it
        with db.write(engine) as conn:
            savepoint = conn.begin_nested()
            db.lock_row(conn, "assign")
            savepoint.rollback()
            db.lock_row(conn, "assign")
        assert len(locks) == 4 * per_lock
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])  # SQLite: one writer at a time
def test_a_lock_taken_once_still_makes_another_transaction_wait(
    make_database_url: Callable[..., str], backend: str
) -> None:
    """The second ask costs nothing because the row stays locked until the commit: another
    transaction waits for it until then."""
    engine = db.connect(make_database_url(backend, migrated=True), pool_size=2)
    got: list[float] = []

    def other() -> None:
        with db.write(engine) as conn:
            db.lock_row(conn, "assign")
            got.append(time.monotonic())

    try:
        with db.write(engine) as conn:
            db.lock_row(conn, "assign")
            db.lock_row(conn, "assign")  # the cached ask
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(timeout=0.5)
            assert thread.is_alive() and got == []  # waits for our lock
            committing = time.monotonic()
        thread.join(timeout=30)
        assert not thread.is_alive() and got and got[0] >= committing
    finally:
        engine.dispose()
