"""Jobs that start later and retries that wait, on every backend: a delayed job is never
assigned or taken before its ``not_before`` (by the database's clock), the leader's tick
releases the due ones, and a retry policy's waits, ends and kills behave."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import balancer, chains, db, errors, jobs, monitor
from jobbalancer.db import schema
from jobbalancer.jobs import RetryPolicy, State

J = schema.jobs
JobFactory = Callable[..., int]


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def do(engine: sa.Engine, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with db.write(engine) as conn:
        return fn(conn, *args, **kwargs)


def db_now(engine: sa.Engine) -> datetime:
    with db.read(engine) as conn:
        return db.now(conn)


def make_due(engine: sa.Engine, *job_ids: int) -> None:
    """Move the jobs' not_before one second into the past, by the database's clock (the
    test's stand-in for time passing)."""
    past = db_now(engine) - timedelta(seconds=1)
    with db.write(engine) as conn:
        conn.execute(sa.update(J).where(J.c.id.in_(job_ids)).values(not_before=past))


def release(engine: sa.Engine) -> int:
    def go(conn: sa.Connection) -> int:
        db.lock_row(conn, "assign")
        released = jobs.release_due(conn)
        balancer.assign_waiting(conn, locked=True)
        return released

    return int(do(engine, go))


def run_to_end(
    engine: sa.Engine, job_id: int, worker_id: int, state: State, exit_code: int | None = 1
) -> None:
    if get(engine, job_id).state == State.WAITING:  # else assigned already (a release)
        assert do(engine, jobs.assign, job_id, worker_id)
    token = get(engine, job_id).token
    assert token is not None and do(engine, jobs.claim, job_id, worker_id, token)
    assert do(engine, jobs.finish, job_id, token, state, exit_code=exit_code)


def retry_of(engine: sa.Engine, job_id: int) -> jobs.Job | None:
    with db.read(engine) as conn:
        new = conn.execute(sa.select(J.c.id).where(J.c.retry_of == job_id)).scalar()
        return None if new is None else jobs.get(conn, int(new))


def test_a_delayed_job_is_never_assigned_nor_taken_before_its_time(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1", max_jobs=4)
    before = db_now(engine)
    later = job_factory(submit=True, delay=3600.0)
    at = job_factory(submit=True, not_before=before + timedelta(hours=2))
    for job_id, hours in ((later, 1), (at, 2)):
        job = get(engine, job_id)
        assert job.state == State.DELAYED and job.worker_id is None
        assert job.not_before is not None
        assert timedelta(hours=hours) <= job.not_before - before < timedelta(hours=hours, minutes=1)
    # Every way a job gets to a worker passes it by.
    assert do(engine, balancer.assign_waiting) == 0
    assert do(engine, jobs.take, worker, 1, 4) == []
    assert do(engine, balancer.take_for_worker, worker) == []
    assert not do(engine, jobs.assign, later, worker)
    assert release(engine) == 0
    assert get(engine, later).state == State.DELAYED
    # Its time comes: released and assigned in the same tick.
    make_due(engine, later)
    assert release(engine) == 1
    assert get(engine, later).state == State.ASSIGNED
    assert get(engine, at).state == State.DELAYED


def test_a_time_already_past_runs_at_once(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker_factory("w1")
    past = db_now(engine) - timedelta(minutes=5)
    job = get(engine, job_factory(submit=True, not_before=past))
    assert job.state == State.ASSIGNED and job.not_before is None
    assert get(engine, job_factory(delay=0.0)).state == State.WAITING


def test_next_due_says_when_the_leader_must_wake(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    assert do(engine, jobs.next_due) is None
    soon = job_factory(delay=30.0)
    job_factory(delay=3600.0)
    due = do(engine, jobs.next_due)
    assert due is not None and 0 < due <= 30
    make_due(engine, soon)
    assert do(engine, jobs.next_due) == 0.0


def test_the_supervisor_sleeps_until_the_earliest_due_job_not_past_its_tick(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    sup = monitor.Supervisor(engine, interval=30.0)
    sup.tick()
    assert sup.is_leader and sup.pause() == 30.0  # nothing delayed: the normal tick
    job_factory(delay=3600.0)
    sup.tick()
    assert sup.pause() == 30.0  # due later than the tick: never sleeps past it
    soon = job_factory(delay=5.0)
    sup.tick()
    assert 0 < sup.pause() <= 5.0
    make_due(engine, soon)
    sup.tick()  # releases it: waiting now (no worker), and the next is an hour away
    assert get(engine, soon).state == State.WAITING
    assert sup.pause() == 30.0
    sup.stop()


def test_release_is_bounded_and_takes_the_earliest_first(
    engine: sa.Engine, job_factory: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "RELEASE_CHUNK", 1000)
    specs = [jobs.Spec(worker_class_id=1, command="true", delay=60.0) for _ in range(25)]
    with db.write(engine) as conn:
        ids = jobs.create(conn, specs, 7, "alice")
    now = db_now(engine)
    with db.write(engine) as conn:  # due, the later ids the earlier
        for k, job_id in enumerate(ids):
            at = now - timedelta(seconds=100 - k)
            conn.execute(sa.update(J).where(J.c.id == job_id).values(not_before=at))
    assert do(engine, jobs.release_due, chunks=1) == 25
    with db.read(engine) as conn:
        states = {j.state for j in jobs.get_many(conn, ids)}
    assert states == {State.WAITING}


def test_release_in_chunks(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # A statement built once holds the chunk as its LIMIT: check the loop's bound.
    specs = [jobs.Spec(worker_class_id=1, command="true", delay=60.0) for _ in range(2500)]
    with db.write(engine) as conn:
        ids = jobs.create(conn, specs, 7, "alice")
    make_due(engine, *ids)
    assert do(engine, jobs.release_due, chunks=2) == 2000
    assert do(engine, jobs.release_due, chunks=2) == 500
    assert do(engine, jobs.release_due) == 0


def test_kill_of_a_delayed_job_is_final_and_decides_its_children(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    parent = job_factory(delay=3600.0)
    child = job_factory(command="echo child", held=True)
    do(engine, jobs.add_parents, child, [chains.After(parent, "any")])
    do(engine, jobs.request_kill, parent)
    killed = get(engine, parent)
    assert killed.state == State.KILLED and killed.finished_at is not None
    assert get(engine, child).state == State.WAITING  # on any: released
    with pytest.raises(errors.Conflict):
        do(engine, jobs.request_kill, parent)
    make_due(engine, parent)
    assert release(engine) == 0  # killed stays killed


def test_delete_and_restart_of_a_delayed_job(engine: sa.Engine, job_factory: JobFactory) -> None:
    policy = RetryPolicy(delay=10.0, backoff=2.0, max_delay=100.0, jitter=0.1, on=("timeout", 75))
    job_id = job_factory(delay=3600.0, retries=3, retry=policy)
    new_id = do(engine, jobs.restart, job_id, 7, "alice")
    new = get(engine, new_id)
    # A restart runs now (the delay is not copied); the retry policy is.
    assert new.state == State.WAITING and new.not_before is None
    assert new.retry_policy == policy and new.retries == 3
    do(engine, jobs.delete, job_id)
    with pytest.raises(errors.NotFound):
        get(engine, job_id)


def test_a_held_job_with_a_delay_is_released_into_its_delay(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1")
    parent = job_factory()
    child = job_factory(command="echo child", held=True, delay=3600.0)
    do(engine, jobs.add_parents, child, [chains.After(parent, "success")])
    assert get(engine, child).state == State.HELD
    run_to_end(engine, parent, worker, State.DONE, 0)
    assert get(engine, child).state == State.DELAYED
    make_due(engine, child)
    assert release(engine) == 1


def test_retries_wait_by_the_policy_from_the_end(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1")
    policy = RetryPolicy(delay=60.0, backoff=2.0, max_delay=100.0)
    first = job_factory(retries=3, retry=policy)
    waits = []
    job_id = first
    for attempt in (1, 2, 3):
        run_to_end(engine, job_id, worker, State.FAILED)
        ended = get(engine, job_id)
        retry = retry_of(engine, job_id)
        assert retry is not None and retry.attempt == attempt + 1
        assert retry.state == State.DELAYED and retry.retry_policy == policy
        assert retry.not_before is not None and ended.finished_at is not None
        waits.append((retry.not_before - ended.finished_at).total_seconds())
        assert not do(engine, jobs.assign, retry.id, worker)  # not before its time
        make_due(engine, retry.id)
        assert release(engine) == 1
        job_id = retry.id
    assert waits == pytest.approx([60.0, 100.0, 100.0], abs=0.01)  # 60, 120 and 240 capped
    run_to_end(engine, job_id, worker, State.FAILED)
    assert retry_of(engine, job_id) is None  # no retries left


def test_without_a_delay_a_retry_waits_as_before(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1", max_jobs=2)
    job_id = job_factory(retries=1)
    run_to_end(engine, job_id, worker, State.FAILED)
    retry = retry_of(engine, job_id)
    assert retry is not None and retry.state == State.WAITING and retry.not_before is None


@pytest.mark.parametrize(
    ("on", "ending", "retried"),
    [
        ((), (State.FAILED, 1), True),
        ((), (State.LOST, None), True),
        ((), (State.TIMEOUT, None), False),
        ((75,), (State.FAILED, 1), False),
        ((75,), (State.FAILED, 75), True),
        ((75,), (State.TIMEOUT, None), False),
        (("timeout", 75), (State.TIMEOUT, None), True),
        (("failed",), (State.LOST, None), False),
        (("lost",), (State.LOST, None), True),
    ],
)
def test_retry_on_picks_the_ends_retried(
    engine: sa.Engine,
    job_factory: JobFactory,
    worker_factory: Callable[..., int],
    on: tuple[str | int, ...],
    ending: tuple[State, int | None],
    retried: bool,
) -> None:
    worker = worker_factory("w1")
    job_id = job_factory(retries=2, retry=RetryPolicy(on=on))
    state, code = ending
    if state == State.LOST:
        assert do(engine, jobs.assign, job_id, worker)
        token = get(engine, job_id).token
        assert token is not None and do(engine, jobs.claim, job_id, worker, token)
        assert do(engine, jobs.lose_worker_jobs, worker, "test") == [job_id]
    else:
        run_to_end(engine, job_id, worker, state, code)
    assert (retry_of(engine, job_id) is not None) == retried


def test_killing_a_retry_that_waits_ends_the_chain(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1")
    job_id = job_factory(retries=3, retry=RetryPolicy(delay=600.0))
    child = job_factory(command="echo child", held=True)
    do(engine, jobs.add_parents, child, [chains.After(job_id, "success")])
    run_to_end(engine, job_id, worker, State.FAILED)
    retry = retry_of(engine, job_id)
    assert retry is not None and retry.state == State.DELAYED
    assert get(engine, child).state == State.HELD  # its parent is the retry now
    do(engine, jobs.request_kill, retry.id)
    assert get(engine, retry.id).state == State.KILLED
    assert retry_of(engine, retry.id) is None  # no further attempt
    child_now = get(engine, child)
    assert child_now.state == State.SKIPPED and str(retry.id) in (child_now.error or "")


def test_a_chain_follows_a_delayed_retry_to_its_success(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1")
    job_id = job_factory(retries=1, retry=RetryPolicy(delay=600.0))
    child = job_factory(command="echo child", held=True)
    do(engine, jobs.add_parents, child, [chains.After(job_id, "success")])
    run_to_end(engine, job_id, worker, State.FAILED)
    retry = retry_of(engine, job_id)
    assert retry is not None
    make_due(engine, retry.id)
    release(engine)
    assert get(engine, retry.id).state == State.ASSIGNED
    token = get(engine, retry.id).token
    assert token is not None and do(engine, jobs.claim, retry.id, worker, token)
    assert do(engine, jobs.finish, retry.id, token, State.DONE, exit_code=0)
    assert get(engine, child).state in (State.WAITING, State.ASSIGNED)


def test_a_lost_job_retries_after_its_wait(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[..., int]
) -> None:
    worker = worker_factory("w1")
    job_id = job_factory(retries=1, retry=RetryPolicy(delay=45.0))
    assert do(engine, jobs.assign, job_id, worker)
    token = get(engine, job_id).token
    assert token is not None and do(engine, jobs.claim, job_id, worker, token)
    do(engine, jobs.lose_worker_jobs, worker, "gone")
    lost, retry = get(engine, job_id), retry_of(engine, job_id)
    assert retry is not None and retry.state == State.DELAYED
    assert retry.not_before is not None and lost.finished_at is not None
    assert (retry.not_before - lost.finished_at).total_seconds() == pytest.approx(45.0, abs=0.01)


def test_the_not_before_column_keeps_utc(engine: sa.Engine, job_factory: JobFactory) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    job = get(engine, job_factory(not_before=at))
    assert job.not_before == at
