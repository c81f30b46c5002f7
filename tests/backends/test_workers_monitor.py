"""Workers' registry and the monitor on every backend: liveness, recovery, leadership, retention.

Nothing here sleeps: a silent worker or an expired lease is made by setting its timestamp
back in the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db, errors, jobs, monitor, settings
from jobbalancer import registry as workers
from jobbalancer.db import schema
from jobbalancer.jobs import State

J, W, L = schema.jobs, schema.workers, schema.locks
DEFAULT_CLASS = 1


# -- factories ----------------------------------------------------------------------------
# job_factory comes from conftest.py. Each test gets a fresh database (the ``engine``
# fixture), which goes with everything made here; supervisors are stopped.


def register(engine: sa.Engine, name: str, **kw: Any) -> tuple[int, str]:
    """Register (or re-register) a worker process: its id and session."""
    args: dict[str, Any] = {
        "host": "test-host", "worker_class": "default", "max_jobs": None, "pid": 4242,
        "version": "test", "stats": workers.Stats(),
    }  # fmt: skip
    with db.write(engine) as conn:
        return workers.register(conn, name=name, **{**args, **kw})


@pytest.fixture
def supervisor_factory(engine: sa.Engine, database_url: str) -> Iterator[Callable[[], Any]]:
    """make() → a Supervisor as another server would run it: its own engine, not started."""
    made: list[tuple[monitor.Supervisor, sa.Engine]] = []

    def make() -> monitor.Supervisor:
        own = db.connect(database_url)
        sup = monitor.Supervisor(own, interval=1.0)
        made.append((sup, own))
        return sup

    yield make
    for sup, own in made:
        sup.stop()
        own.dispose()


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def get_worker(engine: sa.Engine, worker_id: int) -> workers.Worker:
    with db.read(engine) as conn:
        return workers.get(conn, worker_id)


def heartbeat(engine: sa.Engine, worker_id: int, session: str, **stats: Any) -> str | None:
    with db.write(engine) as conn:
        return workers.heartbeat(conn, worker_id, session, workers.Stats(**stats))


def claim(engine: sa.Engine, job_id: int) -> None:
    """assigned → running, as its worker does."""
    with db.write(engine) as conn:
        job = jobs.get(conn, job_id)
        assert job.worker_id is not None and job.token is not None
        assert jobs.claim(conn, job_id, job.worker_id, job.token)


def silence(engine: sa.Engine, worker_id: int, seconds: float) -> None:
    """Make a worker's last heartbeat ``seconds`` old."""
    with db.write(engine) as conn:
        when = db.now(conn) - timedelta(seconds=seconds)
        conn.execute(sa.update(W).where(W.c.id == worker_id).values(last_heartbeat_at=when))


def jobs_after(engine: sa.Engine, job_id: int) -> list[jobs.Job]:
    with db.read(engine) as conn:
        rows = conn.execute(jobs.select_jobs().where(J.c.id > job_id).order_by(J.c.id))
        return [jobs.Job.from_row(r) for r in rows]


def lease(engine: sa.Engine) -> str | None:
    with db.read(engine) as conn:
        return conn.execute(sa.select(L.c.holder).where(L.c.name == "leader")).scalar_one()


# -- registry -----------------------------------------------------------------------------


def test_register_makes_an_online_worker_of_its_class(engine: sa.Engine) -> None:
    worker_id, session = register(
        engine, "w1", pid=99, version="1.2", stats=workers.Stats(0.5, 8, 16 << 30, 8 << 30)
    )
    w = get_worker(engine, worker_id)
    assert (w.name, w.host, w.state, w.display_state, w.enabled) == (
        "w1", "test-host", "online", "online", True,
    )  # fmt: skip
    assert (w.worker_class_id, w.worker_class) == (DEFAULT_CLASS, "default")
    assert (w.own_max_jobs, w.max_jobs, w.active_jobs) == (None, 5, 0)
    assert (w.pid, w.version, w.load, w.cpu_count) == (99, "1.2", 0.5, 8)
    assert (w.memory_total, w.memory_available) == (16 << 30, 8 << 30)
    assert len(session) == 16
    assert w.last_heartbeat_at.tzinfo is not None


def test_register_in_a_new_class_creates_the_class(engine: sa.Engine) -> None:
    worker_id, _ = register(engine, "g1", worker_class="gpu", max_jobs=2)
    w = get_worker(engine, worker_id)
    assert w.worker_class == "gpu"
    assert w.worker_class_id != DEFAULT_CLASS
    assert (w.own_max_jobs, w.max_jobs) == (2, 2)
    # A second worker of that class joins it rather than making another.
    other, _ = register(engine, "g2", worker_class="gpu")
    assert get_worker(engine, other).worker_class_id == w.worker_class_id
    assert get_worker(engine, other).max_jobs == 5


