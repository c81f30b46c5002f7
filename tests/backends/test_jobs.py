"""The job manager on every backend: each transition, and each refusal from a wrong state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobbalancer import db, errors, jobs
from jobbalancer.db import schema
from jobbalancer.jobs import State

J, OUT = schema.jobs, schema.job_output
DEFAULT_CLASS = 1

JobFactory = Callable[..., int]


# -- fixtures -----------------------------------------------------------------------------
# job_factory and worker_factory come from conftest.py.


@pytest.fixture
def worker(worker_factory: Callable[[str], int]) -> int:
    """An online worker, w1, of the default class."""
    return worker_factory("w1")


def get(engine: sa.Engine, job_id: int) -> jobs.Job:
    with db.read(engine) as conn:
        return jobs.get(conn, job_id)


def do(engine: sa.Engine, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one job-manager call in its own write transaction, as the server or a worker does."""
    with db.write(engine) as conn:
        return fn(conn, *args, **kwargs)


def assign(engine: sa.Engine, job_id: int, worker_id: int) -> str:
    """waiting → assigned; the fencing token."""
    assert do(engine, jobs.assign, job_id, worker_id)
    token = get(engine, job_id).token
    assert token is not None
    return token


def start(engine: sa.Engine, job_id: int, worker_id: int) -> str:
    """waiting → assigned → running; the fencing token."""
    token = assign(engine, job_id, worker_id)
    assert do(engine, jobs.claim, job_id, worker_id, token)
    return token


def all_jobs(engine: sa.Engine) -> list[jobs.Job]:
    with db.read(engine) as conn:
        return [jobs.Job.from_row(r) for r in conn.execute(jobs.select_jobs().order_by(J.c.id))]


def add_output(engine: sa.Engine, job_id: int, chunks: int = 2) -> None:
    with db.write(engine) as conn:
        for seq in range(chunks):
            conn.execute(
                sa.insert(OUT).values(
                    job_id=job_id, seq=seq, stream="stdout", offset=seq * 6, stream_offset=seq * 6,
                    size=6, data=b"chunk\n", at=db.utcnow(),
                )
            )  # fmt: skip


def output_count(engine: sa.Engine, job_id: int) -> int:
    with db.read(engine) as conn:
        query = sa.select(sa.func.count()).select_from(OUT).where(OUT.c.job_id == job_id)
        return int(conn.execute(query).scalar_one())


def set_finished_at(engine: sa.Engine, job_id: int, days_ago: float) -> None:
    with db.write(engine) as conn:
        when = db.now(conn) - timedelta(days=days_ago)
        conn.execute(sa.update(J).where(J.c.id == job_id).values(finished_at=when))


# -- creating and reading -----------------------------------------------------------------


