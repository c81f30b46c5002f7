"""How connections are set up, per backend."""

from __future__ import annotations

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
