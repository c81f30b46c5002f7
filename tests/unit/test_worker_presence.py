"""The worker's presence, on SQLite: registering under a free name, and coming back as a
new session after losing the old one (its jobs are stopped first)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import sqlalchemy as sa

from jobbalancer import db
from jobbalancer import registry as workers
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker.presence import Presence

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


def _once(fn: Callable[[], T], what: str, /) -> T:
    return fn()  # no retrying: a test database is always there


class _Stops:
    """What the presence asked the coordinator to do, with the session at that moment."""

    def __init__(self) -> None:
        self.presence: Presence | None = None
        self.calls: list[tuple[str, str]] = []

    def kill_all(self, reason: str) -> None:
        assert self.presence is not None
        self.calls.append((reason, self.presence.session))


def _presence(
    engine: sa.Engine, name: str = "w", draining: threading.Event | None = None
) -> tuple[Presence, _Stops]:
    stops = _Stops()
    presence = Presence(
        engine,
        WorkerSettings(name=name, allow_root=True),
        retry=_once,
        kill_all=stops.kill_all,
        draining=draining or threading.Event(),
        stopped=threading.Event(),
    )
    stops.presence = presence
    return presence, stops


def _state(engine: sa.Engine, worker_id: int) -> tuple[str, str | None]:
    with db.read(engine) as conn:
        (worker,) = [w for w in workers.list_all(conn) if w.id == worker_id]
    return worker.state, worker.host


def test_a_lost_session_stops_the_jobs_first_then_registers_again(
    sqlite_engine: sa.Engine,
) -> None:
    presence, stops = _presence(sqlite_engine)
    presence.register()
    first = presence.session
    with db.write(sqlite_engine) as conn:  # as the monitor does with a silent worker
        workers.set_state(conn, presence.worker_id, first, "offline")

    presence._heartbeat()

    assert stops.calls == [("the worker lost its registration", first)]  # before registering
    assert presence.session not in ("", first)
    assert _state(sqlite_engine, presence.worker_id)[0] == "online"


def test_a_lost_session_while_draining_neither_stops_nor_registers(
    sqlite_engine: sa.Engine,
) -> None:
    draining = threading.Event()
    presence, stops = _presence(sqlite_engine, draining=draining)
    presence.register()
    first = presence.session
    with db.write(sqlite_engine) as conn:
        workers.set_state(conn, presence.worker_id, first, "offline")
    draining.set()

    presence._heartbeat()

    assert stops.calls == []
    assert presence.session == first
    assert _state(sqlite_engine, presence.worker_id)[0] == "offline"


def test_a_heartbeat_of_a_live_session_keeps_it(sqlite_engine: sa.Engine) -> None:
    presence, stops = _presence(sqlite_engine)
    presence.register()
    first = presence.session

    presence._heartbeat()

    assert stops.calls == []
    assert presence.session == first


def test_without_a_name_a_worker_takes_the_host_name_or_the_next_free_one(
    sqlite_engine: sa.Engine,
) -> None:
    host = socket.gethostname()
    one, _ = _presence(sqlite_engine, name="")
    one.register()  # this process: a live worker holds the host name now
    two, _ = _presence(sqlite_engine, name="")
    two.register()

    assert (one.name, two.name) == (host, f"{host}-2")
    assert _state(sqlite_engine, two.worker_id) == ("online", host)
