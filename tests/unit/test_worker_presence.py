"""The worker's presence, on SQLite: registering under a free name, coming back as a new
session after losing the old one (its jobs are stopped first) unless a live worker holds
the name now, an unknown class, and a schema that changes under a running worker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import sqlalchemy as sa

from jobbalancer import classes, db, errors
from jobbalancer import registry as workers
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker import identity
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
    host = identity.host_name()
    one, _ = _presence(sqlite_engine, name="")
    one.register()  # this process: a live worker holds the host name now
    two, _ = _presence(sqlite_engine, name="")
    two.register()

    mid = identity.ephemeral_machine_id()  # in-process workers without an id file
    assert (one.name, two.name) == (host, f"{host}-{mid[:6]}")
    assert _state(sqlite_engine, two.worker_id) == ("online", host)


def test_a_name_taken_by_a_live_worker_meanwhile_is_not_fought_over(
    sqlite_engine: sa.Engine,
) -> None:
    draining = threading.Event()
    presence, stops = _presence(sqlite_engine, draining=draining)
    presence.register()
    with db.write(sqlite_engine) as conn:  # another machine's worker took the name
        workers.register(
            conn, name="w", host="elsewhere", worker_class="default", max_jobs=None, pid=9,
            version="x", stats=workers.Stats(), machine_id="f" * 32, instance="b/1:2/9/1.00",
        )  # fmt: skip

    presence._heartbeat()

    assert stops.calls == [("the worker lost its registration", presence.session)]
    assert draining.is_set()
    assert presence.exit_code == 4
    with db.read(sqlite_engine) as conn:
        holder = workers.holder(conn, "w", lock=False)
    assert holder is not None
    assert (holder.host, holder.pid) == ("elsewhere", 9)  # untouched


def test_an_unknown_class_is_refused_naming_those_that_exist(sqlite_engine: sa.Engine) -> None:
    presence = Presence(
        sqlite_engine, WorkerSettings(name="w", worker_class="gpuu", allow_root=True),
        retry=_once, kill_all=lambda _: None, draining=threading.Event(),
        stopped=threading.Event(),
    )  # fmt: skip
    with pytest.raises(errors.ConfigError) as caught:
        presence.register()
    assert caught.value.message == (
        "worker class 'gpuu' does not exist (classes: default); an admin creates it on the "
        "web UI's Classes page or with POST /api/v1/worker-classes "
        '{"name": "gpuu", "max_jobs": 2}'
    )
    with db.read(sqlite_engine) as conn:
        assert workers.list_all(conn) == []
        assert [c.name for c in classes.list_all(conn)] == ["default"]


def test_a_schema_changed_under_the_worker_drains_it_with_code_11(
    sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    draining = threading.Event()
    presence, _ = _presence(sqlite_engine, draining=draining)
    presence.register()
    with db.write(sqlite_engine) as conn:  # a newer version's server migrated
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff0000'"))

    presence._heartbeat()
    presence._heartbeat()

    assert draining.is_set()
    assert presence.exit_code == 11
    lines = [r.getMessage() for r in caplog.records if "schema changed" in r.getMessage()]
    assert lines == [
        f"the database schema changed to ffff0000 under this worker (this version expects "
        f"{db.head_revision()}): draining, then exiting with code 11"
    ]
