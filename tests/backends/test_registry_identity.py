"""Who holds a worker name, on every backend: the row records the machine id and the
process, ``holder`` reads them with an age on the database's clock, and a worker starting
under a name a live worker of another machine holds is refused without changing anything."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import pytest
import sqlalchemy as sa

from jobbalancer import db, errors, jobs
from jobbalancer import registry as workers
from jobbalancer.settings import WorkerSettings
from jobbalancer.worker import identity
from jobbalancer.worker.presence import Presence

from .conftest import JobFactory

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
OTHER = "e" * 32


def _once(fn: Callable[[], T], what: str, /) -> T:
    return fn()


def _register_other(engine: sa.Engine, name: str) -> tuple[int, str]:
    """A live worker of another machine, as its own process would register it."""
    with db.write(engine) as conn:
        return workers.register(
            conn, name=name, host="otherhost", worker_class="default", max_jobs=2, pid=31337,
            version="x", stats=workers.Stats(), machine_id=OTHER, instance="boot/1:2/31337/5.00",
        )  # fmt: skip


def test_register_stores_who_holds_the_name_and_holder_reads_it(engine: sa.Engine) -> None:
    _register_other(engine, "w")
    with db.write(engine) as conn:
        holder = workers.holder(conn, "w")
        assert workers.holder(conn, "nobody") is None
    assert holder is not None
    assert (holder.name, holder.host, holder.state, holder.pid) == (
        "w",
        "otherhost",
        "online",
        31337,
    )
    assert (holder.machine_id, holder.instance) == (OTHER, "boot/1:2/31337/5.00")
    assert holder.session
    assert 0 <= holder.age < 5  # seconds, on the database's own clock


def test_the_age_grows_with_the_silence(engine: sa.Engine) -> None:
    worker_id, _ = _register_other(engine, "w")
    with db.write(engine) as conn:
        conn.execute(
            sa.update(workers.W)
            .where(workers.W.c.id == worker_id)
            .values(last_heartbeat_at=db.now(conn) - timedelta(seconds=60))
        )
    with db.read(engine) as conn:
        holder = workers.holder(conn, "w", lock=False)
    assert holder is not None
    assert 59 <= holder.age < 65


def test_a_live_holder_of_another_machine_is_not_taken_over(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    worker_id, session = _register_other(engine, "w")
    job_id = job_factory(submit=True)  # assigned to the only worker
    with db.write(engine) as conn:
        token = jobs.get(conn, job_id).token
        assert token is not None
        assert jobs.claim(conn, job_id, worker_id, token)
    presence = Presence(
        engine, WorkerSettings(name="w", allow_root=True), retry=_once,
        kill_all=lambda _: None, draining=threading.Event(), stopped=threading.Event(),
    )  # fmt: skip

    with pytest.raises(errors.ConfigError) as caught:
        presence.register()

    assert caught.value.message.startswith(
        "worker name 'w' is in use by a live worker on host 'otherhost' (machine eeeeeeee, "
        "pid 31337, last heartbeat "
    )
    with db.read(engine) as conn:
        holder = workers.holder(conn, "w", lock=False)
        job = jobs.get(conn, job_id)
    assert holder is not None
    assert (holder.session, holder.pid, holder.machine_id) == (session, 31337, OTHER)
    assert job.state == jobs.State.RUNNING  # not lost: its worker is alive


def test_a_default_name_moves_on_and_records_this_process(engine: sa.Engine) -> None:
    _register_other(engine, identity.host_name())
    presence = Presence(
        engine, WorkerSettings(name="", allow_root=True), retry=_once,
        kill_all=lambda _: None, draining=threading.Event(), stopped=threading.Event(),
    )  # fmt: skip

    presence.register()

    mid = identity.ephemeral_machine_id()
    assert presence.name == f"{identity.host_name()}-{mid[:6]}"
    with db.read(engine) as conn:
        holder = workers.holder(conn, presence.name, lock=False)
    assert holder is not None
    assert (holder.machine_id, holder.instance) == (mid, presence.instance)
    assert identity.alive_here(holder.instance) is True
