"""How connections are set up, per backend."""

from __future__ import annotations

from collections.abc import Callable

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
