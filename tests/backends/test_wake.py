"""Waking workers on every backend: a datagram to a worker on this host, a NOTIFY on
PostgreSQL to one on another host, and neither before the transaction commits."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from jobbalancer import db


@pytest.fixture
def local_worker(engine: sa.Engine) -> Iterator[socket.socket]:
    """The wake-up socket of worker 41, as a worker on this host binds it."""
    address = db.wake_address(engine.url, 41)
    if address is None:
        pytest.skip("no abstract UNIX sockets here")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        yield sock


@pytest.fixture
def notifications(engine: sa.Engine) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection listening to the wake-up channel, as a worker on another host does."""
    if db.backend(engine) != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"LISTEN {db.WAKE_CHANNEL}")
        yield conn


def received(notes: psycopg.Connection[tuple[object, ...]], wait: float = 0.5) -> set[str]:
    """Payloads that arrive within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    payloads: set[str] = set()
    while (left := deadline - time.monotonic()) > 0:
        payloads |= {n.payload for n in notes.notifies(timeout=left, stop_after=1)}
    return payloads


def test_a_worker_on_this_host_gets_a_datagram_once_the_transaction_commits(
    engine: sa.Engine, local_worker: socket.socket
) -> None:
    # Given a transaction that wakes worker 41
    with db.write(engine) as conn:
        db.wake_workers(conn, [41])
        # Then nothing is sent before it commits
        local_worker.setblocking(False)
        with pytest.raises(BlockingIOError):
            local_worker.recv(64)
        local_worker.settimeout(5)
    # And the datagram is there after the commit
    assert local_worker.recv(64) == b"w"


def test_a_transaction_that_fails_wakes_nobody(
    engine: sa.Engine, local_worker: socket.socket
) -> None:
    with pytest.raises(RuntimeError), db.write(engine) as conn:
        db.wake_workers(conn, [41])
        raise RuntimeError("rolled back")
    local_worker.setblocking(False)
    with pytest.raises(BlockingIOError):
        local_worker.recv(64)


@pytest.mark.parametrize("backend", ["postgresql"])  # NOTIFY is PostgreSQL's
def test_postgresql_notifies_only_workers_no_local_socket_took(
    engine: sa.Engine,
    local_worker: socket.socket,
    notifications: psycopg.Connection[tuple[object, ...]],
) -> None:
    # Given worker 41 on this host and workers 42 and 43 elsewhere
    # When a transaction wakes all three
    with db.write(engine) as conn:
        db.wake_workers(conn, [41, 42, 43])
        # Then nobody hears of it before the commit
        assert received(notifications, wait=0.2) == set()
    # And afterwards 41 got a datagram, 42 and 43 a NOTIFY
    assert local_worker.recv(64) == b"w"
    assert received(notifications) == {"42", "43"}
    # And the connection is back to normal for the next transaction
    with db.write(engine) as conn:
        assert conn.execute(sa.select(sa.literal(1))).scalar_one() == 1