def test_heartbeat_records_stats_and_time(engine: sa.Engine) -> None:
    worker_id, session = register(engine, "w1")
    silence(engine, worker_id, 60)
    before = get_worker(engine, worker_id).last_heartbeat_at
    assert heartbeat(engine, worker_id, session, load=1.5, cpu_count=4) == "online"
    w = get_worker(engine, worker_id)
    assert w.last_heartbeat_at > before
    assert (w.load, w.cpu_count) == (1.5, 4)
    # A draining worker keeps heartbeating, and learns its state.
    with db.write(engine) as conn:
        assert workers.set_state(conn, worker_id, session, "draining")
    assert heartbeat(engine, worker_id, session) == "draining"
    assert heartbeat(engine, worker_id, "0" * 16) is None


def test_re_registering_under_the_same_name_is_the_same_worker_with_a_new_session(
    engine: sa.Engine, job_factory: Callable[..., int]
) -> None:
    # Given a worker, disabled by an operator, running two jobs (one may retry) with a
    # third assigned to it
    worker_id, old_session = register(engine, "w1", max_jobs=3)
    running = job_factory(submit=True)
    retried = job_factory(submit=True, retries=1)
    assigned = job_factory(submit=True)
    claim(engine, running)
    claim(engine, retried)
    with db.write(engine) as conn:
        workers.update(conn, worker_id, {"enabled": False})
    # When its process restarts under the same name
    same_id, new_session = register(engine, "w1", pid=5151)
    # Then it is the same worker, with a new session, still disabled, its max_jobs kept
    assert same_id == worker_id
    assert new_session != old_session
    w = get_worker(engine, worker_id)
    assert (w.pid, w.state, w.display_state, w.own_max_jobs) == (5151, "online", "disabled", 3)
    # And the old process is fenced off: its heartbeat and state changes are refused
    assert heartbeat(engine, worker_id, old_session) is None
    with db.write(engine) as conn:
        assert not workers.set_state(conn, worker_id, old_session, "offline")
    assert heartbeat(engine, worker_id, new_session) == "online"
    # And what the old process ran is lost (a new process runs nothing yet), with a retry
    for job_id in (running, retried):
        job = get(engine, job_id)
        assert (job.state, job.error) == (State.LOST, "worker w1 restarted while the job ran")
    (retry,) = jobs_after(engine, assigned)
    assert (retry.state, retry.retry_of, retry.attempt) == (State.WAITING, retried, 2)
    # And what was assigned but not started stays for the new process to pick up
    job = get(engine, assigned)
    assert (job.state, job.worker_id) == (State.ASSIGNED, worker_id)


def test_an_offline_worker_is_online_again_when_it_registers(engine: sa.Engine) -> None:
    worker_id, session = register(engine, "w1")
    with db.write(engine) as conn:
        assert workers.set_state(conn, worker_id, session, "offline")
    assert heartbeat(engine, worker_id, session) is None  # offline: must register again
    same_id, session = register(engine, "w1")
    assert same_id == worker_id
    assert heartbeat(engine, worker_id, session) == "online"


# -- check_workers ----------------------------------------------------------------------------


def test_a_silent_worker_goes_offline_and_its_jobs_are_recovered(
    engine: sa.Engine, job_factory: Callable[..., int]
) -> None:
    # Given a worker with one job assigned and two running (one may retry), and a fresh one
    silent, silent_session = register(engine, "silent", max_jobs=3)
    fresh, _ = register(engine, "fresh", max_jobs=3)
    with db.write(engine) as conn:
        settings.save_tunables(conn, {"algorithm": "fill_first"})
    running = job_factory(submit=True)
    retried = job_factory(submit=True, retries=1)
    assigned = job_factory(submit=True)
    fresh_job = job_factory(submit=True)
    claim(engine, running)
    claim(engine, retried)
    claim(engine, fresh_job)
    assert get(engine, fresh_job).worker_id == fresh
    # When the first has been silent for 60 s and the timeout is 15 s
    silence(engine, silent, 60)
    gone = monitor.check_workers(engine)
    # Then it is offline, and only it
    assert gone == [silent]
    assert get_worker(engine, silent).state == "offline"
    assert get_worker(engine, fresh).state == "online"
    assert heartbeat(engine, silent, silent_session) is None
    # And its assigned job waits again, free of it
    job = get(engine, assigned)
    assert (job.state, job.worker_id, job.token) == (State.WAITING, None, None)
    # And its running jobs are lost, the one with retries queued again
    for job_id in (running, retried):
        job = get(engine, job_id)
        assert job.state == State.LOST
        assert job.error == "its worker was silent for more than 15 s"
    (retry,) = jobs_after(engine, fresh_job)
    assert (retry.state, retry.retry_of, retry.attempt) == (State.WAITING, retried, 2)
    # And the fresh worker's job is untouched
    assert get(engine, fresh_job).state == State.RUNNING
    # And a second check finds nothing more to do
    assert monitor.check_workers(engine) == []


