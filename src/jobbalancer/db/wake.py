"""Waking workers: after a commit, a datagram to each worker's local wake-up socket
(workers on this host), and on a backend that has it a NOTIFY (workers elsewhere); a
worker listens for both (:class:`WakeListener`). Polling covers whatever these miss."""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from jobbalancer.db import backends

log = logging.getLogger(__name__)

WAKE_CHANNEL = "jobbalancer_wake"


def wake_workers(conn: sa.Connection, worker_ids: Iterable[int]) -> None:
    """Tell workers they have something to do, when this ``db.write`` transaction commits.

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
    ident = backends.for_url(url).wake_ident(url)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return f"\0jobbalancer-wake-{digest}-"


def forget(conn: sa.Connection) -> None:
    """Start a transaction on ``conn`` with no worker to wake (see connections.write)."""
    conn.info.pop(_WAKE_KEY, None)


def send_wakes(conn: sa.Connection) -> None:
    """Wake the workers the committed transaction on ``conn`` named."""
    _send_wakes(conn, conn.info.pop(_WAKE_KEY, ()))


def _send_wakes(conn: sa.Connection, worker_ids: Iterable[int]) -> None:
    """Wake workers after a commit: by datagram where one listens on this host, else (on
    PostgreSQL) by NOTIFY. A NOTIFY inside the transaction was a round trip more on every
    submission, and woke a worker on this host a second time, for a poll that found
    nothing."""
    far = [w for w in sorted(worker_ids) if not _send_datagram(conn.engine.url, w)]
    if far and backends.of(conn).notifies:
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
        if backends.of(self.engine).notifies:
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

    def connect(self) -> Any:
        """The listener's own connection (psycopg, autocommit), with the pool's keepalives:
        it idles for ever, so a dead link is found only by them."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        return psycopg.connect(conninfo, autocommit=True, **backends.postgres_connect_args())

    def _run(self) -> None:
        import psycopg

        delay = 0.5
        while not self._stop.is_set():
            try:
                with self.connect() as conn:
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
