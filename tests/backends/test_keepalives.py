"""Connection liveness on PostgreSQL and MariaDB: both ends of every connection notice a
dead link in seconds (TCP keepalives 10 s idle, 3 probes 5 s apart, unacknowledged data
30 s), so a worker host that vanished leaves no server backend open for hours and a
worker finds a dead link before its fence (docs/operations.md)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer.db import backends

# SQLite has no network connections: each test runs on the backend it is about.
POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])
MARIADB = pytest.mark.parametrize("backend", ["mysql"])


@pytest.fixture
def pooled(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn:
        yield conn


def _show(conn: sa.Connection, name: str) -> str:
    return str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())


@POSTGRESQL
def test_postgres_server_side_keepalives_on_a_pooled_connection(pooled: sa.Connection) -> None:
    assert _show(pooled, "tcp_keepalives_idle") == "10"
    assert _show(pooled, "tcp_keepalives_interval") == "5"
    assert _show(pooled, "tcp_keepalives_count") == "3"
    assert _show(pooled, "tcp_user_timeout") == "30000"  # milliseconds
    assert _show(pooled, "idle_in_transaction_session_timeout") == "10s"


@POSTGRESQL
def test_postgres_wake_listener_has_them_too(engine: sa.Engine) -> None:
    listener = db.WakeListener(engine, lambda: 1, lambda: None)

    with listener.connect() as conn:
        idle = conn.execute("SHOW tcp_keepalives_idle").fetchone()
        user_timeout = conn.execute("SHOW tcp_user_timeout").fetchone()
        client_side = conn.info.get_parameters()

    assert idle == ("10",) and user_timeout == ("30000",)
    assert client_side["keepalives_idle"] == "10"
    assert client_side["tcp_user_timeout"] == "30000"


@MARIADB
def test_mariadb_session_and_socket(pooled: sa.Connection) -> None:
    wait = pooled.exec_driver_sql("SELECT @@session.wait_timeout").scalar_one()
    raw = pooled.connection.driver_connection
    sock = raw._sock  # PyMySQL's socket, ours (backends._connect_with_keepalives)

    def tcp(option: str) -> int:
        return int(sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, option)))

    assert int(wait) == backends.MARIADB_WAIT_TIMEOUT == 300
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert (tcp("TCP_KEEPIDLE"), tcp("TCP_KEEPINTVL"), tcp("TCP_KEEPCNT")) == (10, 5, 3)
    assert tcp("TCP_USER_TIMEOUT") == 30_000
    assert tcp("TCP_NODELAY") == 1


def test_mariadb_refused_port_is_still_a_database_unavailable() -> None:
    """Our socket's connect error reads as PyMySQL's own, so callers see the database away."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = db.connect(f"mysql://root@127.0.0.1:{port}/nothing")
    try:
        with pytest.raises(db.UNAVAILABLE) as caught, db.read(engine):
            pass
    finally:
        engine.dispose()
    assert db.is_disconnect(caught.value) or "Can't connect" in str(caught.value.__cause__)