def test_check_workers_follows_the_worker_timeout_setting(engine: sa.Engine) -> None:
    worker_id, _ = register(engine, "w1")
    draining, session = register(engine, "w2")
    # Silent for 10 s, within the default 15 s: still online
    silence(engine, worker_id, 10)
    assert monitor.check_workers(engine) == []
    assert get_worker(engine, worker_id).state == "online"
    with db.write(engine) as conn:
        workers.set_state(conn, draining, session, "draining")
        settings.save_tunables(conn, {"worker_timeout": 120})
    silence(engine, worker_id, 60)
    silence(engine, draining, 60)
    # Silent for 60 s with a 120 s timeout: still online
    assert monitor.check_workers(engine) == []
    assert get_worker(engine, worker_id).state == "online"
    # With the timeout lowered to 30 s, both (draining ones too) go offline
    with db.write(engine) as conn:
        settings.save_tunables(conn, {"worker_timeout": 30})
    assert sorted(monitor.check_workers(engine)) == sorted([worker_id, draining])
    assert get_worker(engine, draining).state == "offline"


# -- the supervisor ---------------------------------------------------------------------------


def test_exactly_one_supervisor_leads_and_the_other_takes_over_when_it_stops(
    engine: sa.Engine, supervisor_factory: Callable[[], monitor.Supervisor]
) -> None:
    # Given two servers' supervisors on one database
    first, second = supervisor_factory(), supervisor_factory()
    # When each ticks (twice), then exactly one holds the lease, and keeps it
    for _ in range(2):
        first.tick()
        second.tick()
        assert [first.is_leader, second.is_leader].count(True) == 1
    leader, standby = (first, second) if first.is_leader else (second, first)
    assert lease(engine) == leader.holder
    # When the leader stops, then it releases the lease at once
    leader.stop()
    assert lease(engine) is None
    # And the other takes over on its next tick
    standby.tick()
    assert standby.is_leader
    assert lease(engine) == standby.holder


def test_a_leader_that_stops_renewing_loses_the_lease_once_it_expires(
    engine: sa.Engine, supervisor_factory: Callable[[], monitor.Supervisor]
) -> None:
    # Given a leader and a standby
    leader, standby = supervisor_factory(), supervisor_factory()
    leader.tick()
    standby.tick()
    assert (leader.is_leader, standby.is_leader) == (True, False)
    # When the leader hangs until its lease has expired
    with db.write(engine) as conn:
        expired = db.now(conn) - timedelta(seconds=1)
        conn.execute(sa.update(L).where(L.c.name == "leader").values(expires_at=expired))
    # Then the standby takes over, and the old leader learns it is no longer one
    standby.tick()
    assert standby.is_leader
    leader.tick()
    assert not leader.is_leader
    assert lease(engine) == standby.holder


def test_only_the_leader_monitors_and_balances(
    engine: sa.Engine,
    supervisor_factory: Callable[[], monitor.Supervisor],
    job_factory: Callable[..., int],
) -> None:
    # Given a leading server and a standby
    leader, standby = supervisor_factory(), supervisor_factory()
    leader.tick()
    standby.tick()
    assert (leader.is_leader, standby.is_leader) == (True, False)
    # And a worker gone silent with a job assigned, and a fresh idle worker
    silent, _ = register(engine, "silent", max_jobs=1)
    job_id = job_factory(submit=True)
    fresh, _ = register(engine, "fresh", max_jobs=1)
    silence(engine, silent, 60)
    # When the standby ticks, then it neither marks the worker offline nor moves the job
    standby.tick()
    assert get_worker(engine, silent).state == "online"
    assert get(engine, job_id).worker_id == silent
    # When the leader ticks, then the silent worker is offline and its job is on the fresh one
    leader.tick()
    assert get_worker(engine, silent).state == "offline"
    job = get(engine, job_id)
    assert (job.state, job.worker_id) == (State.ASSIGNED, fresh)


# -- retention ----------------------------------------------------------------------------------


def test_apply_retention_deletes_jobs_finished_before_retention_days(
    engine: sa.Engine, job_factory: Callable[..., int]
) -> None:
    old, recent, waiting = job_factory(), job_factory(), job_factory()
    with db.write(engine) as conn:
        for job_id, days in ((old, 31), (recent, 29)):
            jobs.request_kill(conn, job_id)
            when = db.now(conn) - timedelta(days=days)
            conn.execute(sa.update(J).where(J.c.id == job_id).values(finished_at=when))
    # The default keeps 30 days
    assert monitor.apply_retention(engine) == 1
    with pytest.raises(errors.NotFound):
        get(engine, old)
    assert get(engine, recent).state == State.KILLED
    assert get(engine, waiting).state == State.WAITING
    # 0 keeps everything
    with db.write(engine) as conn:
        settings.save_tunables(conn, {"retention_days": 0})
        long_ago = db.now(conn) - timedelta(days=3650)
        conn.execute(sa.update(J).where(J.c.id == recent).values(finished_at=long_ago))
    assert monitor.apply_retention(engine) == 0
    assert get(engine, recent).state == State.KILLED