def test_create_stores_the_spec_as_a_waiting_first_attempt(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    job_id = job_factory(
        command="printf '%s' \"$GREETING\"",
        env={"GREETING": "héllo"},
        labels={"team": "data"},
        watchdog=30.5,
        priority=3,
        retries=2,
        need_realtime=False,
    )
    job = get(engine, job_id)
    assert job.state == State.WAITING
    assert job.command == "printf '%s' \"$GREETING\""
    assert job.env == {"GREETING": "héllo"}
    assert job.labels == {"team": "data"}
    assert job.params == ()
    assert (job.watchdog, job.priority, job.retries) == (30.5, 3, 2)
    assert (job.attempt, job.retry_of, job.restarted_from) == (1, None, None)
    assert (job.user_id, job.user_name) == (7, "alice")
    assert (job.worker_class_id, job.worker_class) == (DEFAULT_CLASS, "default")
    assert job.worker_id is job.worker_name is job.token is None
    assert job.kill_requested is False
    assert job.output_bytes == 0
    assert job.created_at.tzinfo is UTC
    assert job.assigned_at is job.started_at is job.finished_at is None
    assert not job.finished


def test_create_keeps_a_script_and_its_params_as_separate_arguments(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    job_id = job_factory(
        command=None,
        script_id=3,
        script_name="backup",
        interpreter="/bin/bash",
        script_content='echo "$@"\n',
        params=("--dry-run", "a b; rm -rf /"),
    )
    job = get(engine, job_id)
    assert job.command is None
    assert (job.script_id, job.script_name, job.interpreter) == (3, "backup", "/bin/bash")
    assert job.script_content == 'echo "$@"\n'
    assert job.params == ("--dry-run", "a b; rm -rf /")


def test_create_many_returns_ids_in_order_and_get_many_keeps_the_order_asked(
    engine: sa.Engine,
) -> None:
    specs = [jobs.Spec(worker_class_id=DEFAULT_CLASS, command=f"echo {i}") for i in range(3)]
    a, b, c = do(engine, jobs.create, specs, None, None)
    assert [get(engine, i).command for i in (a, b, c)] == ["echo 0", "echo 1", "echo 2"]
    with db.read(engine) as conn:
        assert [j.id for j in jobs.get_many(conn, [c, 9999, a, b])] == [c, a, b]
        assert jobs.get_many(conn, []) == []


def test_an_unknown_job_is_not_found_and_no_transition_happens_to_it(
    engine: sa.Engine, worker: int
) -> None:
    for call in (jobs.get, jobs.request_kill, jobs.delete):
        with pytest.raises(errors.NotFound, match="job 4711 does not exist"):
            do(engine, call, 4711)
    with pytest.raises(errors.NotFound):
        do(engine, jobs.restart, 4711, None, None)
    assert not do(engine, jobs.assign, 4711, worker)
    assert not do(engine, jobs.occupy, 4711)
    assert not do(engine, jobs.claim, 4711, worker, "0" * 16)
    assert not do(engine, jobs.finish, 4711, "0" * 16, State.DONE)
    assert all_jobs(engine) == []


# -- waiting → assigned / occupied ---------------------------------------------------------


def test_assign_gives_a_waiting_job_to_a_worker_and_refuses_any_other(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    assigned, running, killed = job_factory(), job_factory(), job_factory()
    # waiting → assigned, with a fresh token
    assert do(engine, jobs.assign, assigned, w1)
    job = get(engine, assigned)
    assert job.state == State.ASSIGNED
    assert (job.worker_id, job.worker_name) == (w1, "w1")
    assert job.token is not None and len(job.token) == 16
    assert job.assigned_at is not None and job.assigned_at >= job.created_at
    start(engine, running, w1)
    do(engine, jobs.request_kill, killed)

    # An assigned job is not re-assigned elsewhere, and keeps its worker and token.
    assert not do(engine, jobs.assign, assigned, w2)
    assert (get(engine, assigned).worker_id, get(engine, assigned).token) == (w1, job.token)
    assert not do(engine, jobs.assign, running, w2)
    assert get(engine, running).state == State.RUNNING
    assert not do(engine, jobs.assign, killed, w2)
    assert get(engine, killed).state == State.KILLED


def test_occupy_ends_a_waiting_job_for_the_record(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    job_id = job_factory(need_realtime=True)
    assert do(engine, jobs.occupy, job_id)
    job = get(engine, job_id)
    assert job.state == State.OCCUPIED
    assert job.finished
    assert job.error == "no worker had a free slot"
    assert job.finished_at is not None
    assert not do(engine, jobs.occupy, job_id)

    # An assigned job found its slot: it cannot be occupied any more.
    assigned = job_factory(need_realtime=True)
    assign(engine, assigned, worker)
    assert not do(engine, jobs.occupy, assigned)
    assert get(engine, assigned).state == State.ASSIGNED


# -- assigned → running ---------------------------------------------------------------------


def test_claim_starts_the_job_only_for_its_worker_and_token(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    job_id = job_factory()
    waiting = job_factory()
    token = assign(engine, job_id, w1)

    assert not do(engine, jobs.claim, job_id, w1, "0" * 16)  # a stale token
    assert not do(engine, jobs.claim, job_id, w2, token)  # someone else's job
    assert not do(engine, jobs.claim, waiting, w1, token)  # not assigned at all
    assert get(engine, job_id).state == State.ASSIGNED
    assert get(engine, waiting).state == State.WAITING

    assert do(engine, jobs.claim, job_id, w1, token)
    job = get(engine, job_id)
    assert (job.state, job.token, job.worker_id) == (State.RUNNING, token, w1)
    assert job.started_at is not None
    assert not do(engine, jobs.claim, job_id, w1, token)  # already running


def test_a_token_from_an_earlier_assignment_cannot_claim(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given a job assigned, taken back (its worker vanished) and assigned again
    job_id = job_factory()
    old = assign(engine, job_id, worker)
    assert do(engine, jobs.unassign_worker, worker) == 1
    new = assign(engine, job_id, worker)
    # Then each assignment had its own token, and only the current one claims
    assert new != old
    assert not do(engine, jobs.claim, job_id, worker, old)
    assert do(engine, jobs.claim, job_id, worker, new)


def test_set_pid_only_for_the_running_attempt(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    job_id = job_factory()
    token = assign(engine, job_id, worker)
    assert not do(engine, jobs.set_pid, job_id, token, 123)  # not running yet
    do(engine, jobs.claim, job_id, worker, token)
    assert not do(engine, jobs.set_pid, job_id, "f" * 16, 123)
    assert do(engine, jobs.set_pid, job_id, token, 123)
    assert get(engine, job_id).pid == 123
    assert get(engine, job_id).state == State.RUNNING


# -- running → done / failed / timeout / killed ---------------------------------------------


# outcome, exit code, signal, and whether it is retried: only a failure is.
OUTCOME_CASES = [
    (State.DONE, 0, None, False),
    (State.FAILED, 3, None, True),
    (State.TIMEOUT, None, 15, False),
    (State.KILLED, None, 9, False),
]


def test_finish_records_how_the_job_ended(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    for outcome, exit_code, signal, retried in OUTCOME_CASES:
        job_id = job_factory(retries=1)
        token = start(engine, job_id, worker)
        count_before = len(all_jobs(engine))
        assert do(
            engine, jobs.finish, job_id, token, outcome,
            exit_code=exit_code, signal=signal, error="why", output_bytes=1234,
        )  # fmt: skip
        job = get(engine, job_id)
        assert job.state == outcome
        assert job.finished
        assert (job.exit_code, job.signal, job.error, job.output_bytes) == (
            exit_code, signal, "why", 1234,
        )  # fmt: skip
        assert job.finished_at is not None and job.started_at is not None
        assert job.finished_at >= job.started_at
        # Done, timeout and killed are final answers; a failure has a retry left.
        assert len(all_jobs(engine)) == count_before + retried, outcome


def test_finish_refuses_a_wrong_token_a_second_report_and_a_non_outcome(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    job_id = job_factory()
    token = start(engine, job_id, worker)
    # (LOST is an outcome: a worker cut off from the database fences its jobs off itself)
    for state in (State.WAITING, State.RUNNING, State.OCCUPIED):
        with pytest.raises(ValueError, match="not an outcome"):
            do(engine, jobs.finish, job_id, token, state)
    assert not do(engine, jobs.finish, job_id, "0" * 16, State.FAILED, exit_code=1)
    assert get(engine, job_id).state == State.RUNNING

    with db.write(engine) as conn:  # the count the output writer kept so far
        conn.execute(sa.update(J).where(J.c.id == job_id).values(output_bytes=99))
    assert do(engine, jobs.finish, job_id, token, State.DONE, exit_code=0)
    assert not do(engine, jobs.finish, job_id, token, State.FAILED, exit_code=1)
    job = get(engine, job_id)
    assert (job.state, job.exit_code, job.output_bytes) == (State.DONE, 0, 99)


def test_finish_of_a_job_already_lost_is_refused(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given a running job whose worker was declared gone
    job_id = job_factory(retries=1)
    token = start(engine, job_id, worker)
    assert do(engine, jobs.lose_worker_jobs, worker, "silent") == [job_id]
    # When the old worker process reports after all
    assert not do(engine, jobs.finish, job_id, token, State.DONE, exit_code=0)
    # Then the job stays lost, and its one retry is not doubled
    assert get(engine, job_id).state == State.LOST
    assert [j.state for j in all_jobs(engine)] == [State.LOST, State.WAITING]


def test_a_worker_cannot_finish_a_job_killed_before_it_started(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    job_id = job_factory()
    token = assign(engine, job_id, worker)
    do(engine, jobs.request_kill, job_id)
    assert not do(engine, jobs.claim, job_id, worker, token)
    assert not do(engine, jobs.finish, job_id, token, State.DONE, exit_code=0)
    assert get(engine, job_id).state == State.KILLED


# -- kill -----------------------------------------------------------------------------------


def test_kill_of_a_job_that_has_not_started_is_immediate(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    waiting, assigned = job_factory(), job_factory()
    assign(engine, assigned, worker)
    for job_id in (waiting, assigned):
        do(engine, jobs.request_kill, job_id)
        job = get(engine, job_id)
        assert job.state == State.KILLED
        assert job.error == "killed before it started"
        assert job.finished_at is not None
        assert job.kill_requested is False


def test_kill_of_a_running_job_asks_its_worker(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given a running job
    job_id = job_factory(retries=3)
    token = start(engine, job_id, worker)
    # When a user kills it (twice: the second is no conflict while it still runs)
    do(engine, jobs.request_kill, job_id)
    do(engine, jobs.request_kill, job_id)
    # Then it keeps running until its worker acts on the request
    job = get(engine, job_id)
    assert (job.state, job.kill_requested, job.finished_at) == (State.RUNNING, True, None)
    # When the worker reports it killed
    assert do(engine, jobs.finish, job_id, token, State.KILLED, signal=15)
    # Then it is killed, and a kill is never retried
    assert get(engine, job_id).state == State.KILLED
    assert len(all_jobs(engine)) == 1


def test_kill_of_a_finished_job_is_a_conflict(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given one job in each final state
    ended = {}
    for outcome in (State.DONE, State.FAILED, State.TIMEOUT, State.KILLED):
        ended[outcome] = job_factory()
        token = start(engine, ended[outcome], worker)
        do(engine, jobs.finish, ended[outcome], token, outcome, exit_code=0)
    ended[State.LOST] = job_factory()
    start(engine, ended[State.LOST], worker)
    do(engine, jobs.lose_worker_jobs, worker, "gone")
    ended[State.OCCUPIED] = job_factory(need_realtime=True)
    do(engine, jobs.occupy, ended[State.OCCUPIED])
    # When a user kills each, then it is a conflict that says why, and nothing changes
    for end, job_id in ended.items():
        with pytest.raises(errors.Conflict, match=f"already {end}"):
            do(engine, jobs.request_kill, job_id)
        job = get(engine, job_id)
        assert (job.state, job.kill_requested) == (end, False)


# -- a vanished worker ------------------------------------------------------------------------


def test_unassign_worker_puts_its_unstarted_jobs_back(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    a, b, running, elsewhere = job_factory(), job_factory(), job_factory(), job_factory()
    assign(engine, a, w1)
    assign(engine, b, w1)
    start(engine, running, w1)
    assign(engine, elsewhere, w2)

    assert do(engine, jobs.unassign_worker, w1) == 2
    for job_id in (a, b):
        job = get(engine, job_id)
        assert job.state == State.WAITING
        assert job.worker_id is job.token is job.assigned_at is None
    assert get(engine, running).state == State.RUNNING
    assert (get(engine, elsewhere).state, get(engine, elsewhere).worker_id) == (
        State.ASSIGNED, w2,
    )  # fmt: skip


def test_lose_worker_jobs_marks_its_running_jobs_lost(
    engine: sa.Engine, job_factory: JobFactory, worker_factory: Callable[[str], int]
) -> None:
    w1, w2 = worker_factory("w1"), worker_factory("w2")
    r1, r2, pending, elsewhere = job_factory(), job_factory(), job_factory(), job_factory()
    start(engine, r1, w1)
    start(engine, r2, w1)
    assign(engine, pending, w1)
    start(engine, elsewhere, w2)

    lost = do(engine, jobs.lose_worker_jobs, w1, "worker w1 vanished")
    assert sorted(lost) == [r1, r2]
    for job_id in (r1, r2):
        job = get(engine, job_id)
        assert (job.state, job.error) == (State.LOST, "worker w1 vanished")
        assert job.finished_at is not None
    assert get(engine, pending).state == State.ASSIGNED
    assert get(engine, elsewhere).state == State.RUNNING
    assert do(engine, jobs.lose_worker_jobs, w1, "again") == []


# -- retries ----------------------------------------------------------------------------------


def test_a_failed_job_is_retried_until_its_attempts_are_used_up(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given a job allowed two retries: three attempts in all
    first = job_factory(command="exit 1", retries=2, priority=4, labels={"k": "v"})
    attempts = [first]
    # When every attempt fails
    for _ in range(3):
        token = start(engine, attempts[-1], worker)
        assert do(engine, jobs.finish, attempts[-1], token, State.FAILED, exit_code=1)
        newest = all_jobs(engine)[-1]
        if newest.id != attempts[-1]:
            # a retry is a waiting job of its own, not yet anyone's
            assert (newest.state, newest.retry_of) == (State.WAITING, attempts[-1])
            assert newest.worker_id is newest.token is newest.finished_at is None
            assert newest.kill_requested is False
            attempts.append(newest.id)
    # Then each failure but the last queued the next attempt as a new row
    assert len(attempts) == 3
    history = [get(engine, i) for i in attempts]
    assert [j.attempt for j in history] == [1, 2, 3]
    assert [j.retry_of for j in history] == [None, attempts[0], attempts[1]]
    assert [j.state for j in history] == [State.FAILED] * 3
    for job in history[1:]:
        assert (job.command, job.retries, job.priority, job.labels) == ("exit 1", 2, 4, {"k": "v"})
        assert (job.user_id, job.user_name, job.restarted_from) == (7, "alice", None)
    assert len(all_jobs(engine)) == 3


def test_a_lost_job_is_retried_too_and_nothing_without_retries(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    job_id = job_factory(retries=1)
    start(engine, job_id, worker)
    do(engine, jobs.lose_worker_jobs, worker, "gone")
    retry = all_jobs(engine)[-1]
    assert (retry.state, retry.attempt, retry.retry_of) == (State.WAITING, 2, job_id)
    # The second attempt is lost as well: no third one.
    start(engine, retry.id, worker)
    do(engine, jobs.lose_worker_jobs, worker, "gone again")
    assert [j.state for j in all_jobs(engine)] == [State.LOST, State.LOST]
    # Without retries, neither a failed nor a lost job comes back.
    failed, lost = job_factory(), job_factory()
    token = start(engine, failed, worker)
    do(engine, jobs.finish, failed, token, State.FAILED, exit_code=1)
    start(engine, lost, worker)
    do(engine, jobs.lose_worker_jobs, worker, "gone")
    assert [j.id for j in all_jobs(engine)] == [job_id, retry.id, failed, lost]


# -- restart ----------------------------------------------------------------------------------


def test_restart_copies_the_spec_into_a_new_job(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given a finished script job
    old_id = job_factory(
        command=None, script_id=5, script_name="report", interpreter="/usr/bin/python3",
        script_content="print(1)\n", params=("x", "y"), env={"A": "1"}, labels={"l": "m"},
        watchdog=12.0, priority=2, retries=1,
    )  # fmt: skip
    token = start(engine, old_id, worker)
    do(engine, jobs.finish, old_id, token, State.DONE, exit_code=0)
    before = get(engine, old_id)
    # When bob restarts it
    new_id = do(engine, jobs.restart, old_id, 8, "bob")
    # Then a new waiting job runs the very same thing, owned by bob
    new = get(engine, new_id)
    assert new_id != old_id
    assert (new.state, new.attempt, new.restarted_from, new.retry_of) == (
        State.WAITING, 1, old_id, None,
    )  # fmt: skip
    for name in ("script_id", "script_name", "interpreter", "script_content", "params", "env",
                 "labels", "watchdog", "worker_class_id", "need_realtime", "priority", "retries",
                 "command"):  # fmt: skip
        assert getattr(new, name) == getattr(before, name), name
    assert (new.user_id, new.user_name) == (8, "bob")
    assert new.worker_id is new.token is new.exit_code is None
    # And the old job is as it was
    assert get(engine, old_id) == before


def test_restart_of_a_later_attempt_starts_again_at_attempt_one(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    first = job_factory(retries=1)
    token = start(engine, first, worker)
    do(engine, jobs.finish, first, token, State.FAILED, exit_code=1)
    second = all_jobs(engine)[-1].id
    new = get(engine, do(engine, jobs.restart, second, None, None))
    assert (new.attempt, new.restarted_from, new.retry_of) == (1, second, None)
    assert (new.user_id, new.user_name) == (None, None)


# -- delete -----------------------------------------------------------------------------------


def test_delete_removes_a_finished_job_and_only_its_output(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    gone, kept = job_factory(), job_factory()
    token = start(engine, gone, worker)
    add_output(engine, gone, chunks=3)
    add_output(engine, kept, chunks=2)
    do(engine, jobs.finish, gone, token, State.DONE, exit_code=0)

    do(engine, jobs.delete, gone)
    with pytest.raises(errors.NotFound):
        get(engine, gone)
    assert output_count(engine, gone) == 0
    assert output_count(engine, kept) == 2
    # A job that never started can go too.
    do(engine, jobs.delete, kept)
    assert all_jobs(engine) == []
    assert output_count(engine, kept) == 0


def test_delete_of_an_active_job_is_a_conflict(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    assigned, running = job_factory(), job_factory()
    assign(engine, assigned, worker)
    start(engine, running, worker)
    for job_id, state in ((assigned, State.ASSIGNED), (running, State.RUNNING)):
        add_output(engine, job_id)
        with pytest.raises(errors.Conflict, match="kill it first"):
            do(engine, jobs.delete, job_id)
        assert get(engine, job_id).state == state
        assert output_count(engine, job_id) == 2


# -- retention ----------------------------------------------------------------------------------


def test_delete_finished_before_removes_old_finished_jobs_with_output(
    engine: sa.Engine, job_factory: JobFactory, worker: int
) -> None:
    # Given finished jobs from 40 and 10 days ago, an old occupied one, and unfinished ones
    old_done, recent_done, old_occupied = job_factory(), job_factory(), job_factory()
    waiting, running = job_factory(), job_factory()
    for job_id in (old_done, recent_done):
        token = start(engine, job_id, worker)
        do(engine, jobs.finish, job_id, token, State.DONE, exit_code=0)
    do(engine, jobs.occupy, old_occupied)
    start(engine, running, worker)
    add_output(engine, old_done)
    add_output(engine, recent_done)
    add_output(engine, running)
    for job_id in (old_done, old_occupied):
        set_finished_at(engine, job_id, days_ago=40)
    set_finished_at(engine, recent_done, days_ago=10)
    set_finished_at(engine, running, days_ago=400)  # odd, but it is not finished
    # When retention cuts at 30 days
    with db.write(engine) as conn:
        cutoff = db.now(conn) - timedelta(days=30)
        assert jobs.delete_finished_before(conn, cutoff) == 2
    # Then only the old finished jobs and their output are gone
    assert [j.id for j in all_jobs(engine)] == [recent_done, waiting, running]
    assert output_count(engine, old_done) == 0
    assert output_count(engine, recent_done) == 2
    assert output_count(engine, running) == 2


def test_delete_finished_before_respects_its_limit(
    engine: sa.Engine, job_factory: JobFactory
) -> None:
    ids = [job_factory() for _ in range(5)]
    for job_id in ids:
        do(engine, jobs.request_kill, job_id)
        set_finished_at(engine, job_id, days_ago=2)
    with db.write(engine) as conn:
        cutoff = db.now(conn) - timedelta(days=1)
        assert jobs.delete_finished_before(conn, cutoff, limit=3) == 3
    with db.write(engine) as conn:
        assert jobs.delete_finished_before(conn, cutoff, limit=3) == 2
    with db.write(engine) as conn:
        assert jobs.delete_finished_before(conn, cutoff, limit=3) == 0
    assert all_jobs(engine) == []


def test_claim_for_worker_claims_what_is_assigned_and_lists_its_kills_in_one_statement(
    engine: sa.Engine, job_factory: JobFactory, worker: int, worker_factory: Any
) -> None:
    if db.backend(engine) == "sqlite":
        with pytest.raises(ValueError), db.one_statement(engine):
            pass
    if db.backend(engine) != "postgresql":
        return  # UPDATE … RETURNING in a WITH is PostgreSQL's; the others poll, then claim
    # Given two jobs assigned to a worker, one of its jobs running and to be killed, a
    # running job not to be killed, and a job assigned to another worker
    other = worker_factory("other")
    high, low = job_factory(priority=5), job_factory()
    tokens = {high: assign(engine, high, worker), low: assign(engine, low, worker)}
    doomed, calm, elsewhere = job_factory(), job_factory(), job_factory()
    start(engine, doomed, worker)
    start(engine, calm, worker)
    assign(engine, elsewhere, other)
    do(engine, jobs.request_kill, doomed)
    # When the worker polls
    with db.one_statement(engine) as conn:
        claimed, to_kill = jobs.claim_for_worker(conn, worker)
    # Then both assigned jobs are its, running, in queue order, with their tokens
    assert [j.id for j in claimed] == [high, low]
    for job in claimed:
        assert job.state == State.RUNNING and job.started_at is not None
        assert job.token == tokens[job.id] and job.worker_name is not None
        assert get(engine, job.id).state == State.RUNNING
    # And the job to kill is listed, nothing else
    assert [j.id for j in to_kill] == [doomed]
    assert get(engine, elsewhere).state == State.ASSIGNED
    # And a second poll claims nothing again
    with db.one_statement(engine) as conn:
        assert jobs.claim_for_worker(conn, worker) == ([], [to_kill[0]])
